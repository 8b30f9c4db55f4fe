#pragma once
// The CPU kernels' worker threads. A training step opens a few hundred short parallel regions with a little
// serial work between them; waking a sleeping thread for each costs tens of microseconds in a VM, and
// OpenMP's alternative (workers spinning without a bound) takes the cores from any other process. The pool
// keeps each worker spinning for a short while after its last task, so that the next region of the same
// step finds it awake, and lets it sleep once the work stops coming.
#include <cstdint>

namespace ellipse::cpu {

// How many threads a parallel region may use: OpenMP's setting (OMP_NUM_THREADS, omp_set_num_threads on the
// calling thread), so that one variable sizes both the pool and OpenBLAS's OpenMP threads.
int max_threads();

// True on a thread that is running a region's task. A region opened from there runs on the calling thread
// alone: the threads are already busy.
bool in_parallel_region();

// Runs task(context, thread, threads) for thread = 0 .. threads-1, thread 0 on the calling thread, and
// returns when all have finished. Runs every part on the calling thread when the pool is busy (a region
// opened from two user threads at once) or when called from inside a region.
using ThreadTask = void (*)(const void* context, int thread, int threads);
void run_on_threads(int threads, ThreadTask task, const void* context);

// The same with any callable f(thread, threads).
template <class F>
void run_on_threads(int threads, const F& f) {
  run_on_threads(
      threads, [](const void* context, int thread, int count) { (*static_cast<const F*>(context))(thread, count); },
      &f);
}

}  // namespace ellipse::cpu
