// Dense-path kernels with AVX2 + FMA (the twins of dense_generic.cc; see dense.h and dense.cc).
// DequantTileAvx2 fills a 256 x 64 tile 8 columns at a time, one sign word (32 rows) per step
// with the q words and +-alpha kept in registers; MicroAvx2 is the 6 x 16 register-blocked FMA
// kernel (12 accumulators + 2 weight vectors + 1 broadcast = 15 of the 16 ymm registers), the
// panel of 16 columns streaming from L1 and x's packed 6-row panel from L2. Each task (dense.cc)
// runs them on its own column range, dequantized tile and accumulator; x is packed once, shared.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "avx2_loads.h"
#include "dense.h"

namespace lutgemm::cpu {
namespace {

// Per 8 columns and sign word (32 rows of K): the Q words, alpha and -alpha are loaded once into
// registers (Q is a template parameter so that they stay there), then each row picks +-alpha per
// plane with blendv on the word shifted so that the row's bit is the sign bit (rows in descending
// order, one shift per row and plane). A word lies in one group for g >= 32; for g = 16 its rows
// 16-31 and 0-15 are two groups, so the scales are reloaded at row 15. Uniform scales are
// alpha * 2^i (exact). Same summation order as DequantTile, so W_hat is bitwise equal.
template <DType AT, int Q>
LUTGEMM_AVX2 void DequantTileAvx2(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc,
                                  float* wt) {
  if (nc < kNB) return DequantTileGeneric(p, k0, kc, c0, nc, wt);
  const int64_t n = p.shape.n;
  const bool half = p.shape.group_size == kHalfWordGroup;
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  __m256i w[Q];
  __m256 pos[Q], neg[Q];
  for (int c = 0; c < kNB; c += 8) {
    for (int64_t kk0 = 0; kk0 < kc; kk0 += kWordBits) {
      const int64_t kw = (k0 + kk0) / kWordBits;
      const int rows = static_cast<int>(std::min<int64_t>(kWordBits, kc - kk0));
      #pragma GCC unroll 8
      for (int i = 0; i < Q; ++i) {
        const __m256i b = LoadWords8(p, kw, i, c0 + c);
        w[i] = _mm256_sll_epi32(b, _mm_cvtsi32_si128(kWordBits - rows));  // bit rows-1 on top
      }
      int t = rows - 1;
      for (int seg = half ? 1 : 0; seg >= 0; --seg) {  // rows [16 * seg, ...) of the word
        const int64_t grp = (k0 + kk0 + kHalfWordGroup * seg) / p.shape.group_size;
        const __m256 a0 = LoadAlpha8<AT>(p.op.alpha, AlphaIndex(p.shape, grp, 0, c0 + c));
        #pragma GCC unroll 8
        for (int i = 0; i < Q; ++i) {
          pos[i] = p.shape.uniform
                       ? _mm256_mul_ps(a0, _mm256_set1_ps(UniformPlaneFactor(p.shape, i)))
                       : LoadAlpha8<AT>(p.op.alpha, AlphaIndex(p.shape, grp, i, c0 + c));
          neg[i] = _mm256_xor_ps(pos[i], sign);
        }
        const __m256 base =
            p.op.offset ? LoadAlpha8<AT>(p.op.offset, grp * n + c0 + c) : _mm256_setzero_ps();
        for (; t >= kHalfWordGroup * seg; --t) {
          __m256 acc = base;
          #pragma GCC unroll 8
          for (int i = 0; i < Q; ++i) {
            acc = _mm256_add_ps(acc, _mm256_blendv_ps(neg[i], pos[i], _mm256_castsi256_ps(w[i])));
            w[i] = _mm256_slli_epi32(w[i], 1);
          }
          _mm256_storeu_ps(wt + TileIndex(kk0 + t, c), acc);
        }
      }
    }
  }
}

template <int MR>
LUTGEMM_AVX2 void MicroAvx2(const float* xp, const float* wt, int64_t kc, float* c, int64_t ldc) {
  __m256 acc[MR][2];
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = _mm256_loadu_ps(c + r * ldc);
    acc[r][1] = _mm256_loadu_ps(c + r * ldc + 8);
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 w0 = _mm256_loadu_ps(wt + k * kNR), w1 = _mm256_loadu_ps(wt + k * kNR + 8);
    #pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 xv = _mm256_broadcast_ss(xp + k * kMR + r);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm256_storeu_ps(c + r * ldc, acc[r][0]);
    _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
  }
}

}  // namespace

DenseKernels DenseKernelsAvx2(const Prep& p) {
  static constexpr TileFn kTiles[3][kMaxBits] = {
      {DequantTileAvx2<DType::kF32, 1>, DequantTileAvx2<DType::kF32, 2>,
       DequantTileAvx2<DType::kF32, 3>, DequantTileAvx2<DType::kF32, 4>,
       DequantTileAvx2<DType::kF32, 5>, DequantTileAvx2<DType::kF32, 6>,
       DequantTileAvx2<DType::kF32, 7>, DequantTileAvx2<DType::kF32, 8>},
      {DequantTileAvx2<DType::kBF16, 1>, DequantTileAvx2<DType::kBF16, 2>,
       DequantTileAvx2<DType::kBF16, 3>, DequantTileAvx2<DType::kBF16, 4>,
       DequantTileAvx2<DType::kBF16, 5>, DequantTileAvx2<DType::kBF16, 6>,
       DequantTileAvx2<DType::kBF16, 7>, DequantTileAvx2<DType::kBF16, 8>},
      {DequantTileAvx2<DType::kF16, 1>, DequantTileAvx2<DType::kF16, 2>,
       DequantTileAvx2<DType::kF16, 3>, DequantTileAvx2<DType::kF16, 4>,
       DequantTileAvx2<DType::kF16, 5>, DequantTileAvx2<DType::kF16, 6>,
       DequantTileAvx2<DType::kF16, 7>, DequantTileAvx2<DType::kF16, 8>}};
  return {kTiles[p.op.alpha_type][p.shape.q - 1],
          kMR,
          kNR,
          {MicroAvx2<1>, MicroAvx2<2>, MicroAvx2<3>, MicroAvx2<4>, MicroAvx2<5>, MicroAvx2<6>}};
}

}  // namespace lutgemm::cpu
