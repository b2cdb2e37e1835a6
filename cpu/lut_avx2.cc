// Lookup kernels with AVX2 (the twin of lut_generic.cc; see lut.h for what a call computes).
//
// Tiling: a call covers one scale block of K (S = 32..128 activations, 1-4 sign words per plane)
// for a block of columns and up to R = 4 rows of x. The driver gives each thread a range of
// whole 32-column blocks (never sharing a 128-byte line of y or of a sign-word row) and walks,
// per row block, every scale block then every column block, so each (word, plane) row of signs
// streams sequentially over the thread's columns and every weight byte is read once per 4 rows.
// * exact (16 columns): two vectors of 8 sign words; each nibble selects a float32 entry with two
//   vpermps (entries 0-7, 8-15) and a blend on bit 3; 2 x R float32 accumulators per plane.
// * fast (32 columns = one kCpu block): byte j of the 32 columns' words in one vector (the kCpu
//   layout stores them so; canonical words are transposed in registers); its low and high nibbles
//   index the int8 tables of chunks 2j and 2j+1 with vpshufb, summed pairwise into int16 by
//   vpmaddubsw (at most 32 lookups of |entry| <= 127 per plane: no overflow). The plane sums are
//   widened to int32 and scaled by alpha in float32, or for uniform weights shifted by the plane
//   index and added exactly in int32 before one scale by alpha.
// Why: the lookups, not memory, bound the kernel at batch 1, and vpshufb does 32 lookups per
// instruction where the float tables need two permutes and a blend per 8.
// With g = 16 a scale block is one word whose halves (bytes 0-1, 2-3) are separate alpha segments
// (kernel_common.h); each kernel is instantiated for it and for uniform scales.
#include <immintrin.h>

#include <cstdint>

#include "avx2_loads.h"
#include "lut.h"

namespace lutgemm::cpu {
namespace {

// 16 columns: two vectors of 8 sign words; per nibble, vpermps into the low and high halves of the
// 16-entry float table (index = low 3 bits) and a blend on bit 3 (moved to the sign bit). In the
// kCpu layout the vectors are reloaded per byte (8 consecutive bytes widened to 8 lanes), which
// costs what the per-word loads do in the canonical layout. One alpha segment: nibbles
// [kNib0, kNib1) of `words` words from kw0, all in group grp (see Segments).
template <int R, DType AT, Layout L, bool kUniform, int kNib0, int kNib1>
LUTGEMM_AVX2 inline void ExactSegmentAvx2(const Prep& p, int64_t r0, int64_t kw0, int64_t words,
                                          int64_t grp, int64_t col, float* facc, int64_t ld) {
  const int64_t n = p.shape.n, q = p.shape.q;
  const float* ft[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) ft[r] = p.float_tables.data() + (r0 + r) * p.num_chunks * kEntries;
  __m256 tot[R][2];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) tot[r][0] = tot[r][1] = _mm256_setzero_ps();
  __m256 u0 = _mm256_setzero_ps(), u1 = _mm256_setzero_ps();  // uniform: plane 0's scales
  if constexpr (kUniform) {
    u0 = LoadAlpha8<AT>(p.op.alpha, AlphaIndex(p.shape, grp, 0, col));
    u1 = LoadAlpha8<AT>(p.op.alpha, AlphaIndex(p.shape, grp, 0, col) + 8);
  }
  for (int64_t i = 0; i < q; ++i) {
    __m256 acc[R][2];
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int64_t w = 0; w < words; ++w) {
      __m256i v0, v1;
      if constexpr (L == Layout::kCanonical) {
        const uint32_t* src = p.op.bits + ((kw0 + w) * q + i) * n + col;
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
      const __m256 factor = _mm256_set1_ps(UniformPlaneFactor(p.shape, i));
      al0 = _mm256_mul_ps(u0, factor);
      al1 = _mm256_mul_ps(u1, factor);
    } else {
      const int64_t ai = AlphaIndex(p.shape, grp, i, col);
      al0 = LoadAlpha8<AT>(p.op.alpha, ai);
      al1 = LoadAlpha8<AT>(p.op.alpha, ai + 8);
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

// The offset terms of the groups starting in scale block sb (OffsetGroups) for the kVec * 8
// columns from col: facc[r] += offset[grp, cols] * sum(x[r] over grp), 8 offsets widened per
// load (as alpha), so 16-bit offsets cost what float32 ones do. The offset rows are one more
// stream per group, prefetched like the alpha rows on the first pass over the weight.
template <int R, DType AT, int kVec>
LUTGEMM_AVX2 inline void AddOffsetsAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t col,
                                        float* facc, int64_t ld) {
  int64_t g0, g1;
  OffsetGroups(p, sb, &g0, &g1);
  const int64_t n = p.shape.n;
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kBytes = AT == DType::kF32 ? 4 : 2;
  for (int64_t grp = g0; grp < g1; ++grp) {
    const int64_t oi = OffsetIndex(p.shape, grp, col);
    if (prefetch) PrefetchAhead(static_cast<const char*>(p.op.offset) + oi * kBytes, kBytes);
    __m256 off[kVec];
    #pragma GCC unroll 4
    for (int v = 0; v < kVec; ++v) off[v] = LoadAlpha8<AT>(p.op.offset, oi + 8 * v);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 gs = _mm256_set1_ps(p.group_sums[(r0 + r) * p.num_groups + grp]);
      float* f = facc + r * ld;
      #pragma GCC unroll 4
      for (int v = 0; v < kVec; ++v)
        _mm256_storeu_ps(f + 8 * v,
                         _mm256_add_ps(_mm256_loadu_ps(f + 8 * v), _mm256_mul_ps(off[v], gs)));
    }
  }
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
  const int64_t n = p.shape.n, q = p.shape.q;
  const int8_t* qt[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) qt[r] = p.int8_tables.data() + (r0 + r) * p.num_chunks * kEntries;
  const __m256i by_byte = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                           0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi8(1);
  // Only on the first pass over the weight (later row blocks find it in L2), within the row.
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kAlphaBytes = AT == DType::kF32 ? 4 : 2;
  auto prefetch_alpha = [&](int64_t plane) {
    const char* a =
        static_cast<const char*>(p.op.alpha) + AlphaIndex(p.shape, grp, plane, col) * kAlphaBytes;
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
  // Uniform weights whose shifted plane sums fit int16, 127 * lookups * (2^q - 1) <= 32767 (q <= 3
  // for g >= 128, q <= 4 for g = 64, 5 for g = 32, 6 for g = 16), weigh plane i's lookups by 2^i
  // in vpmaddubsw itself (its unsigned byte multiplier; a pair is at most 2 * 128 * 127 < 2^15),
  // so all planes accumulate into one int16 sum, widened once: T-MAC's combination of planes by
  // shifts. Every partial sum is bounded by the same sum of |terms|: exact, and equal to the
  // int32 combination below.
  const int64_t lookups = 2 * (kJ1 - kJ0) * words;  // per plane and column
  const bool shifted16 = kUniform && 127 * lookups * ((int64_t{1} << q) - 1) <= 32767;
  __m256i acc[R][2];
  for (int64_t i = 0; i < q; ++i) {
    if (!shifted16 || i == 0) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    }
    const __m256i weight = shifted16 ? _mm256_set1_epi8(static_cast<char>(1 << i)) : ones;
    if (!kUniform && prefetch) prefetch_alpha(i);
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t* row = p.op.bits + ((kw0 + w) * q + i) * n;
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
          a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(weight, _mm256_unpacklo_epi8(l, h)));
          a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(weight, _mm256_unpackhi_epi8(l, h)));
        }
        acc[r][0] = a0;
        acc[r][1] = a1;
      }
    }
    if constexpr (kUniform) {
      if (shifted16) continue;
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
      const int64_t ai = AlphaIndex(p.shape, grp, i, col);
      __m256 al[4];
      #pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) al[v] = LoadAlpha8<AT>(p.op.alpha, ai + 8 * v);
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
    if (shifted16) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) WidenSums<L>(acc[r], itot[r]);
    }
    const int64_t ai = AlphaIndex(p.shape, grp, 0, col);
    __m256 al[4];
    #pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) al[v] = LoadAlpha8<AT>(p.op.alpha, ai + 8 * v);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) tot[r][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(itot[r][v]), al[v]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 sc = _mm256_set1_ps(p.table_scales[(r0 + r) * p.num_blocks + sb]);
    float* f = facc + r * ld;
    #pragma GCC unroll 8
    for (int v = 0; v < 4; ++v)
      _mm256_storeu_ps(f + 8 * v, _mm256_fmadd_ps(tot[r][v], sc, _mm256_loadu_ps(f + 8 * v)));
  }
}

template <int R, DType AT, Layout L, bool kHalf, bool kUniform>
LUTGEMM_AVX2 void ExactAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                            int64_t ld) {
  const int64_t kw0 = sb * p.words_per_block;
  if (p.op.offset != nullptr) AddOffsetsAvx2<R, AT, 2>(p, r0, sb, col, facc, ld);
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    ExactSegmentAvx2<R, AT, L, kUniform, 0, 4>(p, r0, kw0, 1, SegmentGroup(p, sb, 0), col, facc,
                                               ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      ExactSegmentAvx2<R, AT, L, kUniform, 4, 8>(p, r0, kw0, 1, SegmentGroup(p, sb, 1), col, facc,
                                                 ld);
  } else {
    ExactSegmentAvx2<R, AT, L, kUniform, 0, kChunksPerWord>(p, r0, kw0, p.words_per_block,
                                                            SegmentGroup(p, sb, 0), col, facc, ld);
  }
}

template <int R, DType AT, Layout L, bool kHalf, bool kUniform>
LUTGEMM_AVX2 void FastAvx2(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                           int64_t ld) {
  const int64_t kw0 = sb * p.words_per_block;
  if (p.op.offset != nullptr) AddOffsetsAvx2<R, AT, 4>(p, r0, sb, col, facc, ld);
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    FastSegmentAvx2<R, AT, L, kUniform, 0, 2>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 0), col,
                                              facc, ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      FastSegmentAvx2<R, AT, L, kUniform, 2, 4>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 1), col,
                                                facc, ld);
  } else {
    FastSegmentAvx2<R, AT, L, kUniform, 0, kBytesPerWord>(p, r0, sb, kw0, p.words_per_block,
                                                          SegmentGroup(p, sb, 0), col, facc, ld);
  }
}

// Vector kernels are specialised per layout, alpha dtype, half-word groups (g = 16) and uniform
// scales. Vector blocks of the fast kernel are whole kCpu blocks (columns < N32); exact-mode
// blocks of 16 may lie in the canonical tail (LoadBytes8 handles it); the single-column tails
// are the generic kernels, which read words through LoadWord. The AVX2 kernel table of one
// specialisation (ForSpecialisation's `make`):
struct Avx2Kernels {
  bool fast;
  template <DType AT, Layout L, bool kHalf, bool kUniform>
  LutKernels For() const {
    LutKernels kernels =
        fast ? LutKernels{32, 4, LUTGEMM_ROWS(FastAvx2, , AT, L, kHalf, kUniform), {}}
             : LutKernels{16, 4, LUTGEMM_ROWS(ExactAvx2, , AT, L, kHalf, kUniform), {}};
    const LutKernels generic = LutKernelsGeneric(fast);
    for (int r = 0; r < kMaxRows; ++r) kernels.tail[r] = generic.vec[r];
    return kernels;
  }
};

}  // namespace

LutKernels LutKernelsAvx2(bool fast, const Prep& p) {
  const LutKernels kernels = ForSpecialisation(p, Avx2Kernels{fast});
  if (fast && Avx512Lookups()) return LutKernelsAvx512Fast(p, kernels);
  return kernels;
}

}  // namespace lutgemm::cpu
