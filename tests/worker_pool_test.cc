// Stress test of cpu/worker_pool.cc, built and run by tests/test_worker_pool.py (plain, with
// ThreadSanitizer, and with AddressSanitizer + UBSan). Prints each failed check and exits
// non-zero if there was one.
//
// Checks: every index runs exactly once and before PoolParallelFor returns, and its plain
// (non-atomic) writes are visible to the caller (many counts and helper counts, workers spinning
// or asleep, a slow last index); no more than helpers + 1 threads take part; a helper really
// runs beside the caller (also on a fresh pool's first call); concurrent callers and calls
// nested in fn (they run alone); an exception thrown by fn on the caller or on a worker reaches
// the caller and leaves the pool usable; a fork()ed child gets a working pool.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "worker_pool.h"

namespace {

using lutgemm::cpu::PoolParallelFor;
using Clock = std::chrono::steady_clock;

int failures = 0;

bool Check(bool ok, const char* what, long a = 0, long b = 0) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s (%ld, %ld)\n", what, a, b);
    ++failures;
  }
  return ok;
}

// Runs count indices on `helpers` workers; each index writes a plain int. Checks that each ran
// exactly once, before the return, on at most helpers + 1 threads.
bool Coverage(int64_t helpers, int64_t count, bool slow) {
  std::vector<int> hits(count, 0);
  std::mutex mu;
  std::set<std::thread::id> threads;
  PoolParallelFor(helpers, count, [&](int64_t i) {
    if (slow && (i % 3 == 0 || i == count - 1))
      std::this_thread::sleep_for(std::chrono::microseconds(i == count - 1 ? 300 : 30));
    hits[i] += 1;
    std::lock_guard<std::mutex> lock(mu);
    threads.insert(std::this_thread::get_id());
  });
  for (int64_t i = 0; i < count; ++i)
    if (!Check(hits[i] == 1, "index ran once before the return", i, count)) return false;
  return Check(static_cast<int64_t>(threads.size()) <= helpers + 1, "at most helpers + 1 threads",
               static_cast<long>(threads.size()), helpers);
}

// Items 0 and 1 each wait for the other to start, so this passes only if a worker runs beside
// the caller (a preemptive scheduler makes that possible even on one CPU). `thrower`: the item
// running on this thread (caller) or on the other one (worker) then throws.
enum class Throw { kNone, kCaller, kWorker };

bool RunsConcurrently(Throw thrower = Throw::kNone) {
  const auto caller = std::this_thread::get_id();
  std::atomic<int> started{0};
  std::atomic<bool> met{true};
  bool caught = false;
  try {
    PoolParallelFor(1, 2, [&](int64_t) {
      started.fetch_add(1);
      const auto deadline = Clock::now() + std::chrono::seconds(2);
      while (started.load() < 2) {
        if (Clock::now() > deadline) {
          met = false;
          return;
        }
        std::this_thread::yield();
      }
      const bool on_caller = std::this_thread::get_id() == caller;
      if ((thrower == Throw::kCaller && on_caller) || (thrower == Throw::kWorker && !on_caller))
        throw std::runtime_error("from fn");
    });
  } catch (const std::runtime_error& e) {
    caught = std::string(e.what()) == "from fn";
  }
  return Check(met.load(), "a helper runs beside the caller") &&
         Check(caught == (thrower != Throw::kNone), "fn's exception reaches the caller",
               static_cast<long>(thrower));
}

// An exception skips the indices not yet started; the others ran once.
void ExceptionSkipsTheRest() {
  std::atomic<int> ran{0};
  bool caught = false;
  try {
    PoolParallelFor(1, 1000, [&](int64_t i) {
      ran.fetch_add(1);
      if (i == 0) throw std::runtime_error("stop");
    });
  } catch (const std::runtime_error&) {
    caught = true;
  }
  Check(caught && ran.load() < 1000, "an exception stops the loop", ran.load());
}

void NestedCalls() {
  std::atomic<int> inner{0};
  PoolParallelFor(1, 4, [&](int64_t) {
    PoolParallelFor(1, 8, [&](int64_t) { inner.fetch_add(1); });
  });
  Check(inner.load() == 32, "calls nested in fn run", inner.load());
}

void ConcurrentCallers() {
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([t] {
      for (int r = 0; r < 200; ++r)
        if (!Coverage(1 + (t + r) % 3, 1 + (t * 7 + r) % 40, false)) return;
    });
  for (auto& c : callers) c.join();
}

void ForkedChild() {
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(60);  // a deadlock kills the child, which the parent reports
    RunsConcurrently();  // the child's fresh pool, first call
    Coverage(1, 100, true);
    _exit(failures == 0 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  Check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pool in a forked child", status);
}

void Run(bool fork_too) {
  if (!RunsConcurrently()) return;  // the first call, on a fresh pool
  for (const char* spin : {"300", "0", "20000"}) {
    setenv("LUTGEMM_CPU_SPIN_US", spin, 1);
    for (int64_t helpers : {0, 1, 2, 3, 7})
      for (int64_t count : {0, 1, 2, 5, 64, 1000})
        if (!Coverage(helpers, count, count < 100)) return;
    for (int r = 0; r < 1000; ++r)  // workers often arrive late
      if (!Coverage(1, 2 + r % 3, r % 10 == 0)) return;
    for (int r = 0; r < 10; ++r) {  // with spin 0 the worker is asleep at each call
      std::this_thread::sleep_for(std::chrono::microseconds(r % 2 ? 500 : 0));
      if (!RunsConcurrently()) return;
    }
    if (!RunsConcurrently(Throw::kCaller) || !RunsConcurrently(Throw::kWorker)) return;
    ExceptionSkipsTheRest();
    if (!RunsConcurrently()) return;  // still usable
    NestedCalls();
    ConcurrentCallers();
    if (failures > 0) return;
  }
  if (fork_too) ForkedChild();
}

}  // namespace

int main(int argc, char** argv) {
  Run(argc > 1 && std::atoi(argv[1]) != 0);
  if (failures == 0) std::printf("worker_pool_test: ok\n");
  return failures == 0 ? 0 : 1;
}
