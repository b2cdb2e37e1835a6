// Persistent worker threads for the CPU kernels' parallel loops.
//
// Why not XLA's intra-op pool (ffi::ThreadPool), which the handler used before: its threads
// sleep between calls. On a 2-vCPU KVM guest, handing a batch-1 call's second half to it
// (4096 x 1024, ~0.1 ms of work per thread) found the helper running after ~1 us in a few calls,
// after 40-80 us in most, and only after the call had finished (~300 us) in some; and Linux
// often woke it on the caller's own CPU, where the two threads time-shared one core while the
// other idled. Through the op, 4096 x 1024 took as long on two threads as on one (BENCHMARKS.md,
// "Worker threads").
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
