// Fast-mode lookup kernel with AVX-512 VBMI (a variant of lut_avx2.cc's fast kernel, kCpu layout
// only; see lut.h for what a call computes). Chosen at run time where the CPU has AVX-512 BW +
// VBMI (cpu_features.cc); the AVX2 kernels stay the baseline and serve every other case.
//
// Why: on AVX2 the 16-entry int8 tables force one vpshufb per chunk and an unpack to pair the
// two chunks of a byte before vpmaddubsw sums them (about 10 instructions per row of x and byte
// of 32 columns). vpermb looks up a 64-entry table: four consecutive chunks' tables (64
// contiguous bytes of a row's int8 tables) in one register. Byte j of the 32 columns' sign words
// is widened to 16-bit lanes whose low byte indexes chunk 2j's table (low nibble) and high byte
// chunk 2j+1's (high nibble, + 16), so one vpermb yields both lookups of all 32 columns already
// paired, and vpmaddubsw sums each pair into the column's int16 lane: three instructions per row
// and byte, and the index work is shared by the rows. Accumulators hold 32 columns in natural
// order, so no reordering is needed when widening.
// Sums, bounds and the uniform-weight combination are those of FastSegmentAvx2 (lut_avx2.cc);
// every output is computed by the same operations in the same order as there (per plane, the
// exact int16/int32 sums, then the same float32 products and sums), so results equal the AVX2
// kernel's bit for bit.
#include <immintrin.h>

#include <cstdint>

#include "lut.h"

#define LUTGEMM_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx2,fma,f16c")))

namespace lutgemm::cpu {
namespace {

// 16 consecutive scales (alpha or offset) from element i, widened to float32.
template <DType AT>
LUTGEMM_AVX512 inline __m512 LoadAlpha16(const void* base, int64_t i) {
  if constexpr (AT == DType::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(base) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(base) + i));
    if constexpr (AT == DType::kBF16)
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    else
      return _mm512_cvtph_ps(h);
  }
}

// Software prefetch as in the AVX2 kernel (lut_avx2.cc explains the streams and the distance).
constexpr int64_t kPrefetchBlocks = 4;

inline void PrefetchAhead(const void* at, int64_t bytes) {
  __builtin_prefetch(
      reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(at) + kPrefetchBlocks * 32 * bytes),
      0, 3);
}

// The 32 int16 column sums of acc widened to int32: out[0] columns 0-15, out[1] 16-31.
LUTGEMM_AVX512 inline void Widen(__m512i acc, __m512i out[2]) {
  out[0] = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(acc));
  out[1] = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(acc, 1));
}

// One alpha segment of one scale block for 32 columns: bytes [kJ0, kJ1) (even bounds) of `words`
// words from kw0, all in group grp. See FastSegmentAvx2 for the sums and their bounds.
template <int R, DType AT, bool kUniform, int kJ0, int kJ1>
LUTGEMM_AVX512 inline void FastSegmentAvx512(const Prep& p, int64_t r0, int64_t sb, int64_t kw0,
                                             int64_t words, int64_t grp, int64_t col, float* facc,
                                             int64_t ld) {
  static_assert(kJ0 % 2 == 0 && kJ1 % 2 == 0, "a table register holds the chunks of two bytes");
  const int64_t n = p.shape.n, q = p.shape.q;
  const int8_t* qt[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) qt[r] = p.int8_tables.data() + (r0 + r) * p.num_chunks * kEntries;
  const __m512i low4 = _mm512_set1_epi16(0x0f0f);
  // Table offsets of the index bytes: byte j's low nibble selects chunk 2j (entry + 32 * (j % 2)),
  // its high nibble chunk 2j + 1 (+ 16).
  const __m512i tag_even = _mm512_set1_epi16(0x1000), tag_odd = _mm512_set1_epi16(0x3020);
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kAlphaBytes = AT == DType::kF32 ? 4 : 2;
  auto prefetch_alpha = [&](int64_t plane) {
    const char* a =
        static_cast<const char*>(p.op.alpha) + AlphaIndex(p.shape, grp, plane, col) * kAlphaBytes;
    PrefetchAhead(a, kAlphaBytes);
    if constexpr (kAlphaBytes == 4) PrefetchAhead(a + 64, kAlphaBytes);
  };
  __m512 tot[R][2];
  __m512i itot[R][2];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 2; ++v) {
      tot[r][v] = _mm512_setzero_ps();
      itot[r][v] = _mm512_setzero_si512();
    }
  if (kUniform && prefetch) prefetch_alpha(0);
  const int64_t lookups = 2 * (kJ1 - kJ0) * words;
  const bool shifted16 = kUniform && 127 * lookups * ((int64_t{1} << q) - 1) <= 32767;
  __m512i acc[R];
  for (int64_t i = 0; i < q; ++i) {
    if (!shifted16 || i == 0) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    }
    const __m512i weight = _mm512_set1_epi8(static_cast<char>(shifted16 ? 1 << i : 1));
    if (!kUniform && prefetch) prefetch_alpha(i);
    for (int64_t w = 0; w < words; ++w) {
      const uint32_t* row = p.op.bits + ((kw0 + w) * q + i) * n;
      if (prefetch) {
        PrefetchAhead(row + col, sizeof(uint32_t));
        PrefetchAhead(row + col + 16, sizeof(uint32_t));
      }
      const uint8_t* block = reinterpret_cast<const uint8_t*>(row) + col * kBytesPerWord;
      __m512i idx[4];
      #pragma GCC unroll 4
      for (int j = kJ0; j < kJ1; ++j) {
        const __m512i v = _mm512_cvtepu8_epi16(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + j * kLayoutBlock)));
        // Low byte: the low nibble; high byte: the high nibble (v << 4 moves it there).
        const __m512i nibbles = _mm512_and_si512(_mm512_or_si512(v, _mm512_slli_epi16(v, 4)), low4);
        idx[j] = _mm512_or_si512(nibbles, j % 2 ? tag_odd : tag_even);
      }
      const int64_t c0 = (kw0 + w) * kChunksPerWord;
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m512i a = acc[r];
        #pragma GCC unroll 2
        for (int j = kJ0; j < kJ1; j += 2) {
          const __m512i tab = _mm512_loadu_si512(qt[r] + (c0 + 2 * j) * kEntries);
          a = _mm512_add_epi16(
              a, _mm512_maddubs_epi16(weight, _mm512_permutexvar_epi8(idx[j], tab)));
          a = _mm512_add_epi16(
              a, _mm512_maddubs_epi16(weight, _mm512_permutexvar_epi8(idx[j + 1], tab)));
        }
        acc[r] = a;
      }
    }
    if constexpr (kUniform) {
      if (shifted16) continue;
      const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(i));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m512i sums[2];
        Widen(acc[r], sums);
        for (int v = 0; v < 2; ++v)
          itot[r][v] = _mm512_add_epi32(itot[r][v], _mm512_sll_epi32(sums[v], shift));
      }
    } else {
      const int64_t ai = AlphaIndex(p.shape, grp, i, col);
      const __m512 al[2] = {LoadAlpha16<AT>(p.op.alpha, ai), LoadAlpha16<AT>(p.op.alpha, ai + 16)};
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m512i sums[2];
        Widen(acc[r], sums);
        for (int v = 0; v < 2; ++v)
          tot[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[v]), al[v], tot[r][v]);
      }
    }
  }
  if constexpr (kUniform) {
    if (shifted16) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) Widen(acc[r], itot[r]);
    }
    const int64_t ai = AlphaIndex(p.shape, grp, 0, col);
    const __m512 al[2] = {LoadAlpha16<AT>(p.op.alpha, ai), LoadAlpha16<AT>(p.op.alpha, ai + 16)};
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < 2; ++v) tot[r][v] = _mm512_mul_ps(_mm512_cvtepi32_ps(itot[r][v]), al[v]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 sc = _mm512_set1_ps(p.table_scales[(r0 + r) * p.num_blocks + sb]);
    float* f = facc + r * ld;
    for (int v = 0; v < 2; ++v)
      _mm512_storeu_ps(f + 16 * v, _mm512_fmadd_ps(tot[r][v], sc, _mm512_loadu_ps(f + 16 * v)));
  }
}

// The offset terms of the groups starting in scale block sb, as AddOffsetsAvx2 (same products
// and sums per column).
template <int R, DType AT>
LUTGEMM_AVX512 inline void AddOffsetsAvx512(const Prep& p, int64_t r0, int64_t sb, int64_t col,
                                            float* facc, int64_t ld) {
  int64_t g0, g1;
  OffsetGroups(p, sb, &g0, &g1);
  const int64_t n = p.shape.n;
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kBytes = AT == DType::kF32 ? 4 : 2;
  for (int64_t grp = g0; grp < g1; ++grp) {
    const int64_t oi = OffsetIndex(p.shape, grp, col);
    if (prefetch) PrefetchAhead(static_cast<const char*>(p.op.offset) + oi * kBytes, kBytes);
    const __m512 off[2] = {LoadAlpha16<AT>(p.op.offset, oi), LoadAlpha16<AT>(p.op.offset, oi + 16)};
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 gs = _mm512_set1_ps(p.group_sums[(r0 + r) * p.num_groups + grp]);
      float* f = facc + r * ld;
      for (int v = 0; v < 2; ++v)
        _mm512_storeu_ps(f + 16 * v,
                         _mm512_add_ps(_mm512_loadu_ps(f + 16 * v), _mm512_mul_ps(off[v], gs)));
    }
  }
}

template <int R, DType AT, bool kHalf, bool kUniform>
LUTGEMM_AVX512 void FastAvx512(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                               int64_t ld) {
  const int64_t kw0 = sb * p.words_per_block;
  if (p.op.offset != nullptr) AddOffsetsAvx512<R, AT>(p, r0, sb, col, facc, ld);
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    FastSegmentAvx512<R, AT, kUniform, 0, 2>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 0), col, facc,
                                             ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      FastSegmentAvx512<R, AT, kUniform, 2, 4>(p, r0, sb, kw0, 1, SegmentGroup(p, sb, 1), col,
                                               facc, ld);
  } else {
    FastSegmentAvx512<R, AT, kUniform, 0, kBytesPerWord>(p, r0, sb, kw0, p.words_per_block,
                                                         SegmentGroup(p, sb, 0), col, facc, ld);
  }
}

template <DType AT, bool kHalf, bool kUniform>
LutKernels Avx512KernelsFor(const LutKernels& avx2) {
  LutKernels kernels{32, kMaxRows, LUTGEMM_ROWS8(FastAvx512, , AT, kHalf, kUniform), {}};
  for (int r = 0; r < kMaxRows; ++r) kernels.tail[r] = avx2.tail[r];
  return kernels;
}

template <DType AT>
LutKernels Avx512KernelsForDType(bool half, bool uniform, const LutKernels& avx2) {
  if (half)
    return uniform ? Avx512KernelsFor<AT, true, true>(avx2)
                   : Avx512KernelsFor<AT, true, false>(avx2);
  return uniform ? Avx512KernelsFor<AT, false, true>(avx2)
                 : Avx512KernelsFor<AT, false, false>(avx2);
}

}  // namespace

LutKernels LutKernelsAvx512Fast(const Prep& p, const LutKernels& avx2) {
  const bool half = HalfWordGroups(p), uniform = p.shape.uniform;
  switch (p.op.alpha_type) {
    case DType::kF32:
      return Avx512KernelsForDType<DType::kF32>(half, uniform, avx2);
    case DType::kBF16:
      return Avx512KernelsForDType<DType::kBF16>(half, uniform, avx2);
    default:
      return Avx512KernelsForDType<DType::kF16>(half, uniform, avx2);
  }
}

}  // namespace lutgemm::cpu
