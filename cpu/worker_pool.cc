// The worker pool of worker_pool.h.
//
// A job is published as a shared_ptr<Job> plus an epoch counter and the number of workers it
// wants (all three under mu_). Worker w waits (spinning, then on cv_) until the epoch moves and
// w < wanted, takes its own reference to the job, and claims indices until they run out. The
// caller claims indices too and returns when `done` reaches `count`. A worker that arrives late
// finds every index claimed (a claim past `count` runs nothing), and its reference keeps the Job
// alive until it lets go, so it never touches freed memory or calls the caller's fn.
//
// If fn throws, the first exception is kept in the Job, indices claimed after it are counted as
// done without running fn, and the caller takes it out of the Job and rethrows it once every
// claimed index has finished.
#include "worker_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

namespace lutgemm::cpu {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

using Clock = std::chrono::steady_clock;
constexpr auto kYieldEvery = std::chrono::microseconds(5);
constexpr int64_t kMaxWorkers = 255;

// Spins on `ready` with CpuRelax, calling sched_yield every kYieldEvery, until it holds (true) or
// `deadline` passes (false).
template <typename Ready>
bool SpinUntil(Ready ready, Clock::time_point deadline) {
  auto next_yield = Clock::now() + kYieldEvery;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      CpuRelax();
    }
    const auto now = Clock::now();
    if (now >= deadline) return ready();
    if (now >= next_yield) {
      std::this_thread::yield();
      next_yield = now + kYieldEvery;
    }
  }
}

std::chrono::microseconds SpinWindow() {
  const char* env = std::getenv("LUTGEMM_CPU_SPIN_US");
  const long us = env != nullptr ? std::atol(env) : kDefaultSpinUs;
  return std::chrono::microseconds(std::max(0L, us));
}

// CPUs this process may run on (its affinity mask), at least 1.
int64_t AvailableCpus() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

struct Job {
  const std::function<void(int64_t)>* fn;
  int64_t count;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // the first exception fn threw; written once, before `failed`
  std::mutex error_mu;
  std::mutex done_mu;  // the caller sleeps on done_cv if the last indices take long
  std::condition_variable done_cv;

  void Claim() {
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < count;) {
      if (!failed.load(std::memory_order_relaxed)) Run(i);
      if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == count) {
        std::lock_guard<std::mutex> lock(done_mu);
        done_cv.notify_all();
      }
    }
  }

  void Run(int64_t i) {
    try {
      (*fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      failed.store(true, std::memory_order_relaxed);
    }
  }

  bool Finished() const { return done.load(std::memory_order_acquire) == count; }
};

class Pool {
 public:
  Pool() : cpus_(AvailableCpus()) {}

  void ParallelFor(int64_t helpers, int64_t count, const std::function<void(int64_t)>& fn) {
    if (helpers <= 0 || count <= 1 || busy_.exchange(true, std::memory_order_acquire)) {
      for (int64_t i = 0; i < count; ++i) fn(i);
      return;
    }
    struct Release {
      std::atomic<bool>& busy;
      ~Release() { busy.store(false, std::memory_order_release); }
    } release{busy_};

    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->count = count;
    // Spinning pays only if every thread has a CPU of its own; oversubscribed, workers sleep.
    const auto spin = helpers + 1 <= cpus_ ? SpinWindow() : std::chrono::microseconds(0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      StartWorkers(std::min(helpers, kMaxWorkers));
      spin_ = spin;
      wanted_ = std::min(helpers, workers_);
      job_ = job;
      epoch_.fetch_add(1, std::memory_order_release);
      if (sleepers_ > 0) cv_.notify_all();
    }
    job->Claim();
    if (!SpinUntil([&] { return job->Finished(); }, Clock::now() + spin)) {
      std::unique_lock<std::mutex> lock(job->done_mu);
      job->done_cv.wait(lock, [&] { return job->Finished(); });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_.reset();
    }
    if (job->failed.load(std::memory_order_acquire)) {
      // Moved out, so that the caller alone owns the exception: a late worker may hold the last
      // reference to the Job, and destroying a Job that still shared the exception object would
      // release it on that worker while the caller's handler reads it (safe through libsupc++'s
      // atomic reference count, but invisible to ThreadSanitizer, which reports it as a race).
      std::exception_ptr error;
      {
        std::lock_guard<std::mutex> lock(job->error_mu);
        error = std::move(job->error);
      }
      std::rethrow_exception(error);
    }
  }

 private:
  // Starts workers until there are `n` (fewer if the system refuses threads). Under mu_.
  void StartWorkers(int64_t n) {
    while (workers_ < n) {
      const uint64_t seen = epoch_.load(std::memory_order_relaxed);
      try {
        std::thread([this, index = workers_, seen] { WorkerLoop(index, seen); }).detach();
      } catch (const std::system_error&) {
        return;
      }
      ++workers_;
    }
  }

  void WorkerLoop(int64_t index, uint64_t seen) {
    bool took_part = false;  // in the last job it saw: only then is another one likely soon
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        const auto wanted = [&] {
          return epoch_.load(std::memory_order_acquire) != seen && index < wanted_;
        };
        if (!wanted()) {
          const auto deadline = Clock::now() + (took_part ? spin_ : std::chrono::microseconds(0));
          lock.unlock();
          SpinUntil([&] { return epoch_.load(std::memory_order_relaxed) != seen; }, deadline);
          lock.lock();
          if (!wanted()) {
            ++sleepers_;
            cv_.wait(lock, wanted);
            --sleepers_;
          }
        }
        seen = epoch_.load(std::memory_order_relaxed);
        job = job_;
      }
      took_part = job != nullptr;
      if (took_part) job->Claim();
    }
  }

  const int64_t cpus_;
  std::atomic<bool> busy_{false};  // held by the one call using the workers
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Job> job_;          // guarded by mu_; null between calls
  std::atomic<uint64_t> epoch_{0};    // bumped under mu_ per published job; spun on without it
  int64_t wanted_ = 0;                // guarded by mu_: workers [0, wanted_) serve the job
  int64_t sleepers_ = 0;              // guarded by mu_
  int64_t workers_ = 0;               // guarded by mu_
  std::chrono::microseconds spin_{0};  // guarded by mu_: the current job's spin window
};

Pool* g_pool = nullptr;

// The process's pool, created on first use and never destroyed (workers are detached). A child
// made by fork() has none of the parent's threads, so it starts a fresh pool.
Pool& GetPool() {
  static const bool init = [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool(); });
    return true;
  }();
  (void)init;
  return *g_pool;
}

}  // namespace

void PoolParallelFor(int64_t helpers, int64_t count, const std::function<void(int64_t)>& fn) {
  GetPool().ParallelFor(helpers, count, fn);
}

}  // namespace lutgemm::cpu
