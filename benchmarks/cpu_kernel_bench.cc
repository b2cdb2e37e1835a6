// The CPU kernel alone, without JAX/XLA: times lutgemm::cpu::LutGemm on random packed weights.
// Used for the compute-ceiling measurements in BENCHMARKS.md (hot vs cold weights, 1 vs 2
// threads) that the JAX-level benchmark (python -m lutgemm_jax.bench) cannot separate.
//
//   g++ -O3 -std=c++17 -Icpu -Iinclude -o /tmp/cpu_kernel_bench
//       benchmarks/cpu_kernel_bench.cc $(ls cpu/*.cc | grep -v ffi_cpu) -lpthread
//   /tmp/cpu_kernel_bench K N q [kernel=1] [M=1] [threads=1] [sets=1] [reps=200] [layout=1]
//                         [alpha=0] [g=128] [uniform=0] [offset=0]
//
// kernel: 0 exact LUT, 1 fast LUT, 2 dense path, 3 read only: every sign word and alpha loaded in
//   the fast kernel's order (scale block, 32-column block, plane, word; the same column chunks
//   over the threads), summed with no table work, i.e. what the kernel's traversal costs in
//   memory (float32 alpha).
// sets: weight copies rotated per call (sets x the packed bytes above the 32 MiB L3 gives cold
//   weights).
// layout: 0 canonical, 1 'cpu' sign words (random bits either way; the layout only changes how
//   the kernel reads them).
// alpha: 0 float32, 1 bfloat16, 2 float16 scales.
// g: group size (16 or a multiple of 32); uniform: 1 for one scale per group (alpha [G, 1, N]).
//   The read-only pass (kernel 3) takes g = 128 with per-plane scales only.
// offset: 1 for an offset term (offset [G, N] in alpha's dtype, as GGUF/GPTQ/AWQ imports have).
// Threads: the caller and the op's worker pool (cpu/worker_pool.h; LUTGEMM_CPU_SPIN_US applies).
// float32 x. Prints the fastest and the median call and the packed weight bytes (bits +
// alpha) over the median.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include <immintrin.h>

#include "lut_gemm_cpu.h"
#include "worker_pool.h"
#include "lutgemm/dtypes.h"

namespace cpu = lutgemm::cpu;

namespace {

int64_t Arg(int argc, char** argv, int i, int64_t fallback) {
  return argc > i ? std::atoll(argv[i]) : fallback;
}

// Runs fn(0 .. count-1) on `threads` threads (the caller included), as the FFI handler does.
cpu::ParallelFor ThreadsFor(int64_t threads) {
  return [threads](int64_t count, const std::function<void(int64_t)>& fn) {
    cpu::PoolParallelFor(std::min(threads, count) - 1, count, fn);
  };
}

// Mode 3: the fast kernel's loads without its arithmetic (g = 128: one alpha row per scale block
// of 4 words). Columns are chunked as LutGemm chunks them.
__attribute__((target("avx2"))) int64_t ReadOnlyChunk(const uint32_t* bits, const float* alpha,
                                                      int64_t kw, int64_t q, int64_t n,
                                                      int64_t c0, int64_t c1) {
  __m256i acc = _mm256_setzero_si256();
  for (int64_t sb = 0; sb < kw / 4; ++sb)
    for (int64_t col = c0; col < c1; col += 32)
      for (int64_t i = 0; i < q; ++i) {
        for (int64_t w = 0; w < 4; ++w) {
          const uint32_t* row = bits + ((sb * 4 + w) * q + i) * n + col;
          for (int j = 0; j < 4; ++j)
            acc = _mm256_add_epi8(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 8 * j)));
        }
        const float* a = alpha + (sb * q + i) * n + col;
        for (int j = 0; j < 4; ++j)
          acc = _mm256_add_epi8(acc, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 8 * j)));
      }
  return _mm256_extract_epi64(acc, 0);
}

void ReadOnly(const uint32_t* bits, const float* alpha, const lutgemm::BcqShape& s,
              int64_t threads, const cpu::ParallelFor& parallel_for) {
  const int64_t n = s.n;
  int64_t chunk = std::max<int64_t>(4096, (n + threads * 2 - 1) / (threads * 2));
  chunk = std::min<int64_t>(chunk, (n + threads - 1) / threads);
  chunk = std::max<int64_t>(32, (chunk + 31) / 32 * 32);
  std::atomic<int64_t> sink{0};
  parallel_for((n + chunk - 1) / chunk, [&](int64_t c) {
    const int64_t c1 = std::min(n, (c + 1) * chunk) / 32 * 32;
    sink += ReadOnlyChunk(bits, alpha, s.num_words(), s.q, n, c * chunk, c1);
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr,
                 "usage: %s K N q [kernel=1] [M=1] [threads=1] [sets=1] [reps=200] [layout=1] "
                 "[alpha=0] [g=128] [uniform=0] [offset=0]\n",
                 argv[0]);
    return 2;
  }
  const int64_t k = Arg(argc, argv, 1, 0), n = Arg(argc, argv, 2, 0), q = Arg(argc, argv, 3, 0);
  const int64_t kernel = Arg(argc, argv, 4, 1), m = Arg(argc, argv, 5, 1);
  const int64_t threads = Arg(argc, argv, 6, 1), sets = Arg(argc, argv, 7, 1);
  const int64_t reps = Arg(argc, argv, 8, 200), layout = Arg(argc, argv, 9, 1);
  const int64_t alpha_kind = Arg(argc, argv, 10, 0);
  const int64_t g = Arg(argc, argv, 11, 128), uniform_scales = Arg(argc, argv, 12, 0);
  const int64_t with_offset = Arg(argc, argv, 13, 0);
  const lutgemm::BcqShape shape{k, n, q, g, false, uniform_scales == 1};
  if (k <= 0 || n <= 0 || m <= 0 || threads <= 0 || sets <= 0 || reps <= 0 || kernel < 0 ||
      kernel > 3 || layout < 0 || layout > 1 || alpha_kind < 0 || alpha_kind > 2 ||
      (kernel == 3 && (alpha_kind != 0 || g != 128 || uniform_scales != 0)) ||
      uniform_scales < 0 || uniform_scales > 1 || with_offset < 0 || with_offset > 1 ||
      (kernel == 3 && with_offset != 0) || lutgemm::CheckShape(shape) != nullptr) {
    std::fprintf(stderr, "bad arguments\n");
    return 2;
  }
  const int64_t words = shape.num_words() * q * n;
  // Scales, and the offset rows [G, N] after them in the same buffer.
  const int64_t scales = shape.num_groups() * shape.alpha_planes() * n;
  const int64_t alphas = scales + with_offset * shape.num_groups() * n;

  std::mt19937 rng(0);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  std::vector<std::vector<uint32_t>> bits(sets, std::vector<uint32_t>(words));
  std::vector<std::vector<float>> alpha(sets, std::vector<float>(alphas));
  for (auto& set : bits) std::generate(set.begin(), set.end(), [&] { return rng(); });
  for (auto& set : alpha) std::generate(set.begin(), set.end(), [&] { return uniform(rng); });
  // bfloat16 / float16 alpha: the same values rounded, stored as 16-bit words.
  std::vector<std::vector<uint16_t>> alpha16(alpha_kind == 0 ? 0 : sets);
  for (int64_t i = 0; i < static_cast<int64_t>(alpha16.size()); ++i)
    for (float a : alpha[i])
      alpha16[i].push_back(alpha_kind == 1 ? lutgemm::FloatToBf16(a) : lutgemm::FloatToF16(a));
  const lutgemm::DType alpha_types[] = {lutgemm::kF32, lutgemm::kBF16, lutgemm::kF16};
  std::vector<float> x(m * k), y(m * n);
  std::generate(x.begin(), x.end(), [&] { return uniform(rng); });

  cpu::Operands op{};
  op.shape = shape;
  op.m = m;
  op.x = x.data();
  op.x_type = lutgemm::kF32;
  op.layout = static_cast<lutgemm::Layout>(layout);
  op.alpha_type = alpha_types[alpha_kind];
  op.y = y.data();
  const cpu::ParallelFor parallel_for = ThreadsFor(threads);
  const cpu::Isa isa = cpu::SelectIsa();

  std::vector<double> ms;
  for (int64_t r = 0; r < reps; ++r) {
    op.bits = bits[r % sets].data();
    op.alpha = alpha_kind == 0 ? static_cast<const void*>(alpha[r % sets].data())
                               : static_cast<const void*>(alpha16[r % sets].data());
    op.offset = with_offset == 0 ? nullptr
                : alpha_kind == 0 ? static_cast<const void*>(alpha[r % sets].data() + scales)
                                  : static_cast<const void*>(alpha16[r % sets].data() + scales);
    const auto t0 = std::chrono::steady_clock::now();
    if (kernel == 3)
      ReadOnly(op.bits, static_cast<const float*>(op.alpha), shape, threads, parallel_for);
    else if (kernel == 2)
      cpu::LutGemm(op, cpu::Mode::kExact, cpu::Path::kDense, isa, threads, parallel_for);
    else
      cpu::LutGemm(op, static_cast<cpu::Mode>(kernel), cpu::Path::kLut, isa, threads,
                   parallel_for);
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double bytes =
      static_cast<double>(words) * 4 + static_cast<double>(alphas) * (alpha_kind == 0 ? 4 : 2);
  std::printf("K=%lld N=%lld q=%lld kernel=%lld M=%lld threads=%lld sets=%lld layout=%lld "
              "alpha=%s g=%lld uniform=%lld offset=%lld isa=%s: "
              "min %.3f ms, median %.3f ms, %.2f GB/s (weight bytes / median)\n",
              static_cast<long long>(k), static_cast<long long>(n), static_cast<long long>(q),
              static_cast<long long>(kernel), static_cast<long long>(m),
              static_cast<long long>(threads), static_cast<long long>(sets),
              static_cast<long long>(layout),
              alpha_kind == 0 ? "f32" : alpha_kind == 1 ? "bf16" : "f16", static_cast<long long>(g),
              static_cast<long long>(uniform_scales), static_cast<long long>(with_offset), isa == cpu::Isa::kAvx2 ? "avx2" : "portable", ms.front(), median,
              bytes / median / 1e6);
  return 0;
}
