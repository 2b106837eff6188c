// A minimal fork-join parallel_for over std::thread (no OpenMP).  Python-free.
//
// The process-wide thread count defaults to std::thread::hardware_concurrency()
// and is settable (from Python: lowrank_sparse._core.set_num_threads).  Work is
// split into contiguous chunks [begin, end) -- up to kChunksPerThread per thread --
// that min(chunks, num_threads) threads claim dynamically (an atomic counter); the
// calling thread is one of them.  Dynamic claiming matters on a shared machine: a
// worker descheduled by the OS no longer holds up a fixed half of the work (static
// halves made a top-k pass 2.5x slower on two threads than on one at load 5 on 2
// cores).  Chunk boundaries depend only on n and the chunk count, so per-chunk
// partial results (sums, histograms) combined in chunk order are deterministic.
// Calls made from inside a worker run serially, so nested use never
// oversubscribes.  Exceptions thrown by the body are caught and rethrown on the
// caller after all chunks finish.  The worker threads are persistent (parallel.cpp:
// started once, they spin briefly between jobs and then sleep), so a parallel region
// costs a wake-up rather than a thread start.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "blas.hpp"
#include "common.hpp"

namespace lrs {

namespace detail {
inline std::atomic<int>& thread_count_slot() {
  static std::atomic<int> n{std::max(1, static_cast<int>(std::thread::hardware_concurrency()))};
  return n;
}
inline bool& in_worker() {
  thread_local bool flag = false;
  return flag;
}
// Runs fn(ctx, w) for w in [0, workers): w = 0 on the calling thread, the others on the
// process's persistent worker threads (parallel.cpp), each with in_worker() set; returns
// when all have returned.  Returns false, having run nothing, when another thread is
// using the pool (the caller then starts threads of its own).
bool pool_run(int workers, void (*fn)(void*, int), void* ctx);
}  // namespace detail

// Entries below which elementwise passes stay on one thread (thread start-up
// costs tens of microseconds; a pass over 32k floats costs a few).
constexpr index_t kParallelGrain = index_t{1} << 15;

inline int get_num_threads() { return detail::thread_count_slot().load(std::memory_order_relaxed); }

// n < 1 restores the default (hardware concurrency).
inline void set_num_threads(int n) {
  if (n < 1) n = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  detail::thread_count_slot().store(n, std::memory_order_relaxed);
}

// Chunks per thread for dynamic load balancing.
constexpr int kChunksPerThread = 4;

// Number of chunks parallel_for would use for n items with the given grain.
inline int num_chunks(index_t n, index_t grain = kParallelGrain) {
  if (n <= 0) return 1;
  if (detail::in_worker()) return 1;
  const int threads = get_num_threads();
  if (threads <= 1) return 1;
  grain = std::max<index_t>(grain, 1);
  const index_t by_size = (n + grain - 1) / grain;
  return static_cast<int>(
      std::max<index_t>(1, std::min<index_t>(index_t{threads} * kChunksPerThread, by_size)));
}

// Bounds of chunk c of `chunks` equal parts of [0, n).
inline index_t chunk_begin(index_t n, int chunks, int c) {
  return n / chunks * c + std::min<index_t>(c, n % chunks);
}

// Number of distinct worker ids (0 .. result - 1) parallel_chunks_worker_on passes
// for `chunks` chunks on up to max_workers threads: per-worker scratch needs this many
// slots (instead of one per chunk).
inline int chunk_workers(int max_workers, int chunks) {
  if (chunks <= 1 || max_workers <= 1 || detail::in_worker()) return 1;
  return std::min(chunks, max_workers);
}

// f(worker, chunk, begin, end) for each of `chunks` contiguous chunks of [0, n), in
// parallel on chunk_workers(max_workers, chunks) threads that claim chunks dynamically;
// worker (0 ..) identifies the thread, so no two concurrent calls share a worker id.
template <class F>
void parallel_chunks_worker_on(int max_workers, index_t n, int chunks, F&& f) {
  const int workers = chunk_workers(max_workers, chunks);
  if (workers <= 1) {
    if (chunks <= 1) {
      f(0, 0, index_t{0}, n);
    } else {
      for (int c = 0; c < chunks; ++c)
        f(0, c, chunk_begin(n, chunks, c), chunk_begin(n, chunks, c + 1));
    }
    return;
  }
  std::atomic<int> next{0};
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  auto run = [&](int w) {
    for (;;) {
      const int c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) break;
      try {
        f(w, c, chunk_begin(n, chunks, c), chunk_begin(n, chunks, c + 1));
      } catch (...) {
        errors[static_cast<size_t>(c)] = std::current_exception();
      }
    }
  };
  auto call = [](void* ctx, int w) { (*static_cast<decltype(run)*>(ctx))(w); };
  if (!detail::pool_run(workers, call, &run)) {  // pool busy: threads of our own
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(workers - 1));
    for (int w = 1; w < workers; ++w) {
      threads.emplace_back([&run, w] {
        detail::in_worker() = true;
        run(w);
      });
    }
    detail::in_worker() = true;
    run(0);
    detail::in_worker() = false;
    for (auto& t : threads) t.join();
  }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// f(chunk, begin, end) for each of `chunks` contiguous chunks of [0, n), in parallel
// on min(chunks, max_workers) threads that claim chunks dynamically.
template <class F>
void parallel_chunks_on(int max_workers, index_t n, int chunks, F&& f) {
  parallel_chunks_worker_on(max_workers, n, chunks,
                            [&](int, int c, index_t b, index_t e) { f(c, b, e); });
}

template <class F>
void parallel_chunks(index_t n, int chunks, F&& f) {
  parallel_chunks_on(get_num_threads(), n, chunks, std::forward<F>(f));
}

// f(begin, end) over [0, n), split into chunks of at least `grain` items.
template <class F>
void parallel_for(index_t n, F&& f, index_t grain = kParallelGrain) {
  const int chunks = num_chunks(n, grain);
  parallel_chunks(n, chunks, [&](int, index_t b, index_t e) { f(b, e); });
}

// f(i) for each i in [0, n), in parallel (chunks as parallel_for).
template <class F>
void parallel_each(index_t n, F&& f) {
  parallel_for(n, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i) f(i);
  });
}

// K sums over i in [0, n): f(i, acc) adds item i's terms to acc[0..K), accumulated in
// double per chunk and combined in chunk order (deterministic for a thread count).
template <int K, class F>
std::array<double, K> parallel_sums(index_t n, F&& f) {
  const int chunks = num_chunks(n);
  std::vector<std::array<double, K>> part(static_cast<size_t>(chunks));
  parallel_chunks(n, chunks, [&](int c, index_t b, index_t e) {
    std::array<double, K> acc{};
    for (index_t i = b; i < e; ++i) f(i, acc.data());
    part[static_cast<size_t>(c)] = acc;
  });
  std::array<double, K> total{};
  for (const auto& a : part)
    for (int j = 0; j < K; ++j) total[j] += a[j];
  return total;
}

// sqrt(sum_i f(i)) over i in [0, n), f(i) >= 0, accumulated in double per chunk and
// combined in chunk order.
template <class F>
double parallel_root_sum(index_t n, F&& f) {
  const int chunks = num_chunks(n);
  std::vector<double> part(static_cast<size_t>(chunks), 0.0);
  parallel_chunks(n, chunks, [&](int c, index_t b, index_t e) {
    double acc = 0;
    for (index_t i = b; i < e; ++i) acc += static_cast<double>(f(i));
    part[static_cast<size_t>(c)] = acc;
  });
  double s = 0;
  for (double v : part) s += v;
  return std::sqrt(std::max(s, 0.0));
}

// Row-major GEMM (same arguments as blas::gemm_rm) split into blocks of C, each
// computed by one single BLAS call, spread over `threads` threads (dynamic claiming
// as in parallel_chunks, up to 2 blocks per thread).  Meant for a BLAS limited to
// one thread (lowrank_sparse/solve/native.py sets that around the solve): the core
// then owns every thread, and LAPACK's level-2-heavy small factorisations never pay
// multi-threaded synchronisation.  C is split along its larger dimension in
// multiples of 16 (whole SIMD panels), blocks of at least 64; products below
// ~8 MFLOP, or threads <= 1, are one call.  Shapes as gemm_rm:
//   op(A) (M, K), op(B) (K, N), C (M, N).
template <class T>
void gemm_rm_split(int threads, bool trans_a, bool trans_b, int M, int N, int K, T alpha,
                   const T* A, int lda, const T* B, int ldb, T beta, T* C, int ldc) {
  const double flops = 2.0 * M * N * K;
  const bool split_rows = M >= N;
  const index_t dim = split_rows ? M : N;
  const index_t panels = (dim + 15) / 16;
  index_t chunks = index_t{std::max(1, threads)} * 2;
  chunks = std::min<index_t>(chunks, std::max<index_t>(1, dim / 64));
  if (threads <= 1 || flops < 8e6 || detail::in_worker()) chunks = 1;
  chunks = std::min<index_t>(chunks, panels);
  if (chunks <= 1) {
    blas::gemm_rm<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  auto body = [&](int, index_t pb, index_t pe) {
    const index_t b = pb * 16, e = std::min<index_t>(pe * 16, dim);
    const int len = static_cast<int>(e - b);
    if (len <= 0) return;
    if (split_rows) {  // rows [b, e) of C and of op(A)
      const T* Ab = trans_a ? A + b : A + b * lda;
      blas::gemm_rm<T>(trans_a, trans_b, len, N, K, alpha, Ab, lda, B, ldb, beta, C + b * ldc, ldc);
    } else {  // columns [b, e) of C and of op(B)
      const T* Bb = trans_b ? B + b * ldb : B + b;
      blas::gemm_rm<T>(trans_a, trans_b, M, len, K, alpha, A, lda, Bb, ldb, beta, C + b, ldc);
    }
  };
  parallel_chunks_on(threads, panels, static_cast<int>(chunks), body);
}

}  // namespace lrs
