// Fast LUT-GEMM CPU kernels: a portable path and an AVX2 + FMA + F16C path (compiled with target
// attributes, selected at run time), each in an exact (float tables) and a fast (int8 tables)
// mode. See lut_gemm_cpu.h for the method.
//
// Loop structure (per task = a range of output columns, or for tall-skinny weights a slice of K
// (split-K, see KSlices); per block of up to 4 rows of x):
//   for each scale block of S activations (S | g, S <= 128):
//     for each block of W columns (W = 32 fast / 16 exact on AVX2, 1 portable):
//       for each plane i: sum the lookups of the block's S/32 words  -> per-column plane sums
//                         tot += plane_sum * alpha[group, i, col]
//       facc[row, col] += tot (* table scale in fast mode)
// so the sign words of each (word, plane) row are streamed sequentially over columns (the fast
// kernel also prefetches each stream a few blocks ahead) and every weight byte is read once per
// block of 4 rows. For more than 4 rows, columns are tiled so that a tile of the weight stays in
// L2 across row blocks.
#include "lut_gemm_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "lutgemm/dtypes.h"

#define LUTGEMM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace lutgemm::cpu {
namespace {

constexpr int kMu = 4;                      // activations per table
constexpr int kEntries = 1 << kMu;          // 16 entries per table
constexpr int kChunksPerWord = kWordBits / kMu;  // 8 nibbles per sign word
constexpr int kMaxRows = 4;                 // rows of x per pass over the weight

// Activations per scale block: the largest of 128/96/64/32 dividing g, so that a block lies in
// one group; g = 16: one word (32), whose two halves are separate groups (alpha segments below).
int64_t ScaleBlock(int64_t g) {
  for (int64_t s : {128, 96, 64, 32})
    if (g % s == 0) return s;
  return kWordBits;
}

inline float ToF32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    default:
      return F16ToFloat(static_cast<const uint16_t*>(p)[i]);
  }
}

// Everything a block kernel reads. Tables are per row of x.
struct Prep {
  BcqShape s;
  int64_t m, kp, g, ngroups, S, nsb, wps, nchunks;
  const uint32_t* bits;
  Layout layout;
  const void* alpha;
  const void* offset;
  DType at;
  std::vector<float> ft;      // exact: [m][nchunks][16]
  std::vector<int8_t> qt;     // fast:  [m][nchunks][16]
  std::vector<float> qscale;  // fast:  [m][nsb]
  std::vector<float> gsum;    // [m][ngroups]: sum of x over each group (offset term)
};

// The sign word of (word kw, plane i, column col), in either layout (bits are little-endian).
inline uint32_t LoadWord(const Prep& p, int64_t kw, int64_t i, int64_t col) {
  const int64_t row = (kw * p.s.q + i) * p.s.n;
  if (p.layout == Layout::kCanonical) return p.bits[row + col];
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(p.bits + row);
  uint32_t word = 0;
  for (int j = 0; j < kBytesPerWord; ++j)
    word |= uint32_t{bytes[SignByteOffset(p.layout, p.s.n, col, j)]} << (8 * j);
  return word;
}

// Signs of table entry p for activation j: +1 where bit j of p is set.
struct SignTable {
  float v[kMu][kEntries];
  SignTable() {
    #pragma GCC unroll 8
    for (int j = 0; j < kMu; ++j)
      for (int p = 0; p < kEntries; ++p) v[j][p] = (p >> j) & 1 ? 1.f : -1.f;
  }
};
const SignTable kSigns;

// Float tables for one chunk: t[p] = ((s0 x0 + s1 x1) + s2 x2) + s3 x3 (products are exact, so
// a fused or unfused evaluation rounds identically).
inline void ChunkTable(const float* x4, float* t) {
  for (int p = 0; p < kEntries; ++p) {
    float v = kSigns.v[0][p] * x4[0];
    v += kSigns.v[1][p] * x4[1];
    v += kSigns.v[2][p] * x4[2];
    v += kSigns.v[3][p] * x4[3];
    t[p] = v;
  }
}

// Tables of row `row` for scale blocks [b0, b1); xb: the row's activations from block b0 on.
void BuildTables(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0, int64_t b1) {
  const int64_t cpb = p.S / kMu;  // chunks per scale block
  const int64_t c0 = b0 * cpb;    // chunk c's activations: xb + (c - c0) * kMu
  if (!fast) {
    float* ft = p.ft.data() + row * p.nchunks * kEntries;
    for (int64_t c = c0; c < b1 * cpb; ++c) ChunkTable(xb + (c - c0) * kMu, ft + c * kEntries);
    return;
  }
  int8_t* qt = p.qt.data() + row * p.nchunks * kEntries;
  for (int64_t b = b0; b < b1; ++b) {
    float amax = 0.f;
    bool finite = true;
    for (int64_t c = b * cpb; c < (b + 1) * cpb; ++c) {
      const float* x4 = xb + (c - c0) * kMu;
      const float a = ((std::fabs(x4[0]) + std::fabs(x4[1])) + std::fabs(x4[2])) + std::fabs(x4[3]);
      if (!std::isfinite(a)) finite = false;
      else amax = std::max(amax, a);
    }
    float scale, inv;
    if (!finite) {  // NaN/Inf activations: the whole row becomes NaN
      scale = std::numeric_limits<float>::quiet_NaN();
      inv = 0.f;
    } else if (amax == 0.f) {
      scale = 0.f;
      inv = 0.f;
    } else {
      scale = amax / 127.f;
      inv = 127.f / amax;
    }
    p.qscale[row * p.nsb + b] = scale;
    float t[kEntries];
    for (int64_t c = b * cpb; c < (b + 1) * cpb; ++c) {
      ChunkTable(xb + (c - c0) * kMu, t);
      for (int e = 0; e < kEntries; ++e) {
        float v = std::nearbyint(t[e] * inv);
        v = std::min(127.f, std::max(-127.f, v));
        qt[c * kEntries + e] = static_cast<int8_t>(v);
      }
    }
  }
}

// ---- portable kernels: one column -------------------------------------------------------------

// Exact mode (kFast = false): float32 tables and sums. Fast mode: int8 tables summed exactly in
// int32, then scaled by the block's table scale.
template <bool kFast>
struct ScalarTables {
  using Entry = std::conditional_t<kFast, int8_t, float>;
  using Sum = std::conditional_t<kFast, int32_t, float>;
  static const Entry* Of(const Prep& p) {
    if constexpr (kFast) return p.qt.data();
    else return p.ft.data();
  }
  static float Scale(const Prep& p, int64_t row, int64_t sb) {
    if constexpr (kFast) return p.qscale[row * p.nsb + sb];
    else return 1.f;
  }
};

// Alpha segments of a scale block: the whole block (one group) for g >= 32; for g = 16 (S = 32,
// one word) the word's halves, nibbles 0-3 (group 2*kw) and 4-7 (group 2*kw + 1). Each segment's
// plane sums are scaled by its own group's alpha and added to the output on their own.
// A g = 16 group of padding rows only (the high half of the last word when K % 32 is 1..16) is
// skipped, scales and offset alike, as the dense path (which reads rows < K only) and the
// reference W_hat[:K] never see it; a group of g >= 32 always holds real rows.
inline int Segments(const Prep& p) { return p.g == kHalfWordGroup ? 2 : 1; }
inline bool GroupHasRows(const Prep& p, int64_t grp) { return grp * p.g < p.s.k; }
inline int64_t SegmentGroup(const Prep& p, int64_t sb, int seg) {
  return p.g == kHalfWordGroup ? 2 * sb + seg : sb * p.S / p.g;
}

// One column. Per segment and plane the lookups are summed (exact: float32; fast: int8 entries in
// int32, exactly) and scaled by the plane's alpha. Uniform weights: exact mode scales plane i by
// alpha * 2^i (a float32 multiplication by a power of two, exact: the same values as the weight
// with those scales stored); fast mode first combines the integer plane sums exactly,
// sum_i 2^i * acc_i (|.| <= 255 * 127 * S/4 < 2^21), then scales once by alpha.
template <bool kFast, int R>
void LutScalar(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  using T = ScalarTables<kFast>;
  const typename T::Entry* tables = T::Of(p);
  const int64_t q = p.s.q, kw0 = sb * p.wps;
  const bool uniform = p.s.uniform;
  const int segments = Segments(p), seg_nibbles = kChunksPerWord / segments;
  for (int seg = 0; seg < segments; ++seg) {
    const int nib0 = seg * seg_nibbles, nib1 = nib0 + seg_nibbles;
    const int64_t grp = SegmentGroup(p, sb, seg);
    if (!GroupHasRows(p, grp)) continue;
    const float a0 = ToF32(p.alpha, p.at, AlphaIndex(p.s, grp, 0, col));
    float tot[R] = {};
    int32_t itot[R] = {};  // fast, uniform: sum_i 2^i * plane sum
    for (int64_t i = 0; i < q; ++i) {
      typename T::Sum acc[R] = {};
      for (int64_t w = 0; w < p.wps; ++w) {
        const uint32_t word = LoadWord(p, kw0 + w, i, col);
        const int64_t c0 = (kw0 + w) * kChunksPerWord;
        for (int nib = nib0; nib < nib1; ++nib) {
          const uint32_t idx = (word >> (kMu * nib)) & (kEntries - 1);
          #pragma GCC unroll 8
          for (int r = 0; r < R; ++r)
            acc[r] += tables[((r0 + r) * p.nchunks + c0 + nib) * kEntries + idx];
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
          uniform ? a0 * UniformPlaneFactor(p.s, i) : ToF32(p.alpha, p.at, AlphaIndex(p.s, grp, i, col));
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
void ExactScalar(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  LutScalar<false, R>(p, r0, sb, col, facc, ld);
}

template <int R>
void FastScalar(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc, int64_t ld) {
  LutScalar<true, R>(p, r0, sb, col, facc, ld);
}

// ---- AVX2 kernels -----------------------------------------------------------------------------

template <DType AT>
LUTGEMM_AVX2 inline __m256 LoadAlpha8(const void* base, int64_t i) {
  if constexpr (AT == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (AT == DType::kBF16) {
    const __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h = _mm_loadu_si128(
        reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_cvtph_ps(h);
  }
}

// The sign words of 8 columns col .. col+7 (col % 8 == 0) of (word kw, plane i). In a kCpu
// block the 8 columns' byte j are 8 consecutive bytes, 32 bytes apart for successive j.
LUTGEMM_AVX2 inline __m256i LoadWords8(const Prep& p, int64_t kw, int64_t i, int64_t col) {
  const uint32_t* row = p.bits + (kw * p.s.q + i) * p.s.n;
  if (p.layout == Layout::kCanonical || col >= p.s.n - p.s.n % kLayoutBlock)
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + col));
  const uint8_t* b = reinterpret_cast<const uint8_t*>(row) + SignByteOffset(p.layout, p.s.n, col, 0);
  __m256i word = _mm256_setzero_si256();
  #pragma GCC unroll 4
  for (int j = 0; j < kBytesPerWord; ++j) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + j * kLayoutBlock));
    word = _mm256_or_si256(word, _mm256_slli_epi32(_mm256_cvtepu8_epi32(bytes), 8 * j));
  }
  return word;
}

// Byte j of the sign words of 8 columns col .. col+7 (col % 8 == 0) in the low 8 bits of each
// lane (higher bits are arbitrary), for the kCpu layout: 8 consecutive bytes in a block, the
// words themselves shifted in the canonical tail.
LUTGEMM_AVX2 inline __m256i LoadBytes8(const Prep& p, int64_t kw, int64_t i, int64_t col, int j) {
  const uint32_t* row = p.bits + (kw * p.s.q + i) * p.s.n;
  if (col >= p.s.n - p.s.n % kLayoutBlock)
    return _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + col)), 8 * j);
  const uint8_t* b = reinterpret_cast<const uint8_t*>(row) + SignByteOffset(p.layout, p.s.n, col, j);
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
}

// The 16 float entries of one chunk's table as two vectors, entries 0-7 and 8-15 (bit 3 of the
// entry = the sign of x3). Same operation order as ChunkTable: the products are exact (signs are
// +-1), so the FMAs round exactly like its additions and the tables are bitwise equal.
LUTGEMM_AVX2 inline void ChunkTableAvx2(const float* x4, __m256* lo, __m256* hi) {
  const __m256 s0 = _mm256_setr_ps(-1, 1, -1, 1, -1, 1, -1, 1);
  const __m256 s1 = _mm256_setr_ps(-1, -1, 1, 1, -1, -1, 1, 1);
  const __m256 s2 = _mm256_setr_ps(-1, -1, -1, -1, 1, 1, 1, 1);
  __m256 v = _mm256_mul_ps(s0, _mm256_broadcast_ss(x4));
  v = _mm256_fmadd_ps(s1, _mm256_broadcast_ss(x4 + 1), v);
  v = _mm256_fmadd_ps(s2, _mm256_broadcast_ss(x4 + 2), v);
  const __m256 x3 = _mm256_broadcast_ss(x4 + 3);
  *lo = _mm256_sub_ps(v, x3);
  *hi = _mm256_add_ps(v, x3);
}

// BuildTables on AVX2, giving the same table values. Fast mode: a scale block's float tables are built
// into a stack buffer first; the block's max |entry| equals max_c sum_j |x[4c+j]| (the entry whose
// signs match x is evaluated in the same order as that sum, and rounding is monotonic).
LUTGEMM_AVX2 void BuildTablesAvx2(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0,
                                  int64_t b1) {
  const int64_t cpb = p.S / kMu;  // chunks per scale block: 8..32, even
  const int64_t c0 = b0 * cpb;    // chunk c's activations: xb + (c - c0) * kMu
  if (!fast) {
    float* ft = p.ft.data() + row * p.nchunks * kEntries;
    for (int64_t c = c0; c < b1 * cpb; ++c) {
      __m256 lo, hi;
      ChunkTableAvx2(xb + (c - c0) * kMu, &lo, &hi);
      _mm256_storeu_ps(ft + c * kEntries, lo);
      _mm256_storeu_ps(ft + c * kEntries + 8, hi);
    }
    return;
  }
  int8_t* qt = p.qt.data() + row * p.nchunks * kEntries;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i max_finite = _mm256_set1_epi32(0x7f7fffff);
  const __m256i interleave = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256 t[2 * 32];
  for (int64_t b = b0; b < b1; ++b) {
    const float* xblock = xb + (b - b0) * p.S;
    __m256 vmax = _mm256_setzero_ps();
    __m256i nonfinite = _mm256_setzero_si256();
    for (int64_t c = 0; c < cpb; ++c) {
      ChunkTableAvx2(xblock + c * kMu, &t[2 * c], &t[2 * c + 1]);
      // Entries 8-15 are the negated entries 7-0 (all signs flipped), so |entries 0-7| suffice.
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(t[2 * c], abs_mask));
    }
    for (int64_t i = 0; i < p.S; i += 8) {
      const __m256i bits =
          _mm256_castps_si256(_mm256_and_ps(_mm256_loadu_ps(xblock + i), abs_mask));
      nonfinite = _mm256_or_si256(nonfinite, _mm256_cmpgt_epi32(bits, max_finite));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    float scale, inv;
    // NaN/Inf activations, or a chunk sum overflowing to Inf: the row becomes NaN.
    if (!_mm256_testz_si256(nonfinite, nonfinite) || !(amax <= std::numeric_limits<float>::max())) {
      scale = std::numeric_limits<float>::quiet_NaN();
      inv = 0.f;
    } else if (amax == 0.f) {
      scale = inv = 0.f;
    } else {
      scale = amax / 127.f;
      inv = 127.f / amax;
    }
    p.qscale[row * p.nsb + b] = scale;
    // Two chunks per store: round to nearest even (as nearbyint), saturate, clamp to -127.
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i lowest = _mm256_set1_epi8(-127);
    for (int64_t c = 0; c < cpb; c += 2) {
      const __m256i a = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(t[2 * c], vinv)),
                                           _mm256_cvtps_epi32(_mm256_mul_ps(t[2 * c + 1], vinv)));
      const __m256i b2 = _mm256_packs_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(t[2 * c + 2], vinv)),
                                            _mm256_cvtps_epi32(_mm256_mul_ps(t[2 * c + 3], vinv)));
      // Bytes are now [a0-3 a8-11 b0-3 b8-11 | a4-7 a12-15 b4-7 b12-15]; restore entry order.
      const __m256i v = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b2), interleave);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qt + (b * cpb + c) * kEntries),
                          _mm256_max_epi8(v, lowest));
    }
  }
}

// 16 columns: two vectors of 8 sign words; per nibble, vpermps into the low and high halves of the
// 16-entry float table (index = low 3 bits) and a blend on bit 3 (moved to the sign bit). In the
// kCpu layout the vectors are reloaded per byte (8 consecutive bytes widened to 8 lanes), which
// costs what the per-word loads do in the canonical layout. One alpha segment: nibbles
// [kNib0, kNib1) of `words` words from kw0, all in group grp (see Segments).
template <int R, DType AT, Layout L, bool kUniform, int kNib0, int kNib1>
LUTGEMM_AVX2 inline void ExactSegmentAvx2(const Prep& p, int64_t r0, int64_t kw0, int64_t words,
                                          int64_t grp, int64_t col, float* facc, int64_t ld) {
  const int64_t n = p.s.n, q = p.s.q;
  const float* ft[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) ft[r] = p.ft.data() + (r0 + r) * p.nchunks * kEntries;
  __m256 tot[R][2];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) tot[r][0] = tot[r][1] = _mm256_setzero_ps();
  __m256 u0 = _mm256_setzero_ps(), u1 = _mm256_setzero_ps();  // uniform: plane 0's scales
  if constexpr (kUniform) {
    u0 = LoadAlpha8<AT>(p.alpha, AlphaIndex(p.s, grp, 0, col));
    u1 = LoadAlpha8<AT>(p.alpha, AlphaIndex(p.s, grp, 0, col) + 8);
  }
  for (int64_t i = 0; i < q; ++i) {
    __m256 acc[R][2];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t w = 0; w < words; ++w) {
      __m256i v0, v1;
      if constexpr (L == Layout::kCanonical) {
        const uint32_t* src = p.bits + ((kw0 + w) * q + i) * n + col;
        v0 = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)),
                               kMu * kNib0);
        v1 = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 8)),
                               kMu * kNib0);
      }
      const int64_t c0 = (kw0 + w) * kChunksPerWord;
#pragma GCC unroll 8
      for (int nib = kNib0; nib < kNib1; ++nib) {
        if constexpr (L == Layout::kCpu) {
          if (nib % 2 == 0) {
            v0 = LoadBytes8(p, kw0 + w, i, col, nib / 2);
            v1 = LoadBytes8(p, kw0 + w, i, col + 8, nib / 2);
          }
        }
        const __m256 s0 = _mm256_castsi256_ps(_mm256_slli_epi32(v0, 28));
        const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(v1, 28));
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float* t = ft[r] + (c0 + nib) * kEntries;
          const __m256 tlo = _mm256_loadu_ps(t), thi = _mm256_loadu_ps(t + 8);
          const __m256 a0 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, v0),
                                             _mm256_permutevar8x32_ps(thi, v0), s0);
          const __m256 a1 = _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, v1),
                                             _mm256_permutevar8x32_ps(thi, v1), s1);
          acc[r][0] = _mm256_add_ps(acc[r][0], a0);
          acc[r][1] = _mm256_add_ps(acc[r][1], a1);
        }
        v0 = _mm256_srli_epi32(v0, kMu);
        v1 = _mm256_srli_epi32(v1, kMu);
      }
    }
    __m256 al0, al1;
    if constexpr (kUniform) {  // alpha * 2^i: exact
      const __m256 factor = _mm256_set1_ps(UniformPlaneFactor(p.s, i));
      al0 = _mm256_mul_ps(u0, factor);
      al1 = _mm256_mul_ps(u1, factor);
    } else {
      const int64_t ai = AlphaIndex(p.s, grp, i, col);
      al0 = LoadAlpha8<AT>(p.alpha, ai);
      al1 = LoadAlpha8<AT>(p.alpha, ai + 8);
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      tot[r][0] = _mm256_fmadd_ps(acc[r][0], al0, tot[r][0]);
      tot[r][1] = _mm256_fmadd_ps(acc[r][1], al1, tot[r][1]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* f = facc + r * ld;
    _mm256_storeu_ps(f, _mm256_add_ps(_mm256_loadu_ps(f), tot[r][0]));
    _mm256_storeu_ps(f + 8, _mm256_add_ps(_mm256_loadu_ps(f + 8), tot[r][1]));
  }
}

template <int R, DType AT, Layout L, bool kHalf, bool kUniform>
LUTGEMM_AVX2 void ExactAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                            int64_t ld) {
  const int64_t kw0 = sb * p.wps;
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    ExactSegmentAvx2<R, AT, L, kUniform, 0, 4>(p, r0, kw0, 1, SegmentGroup(p, sb, 0), col, facc, ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      ExactSegmentAvx2<R, AT, L, kUniform, 4, 8>(p, r0, kw0, 1, SegmentGroup(p, sb, 1), col, facc,
                                                 ld);
  } else {
    ExactSegmentAvx2<R, AT, L, kUniform, 0, kChunksPerWord>(p, r0, kw0, p.wps,
                                                            SegmentGroup(p, sb, 0), col, facc, ld);
  }
}

// Bytes of sign words per column tile when several row blocks reuse them: the per-core L2 of the
// smallest x86 server cores this targets (512 KiB on Zen 3; Intel's 1-2 MiB L2 holds it too).
constexpr int64_t kL2TileBytes = 512 * 1024;

// Software prefetch in the fast kernel. Per scale block a task reads q * S/32 rows of sign words
// and q rows of alpha (15 streams for q = 3, g = 128), each only 128 bytes per 32-column block:
// more concurrent streams than the hardware prefetcher keeps ahead of, so on cold weights (a
// decode step) the lookups stall on DRAM. Each row's block kPrefetchBlocks ahead is prefetched
// just before the row is read (bits, and alpha with the first word), so each stream's next lines
// are in flight while the current block's lookups run (BENCHMARKS.md has the measurements).
constexpr int64_t kPrefetchBlocks = 4;

// Prefetches the line kPrefetchBlocks column blocks past `at`, in a row of `bytes`-sized elements.
inline void PrefetchAhead(const void* at, int64_t bytes) {
  __builtin_prefetch(
      reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(at) + kPrefetchBlocks * 32 * bytes),
      0, 3);
}

// The int16 plane sums of 32 columns (FastSegmentAvx2's two accumulators) widened to int32 in
// natural column order: out[v] holds columns 8v .. 8v+7.
template <Layout L>
LUTGEMM_AVX2 inline void WidenSums(const __m256i acc[2], __m256i out[4]) {
  #pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    if constexpr (L == Layout::kCpu) {
      // Half h of accumulator 0 holds columns 16h .. 16h+7, of accumulator 1 16h+8 .. 16h+15.
      const __m128i a0 = h ? _mm256_extracti128_si256(acc[0], 1) : _mm256_castsi256_si128(acc[0]);
      const __m128i a1 = h ? _mm256_extracti128_si256(acc[1], 1) : _mm256_castsi256_si128(acc[1]);
      out[2 * h] = _mm256_cvtepi16_epi32(a0);
      out[2 * h + 1] = _mm256_cvtepi16_epi32(a1);
    } else {
      const __m256i f0 = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc[h]));
      const __m256i f1 = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc[h], 1));
      // f0 = [c0-3 | c8-11], f1 = [c4-7 | c12-15] (relative to 16 * h).
      out[2 * h] = _mm256_permute2x128_si256(f0, f1, 0x20);
      out[2 * h + 1] = _mm256_permute2x128_si256(f0, f1, 0x31);
    }
  }
}

// 32 columns (one kCpu block): four vectors bj[j] each hold byte j of the 32 columns' sign words
// (kCpu: loaded as they are; canonical: four vectors of 8 words transposed in registers). The low
// and high nibbles of bj[j] index the int8 tables of chunks 2j and 2j+1 with vpshufb; the two
// lookups are summed pairwise into int16 by vpmaddubsw. Column order of the two int16
// accumulators: kCpu [0-7 | 16-23] and [8-15 | 24-31]; canonical (after the transpose)
// [0-3, 8-11 | 4-7, 12-15] and [16-19, 24-27 | 20-23, 28-31]; WidenSums restores natural order.
// One alpha segment: bytes [kJ0, kJ1) of `words` words from kw0, all in group grp (see Segments).
// Per plane the widened sums are scaled by alpha in float32, or for uniform weights shifted by
// the plane index and added in int32 (exact), then scaled once by alpha.
template <int R, DType AT, Layout L, bool kUniform, int kJ0, int kJ1>
LUTGEMM_AVX2 inline void FastSegmentAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t kw0,
                                         int64_t words, int64_t grp, int64_t col, float* facc,
                                         int64_t ld) {
  const int64_t n = p.s.n, q = p.s.q;
  const int8_t* qt[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) qt[r] = p.qt.data() + (r0 + r) * p.nchunks * kEntries;
  const __m256i by_byte = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                           0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi8(1);
  // Only on the first pass over the weight (later row blocks find it in L2), within the row.
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kAlphaBytes = AT == DType::kF32 ? 4 : 2;
  auto prefetch_alpha = [&](int64_t plane) {
    const char* a =
        static_cast<const char*>(p.alpha) + AlphaIndex(p.s, grp, plane, col) * kAlphaBytes;
    PrefetchAhead(a, kAlphaBytes);
    if constexpr (kAlphaBytes == 4) PrefetchAhead(a + 64, kAlphaBytes);
  };
  __m256 tot[R][4];   // float32 sums over planes (per-plane alpha)
  __m256i itot[R][4];  // uniform: sum_i 2^i * plane sum, |.| <= 255 * 127 * S/4 < 2^21
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 8
    for (int v = 0; v < 4; ++v) {
      tot[r][v] = _mm256_setzero_ps();
      itot[r][v] = _mm256_setzero_si256();
    }
  if (kUniform && prefetch) prefetch_alpha(0);
  for (int64_t i = 0; i < q; ++i) {
    __m256i acc[R][2];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    if (!kUniform && prefetch) prefetch_alpha(i);
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t* row = p.bits + ((kw0 + w) * q + i) * n;
      if (prefetch) {
        PrefetchAhead(row + col, sizeof(uint32_t));
        PrefetchAhead(row + col + 16, sizeof(uint32_t));
      }
      __m256i bj[4];
      if constexpr (L == Layout::kCpu) {
        const uint8_t* block = reinterpret_cast<const uint8_t*>(row) + col * kBytesPerWord;
        #pragma GCC unroll 4
        for (int j = kJ0; j < kJ1; ++j)
          bj[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + j * kLayoutBlock));
      } else {
        const __m256i* src = reinterpret_cast<const __m256i*>(row + col);
        const __m256i a = _mm256_shuffle_epi8(_mm256_loadu_si256(src), by_byte);
        const __m256i b = _mm256_shuffle_epi8(_mm256_loadu_si256(src + 1), by_byte);
        const __m256i c = _mm256_shuffle_epi8(_mm256_loadu_si256(src + 2), by_byte);
        const __m256i d = _mm256_shuffle_epi8(_mm256_loadu_si256(src + 3), by_byte);
        const __m256i ab_lo = _mm256_unpacklo_epi32(a, b), ab_hi = _mm256_unpackhi_epi32(a, b);
        const __m256i cd_lo = _mm256_unpacklo_epi32(c, d), cd_hi = _mm256_unpackhi_epi32(c, d);
        bj[0] = _mm256_unpacklo_epi64(ab_lo, cd_lo);
        bj[1] = _mm256_unpackhi_epi64(ab_lo, cd_lo);
        bj[2] = _mm256_unpacklo_epi64(ab_hi, cd_hi);
        bj[3] = _mm256_unpackhi_epi64(ab_hi, cd_hi);
      }
      const int64_t c0 = (kw0 + w) * kChunksPerWord;
      __m256i nib[8];  // low and high nibbles of byte j: table indices of chunks c0+2j, c0+2j+1
      #pragma GCC unroll 8
      for (int j = kJ0; j < kJ1; ++j) {
        nib[2 * j] = _mm256_and_si256(bj[j], low4);
        nib[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(bj[j], 4), low4);
      }
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int8_t* t = qt[r] + c0 * kEntries;
        __m256i a0 = acc[r][0], a1 = acc[r][1];
#pragma GCC unroll 4
        for (int j = kJ0; j < kJ1; ++j) {
          const __m256i tlo = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 2 * j * kEntries)));
          const __m256i thi = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + (2 * j + 1) * kEntries)));
          const __m256i l = _mm256_shuffle_epi8(tlo, nib[2 * j]);
          const __m256i h = _mm256_shuffle_epi8(thi, nib[2 * j + 1]);
          a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(l, h)));
          a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(l, h)));
        }
        acc[r][0] = a0;
        acc[r][1] = a1;
      }
    }
    if constexpr (kUniform) {
      const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(i));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i sums[4];
        WidenSums<L>(acc[r], sums);
        #pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
          itot[r][v] = _mm256_add_epi32(itot[r][v], _mm256_sll_epi32(sums[v], shift));
      }
    } else {
      const int64_t ai = AlphaIndex(p.s, grp, i, col);
      __m256 al[4];
      #pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) al[v] = LoadAlpha8<AT>(p.alpha, ai + 8 * v);
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i sums[4];
        WidenSums<L>(acc[r], sums);
        #pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
          tot[r][v] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[v]), al[v], tot[r][v]);
      }
    }
  }
  if constexpr (kUniform) {
    const int64_t ai = AlphaIndex(p.s, grp, 0, col);
    __m256 al[4];
    #pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) al[v] = LoadAlpha8<AT>(p.alpha, ai + 8 * v);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) tot[r][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(itot[r][v]), al[v]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 sc = _mm256_set1_ps(p.qscale[(r0 + r) * p.nsb + sb]);
    float* f = facc + r * ld;
    #pragma GCC unroll 8
    for (int v = 0; v < 4; ++v)
      _mm256_storeu_ps(f + 8 * v, _mm256_fmadd_ps(tot[r][v], sc, _mm256_loadu_ps(f + 8 * v)));
  }
}

template <int R, DType AT, Layout L, bool kHalf, bool kUniform>
LUTGEMM_AVX2 void FastAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                           int64_t ld) {
  const int64_t kw0 = sb * p.wps;
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    FastSegmentAvx2<R, AT, L, kUniform, 0, 2>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 0), col,
                                              facc, ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      FastSegmentAvx2<R, AT, L, kUniform, 2, 4>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 1), col,
                                                facc, ld);
  } else {
    FastSegmentAvx2<R, AT, L, kUniform, 0, kBytesPerWord>(p, r0, sb, kw0, p.wps,
                                                          SegmentGroup(p, sb, 0), col, facc, ld);
  }
}

// ---- dispatch and driver ----------------------------------------------------------------------

using BlockFn = void (*)(const Prep&, int64_t, int64_t, int64_t, float*, int64_t);

struct Kernels {
  int width;             // columns per vector block call
  BlockFn vec[kMaxRows];  // R = 1..4
  BlockFn tail[kMaxRows];  // single-column kernels for the last n % width columns
};

#define LUTGEMM_ROWS(F, ...) {F<1 __VA_ARGS__>, F<2 __VA_ARGS__>, F<3 __VA_ARGS__>, F<4 __VA_ARGS__>}

// Vector kernels are specialised per layout, alpha dtype, half-word groups (g = 16) and uniform
// scales. Vector blocks of the fast kernel are whole kCpu blocks (columns < N32); exact-mode
// blocks of 16 may lie in the canonical tail (LoadBytes8 handles it); single-column tails read
// words through LoadWord.
template <DType AT, Layout L, bool kHalf, bool kUniform>
Kernels Avx2KernelsFor(bool fast) {
  if (fast)
    return {32, LUTGEMM_ROWS(FastAvx2, , AT, L, kHalf, kUniform), LUTGEMM_ROWS(FastScalar)};
  return {16, LUTGEMM_ROWS(ExactAvx2, , AT, L, kHalf, kUniform), LUTGEMM_ROWS(ExactScalar)};
}

template <DType AT, Layout L>
Kernels Avx2KernelsForLayout(bool fast, bool half, bool uniform) {
  if (half)
    return uniform ? Avx2KernelsFor<AT, L, true, true>(fast)
                   : Avx2KernelsFor<AT, L, true, false>(fast);
  return uniform ? Avx2KernelsFor<AT, L, false, true>(fast)
                 : Avx2KernelsFor<AT, L, false, false>(fast);
}

template <DType AT>
Kernels Avx2Kernels(bool fast, Layout layout, bool half, bool uniform) {
  if (layout == Layout::kCpu) return Avx2KernelsForLayout<AT, Layout::kCpu>(fast, half, uniform);
  return Avx2KernelsForLayout<AT, Layout::kCanonical>(fast, half, uniform);
}

Kernels GetKernels(Isa isa, bool fast, const Prep& p) {
  const bool half = p.g == kHalfWordGroup, uniform = p.s.uniform;
  if (isa == Isa::kAvx2) {
    switch (p.at) {
      case DType::kF32:
        return Avx2Kernels<DType::kF32>(fast, p.layout, half, uniform);
      case DType::kBF16:
        return Avx2Kernels<DType::kBF16>(fast, p.layout, half, uniform);
      default:
        return Avx2Kernels<DType::kF16>(fast, p.layout, half, uniform);
    }
  }
  if (fast) return {1, LUTGEMM_ROWS(FastScalar), LUTGEMM_ROWS(FastScalar)};
  return {1, LUTGEMM_ROWS(ExactScalar), LUTGEMM_ROWS(ExactScalar)};
}

void StoreRow(const float* src, DType t, void* y, int64_t offset, int64_t count) {
  switch (t) {
    case DType::kF32:
      std::memcpy(static_cast<float*>(y) + offset, src, count * sizeof(float));
      break;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(y) + offset;
      for (int64_t i = 0; i < count; ++i) d[i] = FloatToBf16(src[i]);
      break;
    }
    default: {
      uint16_t* d = static_cast<uint16_t*>(y) + offset;
      for (int64_t i = 0; i < count; ++i) d[i] = FloatToF16(src[i]);
      break;
    }
  }
}

// Computes columns [c_begin, c_end) of every row over scale blocks [sb_begin, sb_end) of K.
// c_begin is a multiple of 32. The result goes to y (in x's dtype) or, for a K slice, as float32
// into partial[m, n].
void RunColumns(const Prep& p, const Kernels& kr, const Operands& op, int64_t c_begin,
                int64_t c_end, int64_t sb_begin, int64_t sb_end, float* partial) {
  const int64_t n = p.s.n, q = p.s.q, m = p.m;
  // Column tile: all of the range for <= 4 rows (one pass over the weight); otherwise a tile whose
  // sign words over the scale blocks run here (K * q / 8 bytes per column without split-K) fill
  // about kL2TileBytes, so every row block re-reads them from L2 instead of DRAM.
  int64_t tile = c_end - c_begin;
  if (m > kMaxRows) {
    const int64_t bytes_per_col = (sb_end - sb_begin) * p.S * q / 8;
    tile = std::max<int64_t>(32, (kL2TileBytes / bytes_per_col) / 32 * 32);
  }
  std::vector<float> facc(static_cast<size_t>(kMaxRows) * std::min(tile, c_end - c_begin));
  for (int64_t t0 = c_begin; t0 < c_end; t0 += tile) {
    const int64_t t1 = std::min(t0 + tile, c_end), ld = t1 - t0;
    const int64_t vec_end = t0 + (t1 - t0) / kr.width * kr.width;
    for (int64_t r0 = 0; r0 < m; r0 += kMaxRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, m - r0));
      std::fill(facc.begin(), facc.begin() + rows * ld, 0.f);
      for (int64_t sb = sb_begin; sb < sb_end; ++sb) {
        // The offset terms of the groups that start in this block (two per block for g = 16).
        for (int64_t grp = (sb * p.S + p.g - 1) / p.g;
             p.offset != nullptr && grp * p.g < (sb + 1) * p.S && GroupHasRows(p, grp); ++grp) {
          for (int r = 0; r < rows; ++r) {
            const float gs = p.gsum[(r0 + r) * p.ngroups + grp];
            float* f = facc.data() + r * ld;
            for (int64_t c = t0; c < t1; ++c) f[c - t0] += ToF32(p.offset, p.at, grp * n + c) * gs;
          }
        }
        for (int64_t c = t0; c < vec_end; c += kr.width)
          kr.vec[rows - 1](p, r0, sb, c, facc.data() + (c - t0), ld);
        for (int64_t c = vec_end; c < t1; ++c)
          kr.tail[rows - 1](p, r0, sb, c, facc.data() + (c - t0), ld);
      }
      for (int r = 0; r < rows; ++r) {
        if (partial != nullptr)
          std::memcpy(partial + (r0 + r) * n + t0, facc.data() + r * ld, ld * sizeof(float));
        else
          StoreRow(facc.data() + r * ld, op.x_type, op.y, (r0 + r) * n + t0, ld);
      }
    }
  }
}

// ---- dense path (large batches): dequantized tiles + FMA micro-kernel --------------------------
//
// BLIS-style blocking with the weight dequantized on the fly. x is packed once per call (PackX).
// Each task owns a range of output columns and, per tile of kNB columns x kKB rows of K:
//   dequantize the tile into kNB / kNR packed micro-panels (64 KiB, L2), then
//   for each micro-panel (kKB x 16 floats, kept in L1):
//     for each block of kMR = 6 rows of x (its packed kKB x 6 panel streams from L2):
//       6 x 16 register-blocked FMA micro-kernel, accumulating into the task's [m, kNB] buffer.
// Every weight element is dequantized once per call and reused by all m rows, so at m >= 64 the
// dequantization is a few percent of the FMAs. Columns never straddle tasks, and each output's
// sum runs over k in the same order whatever the split (deterministic for any thread count).

constexpr int kNR = 16;   // columns per micro-panel (two AVX2 vectors of accumulators)
constexpr int kMR = 6;    // rows of x per micro-kernel call (6 x 2 accumulators + 3 = 15 ymm)
constexpr int kNB = 64;   // columns per dequantized tile
constexpr int kKB = 256;  // rows of K per tile (tile = 64 KiB of float32, one micro-panel 16 KiB)

// A dequantized tile is stored as kNB / kNR micro-panels, each [kKB][kNR] contiguous, so that the
// micro-kernel walks one panel sequentially and the panel (16 KiB) maps onto every L1 set evenly
// (a row stride of kNB floats would crowd it into a quarter of the sets, where x evicts it).
inline int64_t TileIndex(int64_t kk, int64_t c) {
  return (c / kNR) * (kKB * kNR) + kk * kNR + c % kNR;
}

// W_hat[k0 .. k0+kc, c0 .. c0+nc] into the micro-panels of wt; columns >= nc are zero.
template <DType AT>
inline void DequantTile(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc, float* wt) {
  const int64_t n = p.s.n, q = p.s.q;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const int64_t k = k0 + kk, grp = k / p.g, kw = k / kWordBits, t = k % kWordBits;
    for (int64_t c = 0; c < kNB; ++c) {
      float v = 0.f;
      if (c < nc) {
        if (p.offset) v = ToF32(p.offset, AT, grp * n + c0 + c);
        for (int64_t i = 0; i < q; ++i) {
          const uint32_t word = LoadWord(p, kw, i, c0 + c);
          // alpha_i (uniform: alpha * 2^i, exact) times +-1.
          const float a = ToF32(p.alpha, AT, AlphaIndex(p.s, grp, i, c0 + c)) *
                          UniformPlaneFactor(p.s, i);
          v += a * static_cast<float>(static_cast<int>((word >> t) & 1u) * 2 - 1);
        }
      }
      wt[TileIndex(kk, c)] = v;
    }
  }
}

// x is packed once per call into panels of kKB x kMR floats (the kMR rows of a row block
// interleaved per k, zero rows past m), ordered [K tile][row block][kk][kMR]: the broadcasts walk
// one contiguous stream instead of kMR rows K floats apart (which alias in L1 when K is a multiple
// of 1024), and the row blocks of one K tile follow each other in memory, as the micro-kernel
// calls do.
inline int64_t PanelIndex(int64_t blocks, int64_t i, int64_t row) {
  return ((i / kKB * blocks + row / kMR) * kKB + i % kKB) * kMR + row % kMR;
}

template <int MR>
void MicroPortable(const float* xp, const float* wt, int64_t kc, float* c, int64_t ldc) {
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int64_t k = 0; k < kc; ++k) {
      const float xv = xp[k * kMR + r];
      for (int j = 0; j < kNR; ++j) c[r * ldc + j] += xv * wt[k * kNR + j];
    }
}

// Per 8 columns and sign word (32 rows of K): the Q words, alpha and -alpha are loaded once into
// registers (Q is a template parameter so that they stay there), then each row picks +-alpha per
// plane with blendv on the word shifted so that the row's bit is the sign bit (rows in descending
// order, one shift per row and plane). A word lies in one group for g >= 32; for g = 16 its rows
// 16-31 and 0-15 are two groups, so the scales are reloaded at row 15. Uniform scales are
// alpha * 2^i (exact). Same summation order as DequantTile, so W_hat is bitwise equal.
template <DType AT, int Q>
LUTGEMM_AVX2 void DequantTileAvx2(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc,
                                  float* wt) {
  if (nc < kNB) return DequantTile<AT>(p, k0, kc, c0, nc, wt);
  const int64_t n = p.s.n;
  const bool half = p.g == kHalfWordGroup;
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
        const int64_t grp = (k0 + kk0 + kHalfWordGroup * seg) / p.g;
        const __m256 a0 = LoadAlpha8<AT>(p.alpha, AlphaIndex(p.s, grp, 0, c0 + c));
        #pragma GCC unroll 8
        for (int i = 0; i < Q; ++i) {
          pos[i] = p.s.uniform
                       ? _mm256_mul_ps(a0, _mm256_set1_ps(UniformPlaneFactor(p.s, i)))
                       : LoadAlpha8<AT>(p.alpha, AlphaIndex(p.s, grp, i, c0 + c));
          neg[i] = _mm256_xor_ps(pos[i], sign);
        }
        const __m256 base =
            p.offset ? LoadAlpha8<AT>(p.offset, grp * n + c0 + c) : _mm256_setzero_ps();
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

// x [m, k] into float32 panels (PanelIndex), rows past m zero. The rows of the last K tile past
// k are left unwritten: the micro-kernels read only kc = k - k0 rows of it.
void PackX(const Operands& op, int64_t m, int64_t k, float* xp) {
  const int64_t blocks = (m + kMR - 1) / kMR;
  const std::vector<float> zeros(k, 0.f);
  std::vector<float> rows(op.x_type == DType::kF32 ? 0 : kMR * k);
  for (int64_t b = 0; b < blocks; ++b) {
    const float* src[kMR];
    for (int r = 0; r < kMR; ++r) {
      const int64_t row = b * kMR + r;
      if (row >= m) {
        src[r] = zeros.data();
      } else if (op.x_type == DType::kF32) {
        src[r] = static_cast<const float*>(op.x) + row * k;
      } else {
        for (int64_t i = 0; i < k; ++i) rows[r * k + i] = ToF32(op.x, op.x_type, row * k + i);
        src[r] = rows.data() + r * k;
      }
    }
    for (int64_t k0 = 0; k0 < k; k0 += kKB) {
      float* d = xp + PanelIndex(blocks, k0, b * kMR);
      const int64_t kc = std::min<int64_t>(kKB, k - k0);
      for (int64_t kk = 0; kk < kc; ++kk)
        for (int r = 0; r < kMR; ++r) d[kk * kMR + r] = src[r][k0 + kk];
    }
  }
}

using TileFn = void (*)(const Prep&, int64_t, int64_t, int64_t, int64_t, float*);
using MicroFn = void (*)(const float*, const float*, int64_t, float*, int64_t);

struct DenseKernels {
  TileFn tile;
  MicroFn micro[kMR];
};

template <DType AT>
DenseKernels GetDenseKernels(bool avx2, int64_t q) {
  static constexpr TileFn kAvx2Tiles[kMaxBits] = {
      DequantTileAvx2<AT, 1>, DequantTileAvx2<AT, 2>, DequantTileAvx2<AT, 3>,
      DequantTileAvx2<AT, 4>, DequantTileAvx2<AT, 5>, DequantTileAvx2<AT, 6>,
      DequantTileAvx2<AT, 7>, DequantTileAvx2<AT, 8>};
  if (avx2)
    return {kAvx2Tiles[q - 1],
            {MicroAvx2<1>, MicroAvx2<2>, MicroAvx2<3>, MicroAvx2<4>, MicroAvx2<5>, MicroAvx2<6>}};
  return {DequantTile<AT>,
          {MicroPortable<1>, MicroPortable<2>, MicroPortable<3>, MicroPortable<4>,
           MicroPortable<5>, MicroPortable<6>}};
}

// Columns [c_begin, c_end) of every row; xp is x packed by PanelIndex. Each
// column's sums run over k in the same order whatever the column split, so results do not depend
// on the thread count.
void RunDense(const Prep& p, const DenseKernels& dk, const Operands& op, const float* xp,
              int64_t c_begin, int64_t c_end) {
  const int64_t m = p.m, k = p.s.k, n = p.s.n, blocks = (m + kMR - 1) / kMR;
  // The tile, 64-byte aligned so that no micro-panel row of kNR floats straddles two lines.
  std::vector<float> wt_buf(kKB * kNB + 16), facc(m * kNB);
  float* wt = wt_buf.data() + (-reinterpret_cast<uintptr_t>(wt_buf.data()) / sizeof(float)) % 16;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kNB) {
    const int64_t nc = std::min<int64_t>(kNB, c_end - c0);
    std::fill(facc.begin(), facc.end(), 0.f);
    for (int64_t k0 = 0; k0 < k; k0 += kKB) {
      const int64_t kc = std::min<int64_t>(kKB, k - k0);
      dk.tile(p, k0, kc, c0, nc, wt);
      // Micro-panels outer: one panel (kc x kNR floats, 16 KiB) stays in L1 while every row
      // block of x (kc x kMR floats each, from L2) streams past it.
      for (int64_t cs = 0; cs < nc; cs += kNR) {
        for (int64_t m0 = 0; m0 < m; m0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, m - m0));
          dk.micro[mr - 1](xp + PanelIndex(blocks, k0, m0), wt + TileIndex(0, cs), kc,
                           facc.data() + m0 * kNB + cs, kNB);
        }
      }
    }
    for (int64_t r = 0; r < m; ++r)
      StoreRow(facc.data() + r * kNB, op.x_type, op.y, r * n + c0, nc);
  }
}

}  // namespace

bool IsaSupported(Isa isa) {
  if (isa == Isa::kPortable) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa SelectIsa() {
  static const bool avx2 = IsaSupported(Isa::kAvx2);
  const char* env = std::getenv("LUTGEMM_CPU_ISA");
  if (env != nullptr && std::string(env) == "portable") return Isa::kPortable;
  return avx2 ? Isa::kAvx2 : Isa::kPortable;
}

namespace {
void RunDenseAll(const Prep& p, const Operands& op, Isa isa, int64_t max_tasks,
                 const ParallelFor& parallel_for) {
  const bool avx2 = isa == Isa::kAvx2;
  DenseKernels dk;
  switch (p.at) {
    case DType::kF32:
      dk = GetDenseKernels<DType::kF32>(avx2, p.s.q);
      break;
    case DType::kBF16:
      dk = GetDenseKernels<DType::kBF16>(avx2, p.s.q);
      break;
    default:
      dk = GetDenseKernels<DType::kF16>(avx2, p.s.q);
      break;
  }
  const int64_t m = p.m, k = p.s.k, n = p.s.n;
  const int64_t blocks = (m + kMR - 1) / kMR, ktiles = (k + kKB - 1) / kKB;
  std::unique_ptr<float[]> xp(new float[ktiles * blocks * kKB * kMR]);
  PackX(op, m, k, xp.get());
  const int64_t tasks = std::max<int64_t>(1, max_tasks);
  int64_t chunk = (n + tasks * 4 - 1) / (tasks * 4);
  chunk = std::max<int64_t>(kNB, (chunk + kNB - 1) / kNB * kNB);
  const int64_t nchunk = (n + chunk - 1) / chunk;
  auto run = [&](int64_t i) {
    RunDense(p, dk, op, xp.get(), i * chunk, std::min(n, (i + 1) * chunk));
  };
  if (nchunk == 1 || tasks == 1) {
    for (int64_t i = 0; i < nchunk; ++i) run(i);
  } else {
    parallel_for(nchunk, run);
  }
}

// Split-K for tall-skinny weights. Columns alone cannot keep several threads busy when N has
// only a few 32-column blocks (a router, a value head, a narrow tensor-parallel shard), and the
// lookup tables, whose bytes grow with K alone, are then a large part of the work (4 bytes per
// activation against q * N / 8 of sign bits). So K is cut into up to kKSlices slices of whole
// scale blocks; each slice is one work item that builds its own tables and writes float32
// partial sums of all columns, and the partials are added in slice order. The number of slices
// depends on the shape only, never on the thread count, so results stay bitwise identical for
// any number of threads.
// A slice reads about kMinSliceBytes of sign words or more: below that, handing a slice to
// another thread costs more than reading it (a wake-up is tens of microseconds; 128 KiB streams
// from DRAM in about ten).
constexpr int64_t kSplitKBelowN = 128;  // split K when N < 128 (fewer than 4 whole blocks of 32)
constexpr int64_t kKSlices = 8;
constexpr int64_t kMinSliceBytes = 128 * 1024;

int64_t KSlices(const Prep& p) {
  if (p.s.n >= kSplitKBelowN) return 1;
  const int64_t bytes = p.kp / 8 * p.s.q * p.s.n;
  return std::max<int64_t>(1, std::min({kKSlices, p.nsb, bytes / kMinSliceBytes}));
}

// Every row's tables for scale blocks [b0, b1), and the offset term's sums of x over the groups
// that start in those blocks (in double). float32 x is read in place for the blocks that lie
// inside K; other dtypes, and the block reaching past K, go through a float32 copy zero-padded
// to the block's end. Reading in place avoids a per-row copy whose cost (glibc's memcpy) is of
// the order of the lookups themselves for tall, narrow weights.
void PrepareBlocks(const Operands& op, Prep& p, Isa isa, bool fast, int64_t b0, int64_t b1) {
  const int64_t k = p.s.k;
  const int64_t direct = op.x_type == DType::kF32 ? std::clamp(k / p.S, b0, b1) : b0;
  const auto build = isa == Isa::kAvx2 ? BuildTablesAvx2 : BuildTables;
  std::vector<float> xb((b1 - direct) * p.S, 0.f);  // x[r, direct * S ..], zero past K
  for (int64_t r = 0; r < p.m; ++r) {
    if (direct > b0)
      build(static_cast<const float*>(op.x) + r * k + b0 * p.S, p, r, fast, b0, direct);
    if (direct < b1) {
      const int64_t lo = direct * p.S, hi = std::min(k, b1 * p.S);
      for (int64_t i = lo; i < hi; ++i) xb[i - lo] = ToF32(op.x, op.x_type, r * k + i);
      build(xb.data(), p, r, fast, direct, b1);
    }
    if (p.offset == nullptr) continue;
    for (int64_t grp = (b0 * p.S + p.g - 1) / p.g; grp * p.g < b1 * p.S; ++grp) {
      double sum = 0.0;
      for (int64_t i = grp * p.g; i < std::min(k, (grp + 1) * p.g); ++i)
        sum += ToF32(op.x, op.x_type, r * k + i);
      p.gsum[r * p.ngroups + grp] = static_cast<float>(sum);
    }
  }
}

// y[i] = partial[0][i] + partial[1][i] + ... (in slice order, summed into partial[0]), stored in
// x's dtype.
void SumSlices(float* partial, int64_t slices, int64_t count, const Operands& op) {
  for (int64_t s = 1; s < slices; ++s)
    for (int64_t i = 0; i < count; ++i) partial[i] += partial[s * count + i];
  StoreRow(partial, op.x_type, op.y, 0, count);
}

}  // namespace

void LutGemm(const Operands& op, Mode mode, Path path, Isa isa, int64_t max_tasks,
             const ParallelFor& parallel_for) {
  const bool fast = mode == Mode::kFast, dense = path == Path::kDense;
  if (isa == Isa::kAvx2 && !IsaSupported(Isa::kAvx2)) isa = Isa::kPortable;
  Prep p;
  p.s = op.shape;
  p.m = op.m;
  p.kp = p.s.padded_k();
  p.g = p.s.group_size;
  p.ngroups = p.s.num_groups();
  p.S = ScaleBlock(p.g);
  p.nsb = p.kp / p.S;
  p.wps = p.S / kWordBits;
  p.nchunks = p.kp / kMu;
  p.bits = op.bits;
  p.layout = op.layout;
  p.alpha = op.alpha;
  p.offset = op.offset;
  p.at = op.alpha_type;

  if (dense) {
    RunDenseAll(p, op, isa, max_tasks, parallel_for);
    return;
  }
  if (fast) {
    p.qt.resize(p.m * p.nchunks * kEntries);
    p.qscale.resize(p.m * p.nsb);
  } else {
    p.ft.resize(p.m * p.nchunks * kEntries);
  }
  p.gsum.resize(p.m * p.ngroups);
  const Kernels kr = GetKernels(isa, fast, p);
  const int64_t n = p.s.n;
  const int64_t tasks = std::max<int64_t>(1, max_tasks);

  // Split-K: work item s builds the tables of K slice s and computes all columns over it.
  if (const int64_t slices = KSlices(p); slices > 1) {
    std::vector<float> partial(slices * p.m * n);
    auto run = [&](int64_t s) {
      const int64_t b0 = s * p.nsb / slices, b1 = (s + 1) * p.nsb / slices;
      PrepareBlocks(op, p, isa, fast, b0, b1);
      RunColumns(p, kr, op, 0, n, b0, b1, partial.data() + s * p.m * n);
    };
    if (tasks == 1) {
      for (int64_t s = 0; s < slices; ++s) run(s);
    } else {
      parallel_for(slices, run);
    }
    SumSlices(partial.data(), slices, p.m * n, op);
    return;
  }

  PrepareBlocks(op, p, isa, fast, 0, p.nsb);
  // Column chunks: multiples of 32 columns (no two tasks share a 128-byte line of y or of a sign
  // word row), up to 4 per task for load balance.
  // Chunks of >= 1024 columns where N allows (>= 4 KiB contiguous per sign-word row and scale
  // block, so that hardware prefetch streams run long), but at least one chunk per task.
  int64_t chunk = std::max<int64_t>(1024, (n + tasks * 4 - 1) / (tasks * 4));
  chunk = std::min<int64_t>(chunk, (n + tasks - 1) / tasks);
  chunk = std::max<int64_t>(32, (chunk + 31) / 32 * 32);
  const int64_t nchunk = (n + chunk - 1) / chunk;
  auto run = [&](int64_t i) {
    RunColumns(p, kr, op, i * chunk, std::min(n, (i + 1) * chunk), 0, p.nsb, nullptr);
  };
  if (nchunk == 1 || tasks == 1) {
    for (int64_t i = 0; i < nchunk; ++i) run(i);
  } else {
    parallel_for(nchunk, run);
  }
}

}  // namespace lutgemm::cpu
