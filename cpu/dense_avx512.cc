// The dense path's kernels with AVX-512F (the wide twins of dense_avx2.cc; see dense.h and
// dense.cc): the tile's dequantization 16 columns at a time and the FMA micro-kernel.
//
// DequantTileAvx512: as DequantTileAvx2, per 16 columns and sign word (32 rows of K) the Q words,
// alpha and -alpha stay in registers; each row picks +-alpha per plane with one mask test and one
// masked blend (AVX2 needs a shift and a blendv per 8 columns). The sums run in the same order
// with the same values as DequantTileAvx2 and DequantTile, so all three tiles are bitwise equal.
//
// MicroAvx512: kAvx512Rows = 12 rows of x (two packed 6-row x panels, PanelIndex) against two
// adjacent 16-column micro-panels of the tile (32 columns): 24 zmm accumulators + 2 weight
// vectors of the 32 registers, each broadcast of x feeding two FMAs. Per k that is 2 weight loads
// and 12 broadcasts for 24 FMAs, within the two load ports, so the two FMA ports stay busy.
// Every output's sum runs over k in the same order with the same FMAs as MicroAvx2 (accumulator
// loaded from c, one FMA per k, stored back), so both kernels give bitwise equal results.
//
// The functions carry the AVX2 target too, so that they can inline the AVX2 loads of
// avx2_loads.h (two of them make one 16-column load).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "avx2_loads.h"
#include "dense.h"
#include "lut.h"

#define LUTGEMM_AVX512 __attribute__((target("avx2,fma,f16c,avx512f")))

namespace lutgemm::cpu {
namespace {

LUTGEMM_AVX512 inline __m512 Join(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

template <DType AT>
LUTGEMM_AVX512 inline __m512 LoadAlpha16(const void* base, int64_t i) {
  return Join(LoadAlpha8<AT>(base, i), LoadAlpha8<AT>(base, i + 8));
}

template <DType AT, int Q>
LUTGEMM_AVX512 void DequantTileAvx512(const Prep& p, int64_t k0, int64_t kc, int64_t c0,
                                      int64_t nc, float* wt) {
  if (nc < kNB) return DequantTileGeneric(p, k0, kc, c0, nc, wt);
  const int64_t n = p.shape.n;
  const bool half = p.shape.group_size == kHalfWordGroup;
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  __m512i w[Q];
  __m512 pos[Q], neg[Q];
  for (int c = 0; c < kNB; c += kNR) {
    for (int64_t kk0 = 0; kk0 < kc; kk0 += kWordBits) {
      const int64_t kw = (k0 + kk0) / kWordBits;
      const int rows = static_cast<int>(std::min<int64_t>(kWordBits, kc - kk0));
      #pragma GCC unroll 8
      for (int i = 0; i < Q; ++i) {
        const __m256i lo = LoadWords8(p, kw, i, c0 + c), hi = LoadWords8(p, kw, i, c0 + c + 8);
        w[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
      }
      for (int seg = 0; seg <= (half ? 1 : 0); ++seg) {  // rows [16 * seg, ...) of the word
        const int64_t grp = (k0 + kk0 + kHalfWordGroup * seg) / p.shape.group_size;
        const __m512 a0 = LoadAlpha16<AT>(p.op.alpha, AlphaIndex(p.shape, grp, 0, c0 + c));
        #pragma GCC unroll 8
        for (int i = 0; i < Q; ++i) {
          pos[i] = p.shape.uniform
                       ? _mm512_mul_ps(a0, _mm512_set1_ps(UniformPlaneFactor(p.shape, i)))
                       : LoadAlpha16<AT>(p.op.alpha, AlphaIndex(p.shape, grp, i, c0 + c));
          neg[i] = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(pos[i]), sign));
        }
        const __m512 base =
            p.op.offset ? LoadAlpha16<AT>(p.op.offset, grp * n + c0 + c) : _mm512_setzero_ps();
        const int t_end = half ? std::min(rows, kHalfWordGroup * (seg + 1)) : rows;
        for (int t = kHalfWordGroup * seg; t < t_end; ++t) {
          const __m512i bit = _mm512_set1_epi32(static_cast<int>(1u << t));
          __m512 acc = base;
          #pragma GCC unroll 8
          for (int i = 0; i < Q; ++i)
            acc = _mm512_add_ps(
                acc, _mm512_mask_blend_ps(_mm512_test_epi32_mask(w[i], bit), neg[i], pos[i]));
          _mm512_store_ps(wt + TileIndex(kk0 + t, c), acc);
        }
      }
    }
  }
}

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

bool DenseAvx512Supported() {
#if defined(__x86_64__)
  // CPUID and the OS's saving of the zmm state (libgcc checks XCR0), read once.
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return supported;
#else
  return false;
#endif
}

bool DenseAvx512Usable() { return DenseAvx512Supported() && Avx512Allowed(); }

void SetKernelsAvx512(const Prep& p, DenseKernels& dk) {
  static constexpr TileFn kTiles[3][kMaxBits] = {
      {DequantTileAvx512<DType::kF32, 1>, DequantTileAvx512<DType::kF32, 2>,
       DequantTileAvx512<DType::kF32, 3>, DequantTileAvx512<DType::kF32, 4>,
       DequantTileAvx512<DType::kF32, 5>, DequantTileAvx512<DType::kF32, 6>,
       DequantTileAvx512<DType::kF32, 7>, DequantTileAvx512<DType::kF32, 8>},
      {DequantTileAvx512<DType::kBF16, 1>, DequantTileAvx512<DType::kBF16, 2>,
       DequantTileAvx512<DType::kBF16, 3>, DequantTileAvx512<DType::kBF16, 4>,
       DequantTileAvx512<DType::kBF16, 5>, DequantTileAvx512<DType::kBF16, 6>,
       DequantTileAvx512<DType::kBF16, 7>, DequantTileAvx512<DType::kBF16, 8>},
      {DequantTileAvx512<DType::kF16, 1>, DequantTileAvx512<DType::kF16, 2>,
       DequantTileAvx512<DType::kF16, 3>, DequantTileAvx512<DType::kF16, 4>,
       DequantTileAvx512<DType::kF16, 5>, DequantTileAvx512<DType::kF16, 6>,
       DequantTileAvx512<DType::kF16, 7>, DequantTileAvx512<DType::kF16, 8>}};
  dk.tile = kTiles[p.op.alpha_type][p.shape.q - 1];
  dk.micro_rows = kAvx512Rows;
  dk.micro_cols = 2 * kNR;
  static constexpr MicroFn kMicro[kAvx512Rows] = {
      MicroAvx512<1>, MicroAvx512<2>, MicroAvx512<3>,  MicroAvx512<4>,
      MicroAvx512<5>, MicroAvx512<6>, MicroAvx512<7>,  MicroAvx512<8>,
      MicroAvx512<9>, MicroAvx512<10>, MicroAvx512<11>, MicroAvx512<12>};
  for (int r = 0; r < kAvx512Rows; ++r) dk.micro[r] = kMicro[r];
}

}  // namespace lutgemm::cpu
