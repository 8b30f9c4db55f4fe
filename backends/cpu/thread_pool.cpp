// The CPU kernels' worker threads (see thread_pool.hpp for why they exist).
//
// Handshake: the caller publishes a region by storing its task and then a new value of `announcement_`
// (a counter in the high bits, the region's thread count in the low byte); workers spin on that word, then
// sleep on it (a futex through std::atomic::wait). Each participating worker decrements `unfinished_`
// when its part is done; the caller spins on that, then sleeps on it. Both sleeps are announced in a
// counter that the other side reads after its store (sequentially consistent on both sides), so no wake-up
// is lost and no futex call is made while everybody is awake.
#include "backends/cpu/thread_pool.hpp"

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ellipse::cpu {

namespace {

// How long an idle worker (or a caller waiting for its workers) spins before it sleeps, and for how much of
// that it spins without yielding the core. Most gaps between the parallel regions of a training step are
// shorter than the first; waking a sleeping thread costs 50-90 us in a VM. Yielding keeps a process that
// shares the cores from losing them to the spin (measured on 2 cores beside a busy process: a gpt-s step
// 20% slower when spinning without yielding, as fast as with sleeping workers when yielding).
constexpr auto kSpinTime = std::chrono::microseconds(300);
constexpr auto kPauseTime = std::chrono::microseconds(5);
// A region's thread count lives in the announcement's low byte.
constexpr int kMaxThreads = 255;
constexpr std::uint32_t kThreadBits = 8;

thread_local bool tl_in_region = false;

// Marks the current thread as running a region's task for its lifetime.
class RegionScope {
 public:
  RegionScope() : outer_(tl_in_region) { tl_in_region = true; }
  ~RegionScope() { tl_in_region = outer_; }
  RegionScope(const RegionScope&) = delete;
  RegionScope& operator=(const RegionScope&) = delete;

 private:
  bool outer_;
};

void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() holds or kSpinTime has passed; true if done() held. After kPauseTime each turn yields
// the core, so that another process that wants it gets it.
template <class Done>
bool spin_until(const Done& done) {
  const auto start = std::chrono::steady_clock::now();
  bool yielding = false;
  for (int i = 1;; ++i) {
    if (done()) return true;
    if (yielding) {
      std::this_thread::yield();
    } else {
      cpu_relax();
      if (i % 64 != 0) continue;  // the clock is read every 64 pauses (a few microseconds)
    }
    const auto spent = std::chrono::steady_clock::now() - start;
    if (spent > kSpinTime) return false;
    yielding = spent > kPauseTime;
  }
}

class Pool {
 public:
  Pool() {
    // A child of fork() has only the thread that forked: the parent's workers are not there to answer, and
    // their std::thread objects must never be joined or destroyed. The child forgets them and makes its own.
    pthread_atfork(nullptr, nullptr, [] { instance().forget_workers_after_fork(); });
  }

  static Pool& instance() {
    static Pool pool;
    return pool;
  }

  ~Pool() {
    {
      std::lock_guard lock(busy_);
      stopping_.store(true);
      announce(0);
    }
    for (std::thread& worker : workers_) worker.join();
  }

  void run(int threads, ThreadTask task, const void* context) {
    std::unique_lock lock(busy_, std::try_to_lock);
    if (!lock.owns_lock()) {  // another thread's region holds the workers
      run_serially(threads, task, context);
      return;
    }
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int index = static_cast<int>(workers_.size()) + 1;
      const std::uint32_t seen = announcement_.load();  // the new worker waits for the next announcement
      workers_.emplace_back([this, index, seen] { work(index, seen); });
    }
    task_ = task;
    context_ = context;
    failure_ = nullptr;
    unfinished_.store(threads - 1);
    announce(static_cast<std::uint32_t>(threads));

    std::exception_ptr caller_failure;
    try {
      const RegionScope scope;
      task(context, 0, threads);
    } catch (...) {
      caller_failure = std::current_exception();  // the workers still read the caller's context: wait first
    }
    if (!spin_until([this] { return unfinished_.load(std::memory_order_acquire) == 0; })) {
      caller_sleeping_.store(true);
      for (int left = unfinished_.load(); left != 0; left = unfinished_.load()) unfinished_.wait(left);
      caller_sleeping_.store(false);
    }
    if (caller_failure) std::rethrow_exception(caller_failure);
    if (failure_) std::rethrow_exception(failure_);
  }

  static void run_serially(int threads, ThreadTask task, const void* context) {
    const RegionScope scope;
    for (int t = 0; t < threads; ++t) task(context, t, threads);
  }

 private:
  void forget_workers_after_fork() {
    new (&busy_) std::mutex;  // a thread the child does not have may have held it
    new std::vector<std::thread>(std::move(workers_));  // deliberately leaked: see the constructor
    workers_.clear();
    sleepers_.store(0);
    unfinished_.store(0);
    caller_sleeping_.store(false);
    tl_in_region = false;
  }

  void announce(std::uint32_t threads) {
    const std::uint32_t next = ((announcement_.load() >> kThreadBits) + 1) << kThreadBits | threads;
    announcement_.store(next);
    if (sleepers_.load() > 0) announcement_.notify_all();
  }

  void work(int index, std::uint32_t seen) {
    tl_in_region = true;
    for (;;) {
      if (!spin_until([&] { return announcement_.load(std::memory_order_acquire) != seen; })) {
        sleepers_.fetch_add(1);
        while (announcement_.load() == seen) announcement_.wait(seen);
        sleepers_.fetch_sub(1);
      }
      seen = announcement_.load(std::memory_order_acquire);
      if (stopping_.load()) return;
      const int threads = static_cast<int>(seen & ((1u << kThreadBits) - 1));
      if (index >= threads) continue;  // not part of this region: its task may be replaced at any time
      try {
        task_(context_, index, threads);
      } catch (...) {
        const std::lock_guard lock(failure_lock_);
        if (!failure_) failure_ = std::current_exception();
      }
      if (unfinished_.fetch_sub(1) == 1 && caller_sleeping_.load()) unfinished_.notify_one();
    }
  }

  std::mutex busy_;  // held by the thread whose region the workers run
  std::vector<std::thread> workers_;
  ThreadTask task_ = nullptr;
  const void* context_ = nullptr;
  std::mutex failure_lock_;
  std::exception_ptr failure_;  // the first exception a worker's part threw
  std::atomic<std::uint32_t> announcement_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> unfinished_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stopping_{false};
};

}  // namespace

int max_threads() { return std::clamp(omp_get_max_threads(), 1, kMaxThreads); }

bool in_parallel_region() { return tl_in_region; }

void run_on_threads(int threads, ThreadTask task, const void* context) {
  threads = std::clamp(threads, 1, kMaxThreads);
  if (threads == 1 || tl_in_region) {
    Pool::run_serially(threads, task, context);
    return;
  }
  Pool::instance().run(threads, task, context);
}

}  // namespace ellipse::cpu
