// A minimal fork-join parallel_for over std::thread (no OpenMP).  Python-free.
//
// The process-wide thread count defaults to std::thread::hardware_concurrency()
// and is settable (from Python: lowrank_sparse._core.set_num_threads).  Work is
// split into at most num_threads contiguous chunks [begin, end); chunk 0 runs on
// the calling thread.  Calls made from inside a worker run serially, so nested
// use never oversubscribes.  The body must not throw (exceptions are caught and
// rethrown on the caller after all chunks finish).
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

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

// Number of chunks parallel_for would use for n items with the given grain.
inline int num_chunks(index_t n, index_t grain = kParallelGrain) {
  if (n <= 0) return 1;
  if (detail::in_worker()) return 1;
  grain = std::max<index_t>(grain, 1);
  const index_t by_size = (n + grain - 1) / grain;
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>(get_num_threads(), by_size)));
}

// Bounds of chunk c of `chunks` equal parts of [0, n).
inline index_t chunk_begin(index_t n, int chunks, int c) {
  return n / chunks * c + std::min<index_t>(c, n % chunks);
}

// f(chunk, begin, end) for each of `chunks` contiguous chunks of [0, n), in parallel.
template <class F>
void parallel_chunks(index_t n, int chunks, F&& f) {
  if (chunks <= 1 || detail::in_worker()) {
    if (chunks <= 1) {
      f(0, index_t{0}, n);
    } else {
      for (int c = 0; c < chunks; ++c) f(c, chunk_begin(n, chunks, c), chunk_begin(n, chunks, c + 1));
    }
    return;
  }
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(chunks - 1));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(chunks));
  for (int c = 1; c < chunks; ++c) {
    threads.emplace_back([&, c] {
      detail::in_worker() = true;
      try {
        f(c, chunk_begin(n, chunks, c), chunk_begin(n, chunks, c + 1));
      } catch (...) {
        errors[static_cast<size_t>(c)] = std::current_exception();
      }
    });
  }
  detail::in_worker() = true;
  try {
    f(0, chunk_begin(n, chunks, 0), chunk_begin(n, chunks, 1));
  } catch (...) {
    errors[0] = std::current_exception();
  }
  detail::in_worker() = false;
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// f(begin, end) over [0, n), split into chunks of at least `grain` items.
template <class F>
void parallel_for(index_t n, F&& f, index_t grain = kParallelGrain) {
  const int chunks = num_chunks(n, grain);
  parallel_chunks(n, chunks, [&](int, index_t b, index_t e) { f(b, e); });
}

}  // namespace lrs
