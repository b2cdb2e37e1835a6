// Sustained memory read bandwidth on the threads the CPU kernel uses: the floor that
// `python -m lutgemm_jax.bench` compares every timing with (bytes an op must read / this rate).
//
// A decode-time GEMV reads each weight byte once and writes almost nothing, so its limit is the
// rate at which the cores can *read* DRAM, not a copy's read + write rate. This measures exactly
// that: one buffer, filled once (first touch spread over the same threads), read whole per pass
// by the calling thread plus the worker pool (worker_pool.h) with the kernel's thread count,
// each thread claiming 1 MiB chunks in order, as the kernel's tasks are claimed. The loads are
// separate 32-byte AVX2 loads (or the compiler's vectorization of 64-bit loads on the portable
// path, chosen at run time like the kernel's ISA) summed into four independent accumulators per
// thread; the sums are returned, so no load can be elided. With a buffer several times the last-level cache (the bench uses
// >= 256 MiB), every pass streams from DRAM.
#ifndef LUTGEMM_CPU_READ_BANDWIDTH_H_
#define LUTGEMM_CPU_READ_BANDWIDTH_H_

#include <cstdint>
#include <vector>

#include "lut_gemm_cpu.h"

namespace lutgemm::cpu {

// Bytes read per loop iteration (four 32-byte loads); the buffer size must be a multiple.
inline constexpr int64_t kReadStepBytes = 128;
// Largest thread count, as for the kernel (worker_pool.h: the caller plus 255 workers).
inline constexpr int64_t kMaxReadThreads = 256;
inline constexpr int64_t kMaxReadPasses = 1000;
// Fill pattern: distinct words (a zero page could be shared, a constant compressed by a
// hypervisor).
inline constexpr uint64_t kReadFillMultiplier = 0x9E3779B97F4A7C15u;

struct ReadBandwidth {
  std::vector<double> pass_seconds;  // wall time of each timed pass (one warm-up pass excluded)
  int64_t threads = 0;               // threads that read (the caller + pool workers)
  // Sum (mod 2^64) of every 64-bit word read, over the warm-up and the timed passes. Word j of
  // the buffer holds j * kReadFillMultiplier (mod 2^64), so callers can check that each pass read
  // every word exactly once.
  uint64_t checksum = 0;
};

// The number of threads lut_gemm's handler uses when XLA's intra-op pool has one thread per CPU
// this process may run on (its affinity mask), which is how XLA sizes that pool:
// LUTGEMM_CPU_THREADS=<n> if set and positive, else that CPU count; at most kMaxReadThreads.
int64_t KernelThreads();

// Allocates a buffer of `nbytes` (a positive multiple of kReadStepBytes), fills it, and times
// `passes` (1..kMaxReadPasses) full read passes over it with `threads` (1..kMaxReadThreads)
// threads after one untimed warm-up pass, using `isa` (the portable path if the CPU lacks AVX2).
// Throws std::invalid_argument for arguments out of range, std::bad_alloc if the buffer cannot
// be allocated.
ReadBandwidth MeasureReadBandwidth(int64_t nbytes, int64_t passes, int64_t threads, Isa isa);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_READ_BANDWIDTH_H_
