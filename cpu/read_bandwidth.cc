// The read-bandwidth measurement of read_bandwidth.h.
#include "read_bandwidth.h"

#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "worker_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LUTGEMM_READ_X86 1
#endif

namespace lutgemm::cpu {
namespace {

// Chunks claimed by the threads: large enough that a claim (one atomic add) costs nothing next to
// streaming it, small enough that a thread woken late still gets an even share of the buffer.
constexpr int64_t kChunkBytes = int64_t{1} << 20;
// Buffer alignment: lets transparent huge pages back it, so a pass is not slowed by TLB misses
// that a kernel reading the same bytes in large arrays would not see either.
constexpr size_t kBufferAlign = size_t{2} << 20;

// Sum of the 64-bit lanes of [p, p + n), n a multiple of kReadStepBytes, p 32-byte aligned.
uint64_t SumPortable(const unsigned char* p, int64_t n) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t i = 0; i < n / 8; i += 4) {
    s0 += w[i];
    s1 += w[i + 1];
    s2 += w[i + 2];
    s3 += w[i + 3];
  }
  return s0 + s1 + s2 + s3;
}

#ifdef LUTGEMM_READ_X86
// A 32-byte load kept as an instruction of its own (vmovdqa). Left alone, the compiler folds each
// load into the add that consumes it (vpaddq ymm, [mem]), and on the Intel parts this project is
// measured on a stream of such micro-fused load + add uops reaches a lower DRAM read rate than
// the same loads issued separately (as membw's indexed loads, which the core unlaminates, and the
// kernel's weight loads are), so the floor would come out low. The empty asm makes the loaded
// value an opaque register operand, which cannot be folded into the add.
__attribute__((target("avx2"))) inline __m256i LoadAvx2(const unsigned char* p) {
  __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  __asm__("" : "+x"(v));
  return v;
}

// Four independent accumulators: one 128-byte step is two cache lines, and the adds of one
// accumulator never wait on another's load.
__attribute__((target("avx2"))) uint64_t SumAvx2(const unsigned char* p, int64_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += kReadStepBytes) {
    a0 = _mm256_add_epi64(a0, LoadAvx2(p + i));
    a1 = _mm256_add_epi64(a1, LoadAvx2(p + i + 32));
    a2 = _mm256_add_epi64(a2, LoadAvx2(p + i + 64));
    a3 = _mm256_add_epi64(a3, LoadAvx2(p + i + 96));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

using SumFn = uint64_t (*)(const unsigned char*, int64_t);

SumFn SelectSum(Isa isa) {
#ifdef LUTGEMM_READ_X86
  if (isa == Isa::kAvx2 && IsaSupported(Isa::kAvx2)) return SumAvx2;
#else
  (void)isa;
#endif
  return SumPortable;
}

struct FreeDeleter {
  void operator()(unsigned char* p) const { std::free(p); }
};

void Check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("read_bandwidth: " + what);
}

}  // namespace

int64_t KernelThreads() {
  int64_t threads = 0;
  if (const char* env = std::getenv("LUTGEMM_CPU_THREADS")) threads = std::atol(env);
  if (threads <= 0) {
    cpu_set_t set;
    threads = sched_getaffinity(0, sizeof(set), &set) == 0
                  ? CPU_COUNT(&set)
                  : static_cast<int64_t>(std::thread::hardware_concurrency());
  }
  return std::clamp<int64_t>(threads, 1, kMaxReadThreads);
}

ReadBandwidth MeasureReadBandwidth(int64_t nbytes, int64_t passes, int64_t threads, Isa isa) {
  Check(nbytes >= kReadStepBytes && nbytes % kReadStepBytes == 0,
        "nbytes must be a positive multiple of " + std::to_string(kReadStepBytes) + ", got " +
            std::to_string(nbytes));
  Check(passes >= 1 && passes <= kMaxReadPasses,
        "passes must be in [1, " + std::to_string(kMaxReadPasses) + "], got " +
            std::to_string(passes));
  Check(threads >= 1 && threads <= kMaxReadThreads,
        "threads must be in [1, " + std::to_string(kMaxReadThreads) + "], got " +
            std::to_string(threads));

  const size_t alloc = (static_cast<size_t>(nbytes) + kBufferAlign - 1) / kBufferAlign *
                       kBufferAlign;
  std::unique_ptr<unsigned char, FreeDeleter> buffer(
      static_cast<unsigned char*>(std::aligned_alloc(kBufferAlign, alloc)));
  if (!buffer) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  madvise(buffer.get(), alloc, MADV_HUGEPAGE);  // advice only: a refusal changes nothing else
#endif

  // Equal chunks, a multiple of the step, at most kChunkBytes; a small buffer gets one per thread.
  const int64_t per_thread = (nbytes + threads - 1) / threads;
  const int64_t chunk = std::min(
      kChunkBytes, (per_thread + kReadStepBytes - 1) / kReadStepBytes * kReadStepBytes);
  const int64_t count = (nbytes + chunk - 1) / chunk;
  const auto bounds = [&](int64_t i) {
    return std::pair<int64_t, int64_t>(i * chunk, std::min(nbytes, (i + 1) * chunk));
  };
  unsigned char* const data = buffer.get();

  // First touch on the reading threads.
  const std::function<void(int64_t)> fill = [&](int64_t i) {
    const auto [lo, hi] = bounds(i);
    auto* w = reinterpret_cast<uint64_t*>(data);
    for (int64_t j = lo / 8; j < hi / 8; ++j) w[j] = static_cast<uint64_t>(j) * kReadFillMultiplier;
  };
  PoolParallelFor(threads - 1, count, fill);

  const SumFn sum = SelectSum(isa);
  std::vector<uint64_t> sums(count);
  const std::function<void(int64_t)> read = [&](int64_t i) {
    const auto [lo, hi] = bounds(i);
    sums[i] = sum(data + lo, hi - lo);
  };

  ReadBandwidth result;
  result.threads = std::min(threads, count);
  result.pass_seconds.reserve(passes);
  for (int64_t pass = 0; pass <= passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    PoolParallelFor(threads - 1, count, read);
    const auto t1 = std::chrono::steady_clock::now();
    for (const uint64_t s : sums) result.checksum += s;
    if (pass > 0) result.pass_seconds.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return result;
}

}  // namespace lutgemm::cpu
