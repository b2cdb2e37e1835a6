// Lookup kernels, portable C++ (the twin of lut_avx2.cc; see lut.h for what a call computes).
// One column per call: per alpha segment and plane, the sign word of each of the block's words is
// read once and its nibbles index the tables of up to 4 rows of x, whose lookups are summed
// (exact: float32; fast: int8 entries in int32, exactly). The driver hands each thread whole
// column ranges, so a thread owns its columns' accumulators.
#include <cstdint>
#include <type_traits>

#include "lut.h"

namespace lutgemm::cpu {
namespace {

// Exact mode (kFast = false): float32 tables and sums. Fast mode: int8 tables summed exactly in
// int32, then scaled by the block's table scale.
template <bool kFast>
struct GenericTables {
  using Entry = std::conditional_t<kFast, int8_t, float>;
  using Sum = std::conditional_t<kFast, int32_t, float>;
  static const Entry* Of(const Prep& p) {
    if constexpr (kFast) return p.int8_tables.data();
    else return p.float_tables.data();
  }
  static float Scale(const Prep& p, int64_t row, int64_t sb) {
    if constexpr (kFast) return p.table_scales[row * p.num_blocks + sb];
    else return 1.f;
  }
};

// One column. Per segment and plane the lookups are summed (exact: float32; fast: int8 entries in
// int32, exactly) and scaled by the plane's alpha. Uniform weights: exact mode scales plane i by
// alpha * 2^i (a float32 multiplication by a power of two, exact: the same values as the weight
// with those scales stored); fast mode first combines the integer plane sums exactly,
// sum_i 2^i * acc_i (|.| <= 255 * 127 * S/4 < 2^21), then scales once by alpha.
template <bool kFast, int R>
void LutGeneric(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  using T = GenericTables<kFast>;
  const typename T::Entry* tables = T::Of(p);
  const int64_t q = p.shape.q, kw0 = sb * p.words_per_block;
  const bool uniform = p.shape.uniform;
  if (p.op.offset != nullptr) {
    int64_t g0, g1;
    OffsetGroups(p, sb, &g0, &g1);
    for (int64_t grp = g0; grp < g1; ++grp) {
      const float off = ToF32(p.op.offset, p.op.alpha_type, OffsetIndex(p.shape, grp, col));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) facc[r * ld] += off * p.group_sums[(r0 + r) * p.num_groups + grp];
    }
  }
  const int segments = Segments(p), seg_nibbles = kChunksPerWord / segments;
  for (int seg = 0; seg < segments; ++seg) {
    const int nib0 = seg * seg_nibbles, nib1 = nib0 + seg_nibbles;
    const int64_t grp = SegmentGroup(p, sb, seg);
    if (!GroupHasRows(p, grp)) continue;
    const float a0 = ToF32(p.op.alpha, p.op.alpha_type, AlphaIndex(p.shape, grp, 0, col));
    float tot[R] = {};
    int32_t itot[R] = {};  // fast, uniform: sum_i 2^i * plane sum
    for (int64_t i = 0; i < q; ++i) {
      typename T::Sum acc[R] = {};
      for (int64_t w = 0; w < p.words_per_block; ++w) {
        const uint32_t word = LoadWord(p, kw0 + w, i, col);
        const int64_t c0 = (kw0 + w) * kChunksPerWord;
        for (int nib = nib0; nib < nib1; ++nib) {
          const uint32_t idx = (word >> (kMu * nib)) & (kEntries - 1);
          #pragma GCC unroll 8
          for (int r = 0; r < R; ++r)
            acc[r] += tables[((r0 + r) * p.num_chunks + c0 + nib) * kEntries + idx];
        }
      }
      if constexpr (kFast) {
        if (uniform) {
          #pragma GCC unroll 8
          for (int r = 0; r < R; ++r) itot[r] += acc[r] * (int32_t{1} << i);
          continue;
        }
      }
      const float a =
          uniform ? a0 * UniformPlaneFactor(p.shape, i)
                  : ToF32(p.op.alpha, p.op.alpha_type, AlphaIndex(p.shape, grp, i, col));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) tot[r] += static_cast<float>(acc[r]) * a;
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (kFast && uniform) tot[r] = static_cast<float>(itot[r]) * a0;
      const float scale = T::Scale(p, r0 + r, sb);
      facc[r * ld] += kFast ? tot[r] * scale : tot[r];
    }
  }
}

template <int R>
void ExactGeneric(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  LutGeneric<false, R>(p, r0, sb, col, facc, ld);
}

template <int R>
void FastGeneric(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  LutGeneric<true, R>(p, r0, sb, col, facc, ld);
}

}  // namespace

LutKernels LutKernelsGeneric(bool fast) {
  if (fast) return {1, 4, LUTGEMM_ROWS8(FastGeneric), LUTGEMM_ROWS8(FastGeneric)};
  return {1, 4, LUTGEMM_ROWS8(ExactGeneric), LUTGEMM_ROWS8(ExactGeneric)};
}

}  // namespace lutgemm::cpu
