// Persistent worker threads for the CPU kernels' parallel loops.
//
// Why not XLA's intra-op pool (ffi::ThreadPool): its threads sleep between calls, and a batch-1
// call is a fraction of a millisecond of work per thread, the same order as the time a sleeping
// thread takes to be woken and scheduled (and Linux may wake it on the caller's own core). Work
// handed to a sleeping pool then often finishes on the caller alone (BENCHMARKS.md, "Worker
// threads", has the measured start latencies).
//
// Workers here spin for a short window after each job they took part in before they sleep, so
// the back-to-back calls of a decode step find them awake and the second core starts within a
// microsecond. The window is LUTGEMM_CPU_SPIN_US microseconds (default kDefaultSpinUs; 0 = sleep
// at once); a spinning thread calls sched_yield every 5 us. Nobody spins when a job asks for
// more threads than the process has CPUs (then spinning would take CPU time from the threads
// doing the work), and workers a job does not ask for stay asleep.
#ifndef LUTGEMM_CPU_WORKER_POOL_H_
#define LUTGEMM_CPU_WORKER_POOL_H_

#include <cstdint>
#include <functional>

namespace lutgemm::cpu {

inline constexpr int64_t kDefaultSpinUs = 300;

// Runs fn(i) for every i in [0, count) on the calling thread and up to `helpers` pool workers
// (at most 255), which claim indices in order from a shared counter; returns once every index has
// run. Only one call uses the workers at a time: a call made while another is running (from a
// second XLA execution, or from inside fn) runs all of its indices on its own thread. Callers must
// therefore not depend on which thread runs an index (the kernels' results do not). If fn throws,
// indices not yet started are skipped and the first exception is rethrown on the calling thread
// once no thread is running fn.
void PoolParallelFor(int64_t helpers, int64_t count, const std::function<void(int64_t)>& fn);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_WORKER_POOL_H_
