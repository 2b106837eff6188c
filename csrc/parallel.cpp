// The persistent worker pool behind parallel.hpp's fork-join calls (see pool_run).
//
// Starting a std::thread and joining it costs ~20 us here; a fused ADMM iteration has
// about ten parallel regions, and on a small layer one iteration takes well under a
// millisecond.  So the workers are started once and kept: after a job they spin for a
// short while (the next region usually follows within microseconds), then sleep on a
// condition variable.  One caller at a time owns the pool; a second concurrent caller
// (another Python thread with the GIL released) gets false and starts threads of its
// own, as before.  The pool object is never destroyed (its threads end with the
// process), and a forked child, which inherits none of the threads, builds a new one.
#include "parallel.hpp"

#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LRS_PAUSE() _mm_pause()
#else
#define LRS_PAUSE() std::this_thread::yield()
#endif

namespace lrs::detail {

namespace {

// How long an idle worker, and the caller waiting for the workers, spin before sleeping.
constexpr auto kSpin = std::chrono::microseconds(50);

// Spins until pred() or kSpin has passed; returns pred().
template <class P>
bool spin_until(P&& pred) {
  if (pred()) return true;
  const auto end = std::chrono::steady_clock::now() + kSpin;
  for (int k = 1;; ++k) {
    LRS_PAUSE();
    if (pred()) return true;
    if ((k & 63) == 0 && std::chrono::steady_clock::now() >= end) return false;
  }
}

class Pool {
 public:
  explicit Pool(pid_t pid) : pid_(pid) {}
  pid_t pid() const { return pid_; }

  bool run(int workers, void (*fn)(void*, int), void* ctx) {
    if (busy_.test_and_set(std::memory_order_acquire)) return false;
    try {
      grow(workers - 1);
    } catch (...) {  // no more threads to be had: let the caller start its own (or fail)
      busy_.clear(std::memory_order_release);
      return false;
    }
    {  // the job and its generation change together (workers read them under m_)
      std::lock_guard<std::mutex> lk(m_);
      fn_ = fn;
      ctx_ = ctx;
      job_workers_ = workers;
      pending_.store(workers - 1, std::memory_order_relaxed);
      gen_.store(gen_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    cv_work_.notify_all();
    in_worker() = true;
    fn(ctx, 0);
    in_worker() = false;
    if (!spin_until([&] { return pending_.load(std::memory_order_acquire) == 0; })) {
      std::unique_lock<std::mutex> lk(m_);
      cv_done_.wait(lk, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    busy_.clear(std::memory_order_release);
    return true;
  }

 private:
  // Start workers until there are `count` (under busy_: one caller at a time).
  void grow(int count) {
    while (static_cast<int>(threads_.size()) < count) {
      const int id = static_cast<int>(threads_.size()) + 1;
      const std::uint64_t seen = gen_.load(std::memory_order_relaxed);
      threads_.emplace_back([this, id, seen] { loop(id, seen); });
      threads_.back().detach();
    }
  }

  void loop(int id, std::uint64_t seen) {
    in_worker() = true;
    for (;;) {
      if (!spin_until([&] { return gen_.load(std::memory_order_acquire) != seen; })) {
        std::unique_lock<std::mutex> lk(m_);
        cv_work_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
      }
      // The latest job: a worker not needed for a job may wake after the next one was
      // posted, and must then see that one whole (not the old generation with new fields).
      void (*fn)(void*, int) = nullptr;
      void* ctx = nullptr;
      int jw = 0;
      {
        std::lock_guard<std::mutex> lk(m_);
        seen = gen_.load(std::memory_order_relaxed);
        fn = fn_;
        ctx = ctx_;
        jw = job_workers_;
      }
      if (id >= jw) continue;  // not needed for this job
      fn(ctx, id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> lk(m_);
        cv_done_.notify_one();
      }
    }
  }

  const pid_t pid_;
  std::atomic_flag busy_ = ATOMIC_FLAG_INIT;
  std::vector<std::thread> threads_;  // detached; kept for their count
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::atomic<std::uint64_t> gen_{0};  // bumped once per job, under m_
  std::atomic<int> pending_{0};        // pool workers of the current job still running
  void (*fn_)(void*, int) = nullptr;   // the job (under m_)
  void* ctx_ = nullptr;
  int job_workers_ = 0;
};

// The process's pool; a new one after a fork (the old object, whose threads and locks
// belong to the parent, is left alone).
Pool& pool() {
  static std::atomic<Pool*> slot{nullptr};
  const pid_t pid = getpid();
  Pool* p = slot.load(std::memory_order_acquire);
  while (p == nullptr || p->pid() != pid) {
    Pool* fresh = new Pool(pid);  // never deleted: its detached threads use it
    if (slot.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) return *fresh;
    delete fresh;  // another thread installed one first: p holds it now
  }
  return *p;
}

}  // namespace

bool pool_run(int workers, void (*fn)(void*, int), void* ctx) {
  if (workers <= 1) {
    fn(ctx, 0);
    return true;
  }
  return pool().run(workers, fn, ctx);
}

}  // namespace lrs::detail
