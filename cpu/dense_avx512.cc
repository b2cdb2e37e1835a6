// The dense path's FMA micro-kernel with AVX-512F (the wide twin of MicroAvx2 in dense_avx2.cc;
// see dense.h and dense.cc). The tile's dequantization stays the AVX2 one: it is a few percent of
// the FMAs from M = 64 on, while the FMAs themselves run twice as wide here.
//
// One call: kAvx512Rows = 12 rows of x (two packed 6-row x panels, PanelIndex) against two
// adjacent 16-column micro-panels of the tile (32 columns): 24 zmm accumulators + 2 weight
// vectors of the 32 registers, each broadcast of x feeding two FMAs. Per k that is 2 weight loads
// and 12 broadcasts for 24 FMAs, within the two load ports, so the two FMA ports stay busy.
// Every output's sum runs over k in the same order with the same FMAs as MicroAvx2 (accumulator
// loaded from c, one FMA per k, stored back), so both kernels give bitwise equal results.
#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "dense.h"

#define LUTGEMM_AVX512 __attribute__((target("avx512f")))

namespace lutgemm::cpu {
namespace {

template <int MR>
LUTGEMM_AVX512 void MicroAvx512(const float* xp, const float* wt, int64_t kc, float* c,
                                int64_t ldc) {
  const float* xp1 = xp + kKB * kMR;  // the next 6-row x panel of this K tile (PanelIndex)
  const float* wt1 = wt + kKB * kNR;  // the next micro-panel (TileIndex)
  __m512 acc[MR][2];
  #pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm512_loadu_ps(c + r * ldc);
    acc[r][1] = _mm512_loadu_ps(c + r * ldc + kNR);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 w0 = _mm512_loadu_ps(wt + k * kNR), w1 = _mm512_loadu_ps(wt1 + k * kNR);
    #pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const __m512 xv =
          _mm512_set1_ps(r < kMR ? xp[k * kMR + r] : xp1[k * kMR + r - kMR]);
      acc[r][0] = _mm512_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  #pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc[r][0]);
    _mm512_storeu_ps(c + r * ldc + kNR, acc[r][1]);
  }
}

}  // namespace

bool DenseAvx512Usable() {
#if defined(__x86_64__)
  // CPUID and the OS's saving of the zmm state (libgcc checks XCR0), read once.
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  const char* env = std::getenv("LUTGEMM_CPU_ISA");
  return supported && (env == nullptr || std::string(env) != "avx2");
#else
  return false;
#endif
}

void SetMicroAvx512(DenseKernels& dk) {
  dk.micro_rows = kAvx512Rows;
  dk.micro_cols = 2 * kNR;
  static constexpr MicroFn kMicro[kAvx512Rows] = {
      MicroAvx512<1>, MicroAvx512<2>, MicroAvx512<3>,  MicroAvx512<4>,
      MicroAvx512<5>, MicroAvx512<6>, MicroAvx512<7>,  MicroAvx512<8>,
      MicroAvx512<9>, MicroAvx512<10>, MicroAvx512<11>, MicroAvx512<12>};
  for (int r = 0; r < kAvx512Rows; ++r) dk.micro[r] = kMicro[r];
}

}  // namespace lutgemm::cpu
