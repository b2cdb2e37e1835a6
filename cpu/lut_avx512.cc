// Fast-mode lookup kernel with AVX-512 VBMI + VNNI (a variant of lut_avx2.cc's fast kernel, both
// sign layouts; see lut.h for what a call computes). Chosen at run time where the CPU has
// AVX-512 BW + VBMI + VNNI (cpu_features.cc: Ice Lake and later, Zen 4 and later); the AVX2
// kernels stay the baseline and serve every other case.
//
// Tiling: as the AVX2 fast kernel, one call covers one scale block of K for 32 columns and up to
// 8 rows of x (the sums of 8 rows fit the 32 registers).
// Per sign word and plane:
// * vpermb looks up a 64-entry table: the int8 tables of four consecutive chunks (64 contiguous
//   bytes of a row's tables), i.e. half a sign word. Each column's four nibbles of a half word
//   are placed in the four bytes of its dword lane (WordIndices: vpmultishiftqb spreads nibbles
//   to bytes, vpternlogd masks them and adds the chunk's table offset), so one vpermb yields the
//   four lookups of 16 columns, already grouped by column;
// * vpdpbusd adds each dword's four lookups (times 1, or 2^i for uniform weights) into the
//   column's int32 sum.
// Two instructions per 64 lookups and row, against about five on AVX2 (vpshufb per chunk, an
// unpack to pair chunks, vpmaddubsw, an int16 add, and the widening to int32 per plane), and the
// index work is shared by the rows.
// Sums and bounds are those of FastSegmentAvx2 (lut_avx2.cc): the same exact integer plane
// sums, then the same float32 products and sums in the same order, so results equal the AVX2
// kernel's bit for bit (tests/test_lowering_cpu.py checks it).
#include <immintrin.h>

#include <cstdint>

#include "lut.h"

#define LUTGEMM_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni,avx2,fma,f16c")))

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

// Index vectors of one sign word for the 32 columns of a block: idx[h][0] (chunks 0-3 of the
// word) and idx[h][1] (chunks 4-7) for columns 16h .. 16h+15, column c in dword c, and byte t of
// that dword = nibble t of the half word + 16 t (its chunk's offset in the 64-byte table register).
// vpmultishiftqb copies each nibble to its own byte (with the next nibble's bits above it) and one
// vpternlogd keeps the low four bits and sets the offset. The canonical layout holds each
// column's word in a dword already; the kCpu layout holds byte j of the 32 columns together, so a
// vpermb first gathers each column's bytes into a dword (per pair of bytes: columns 2k, 2k + 1
// in the low half of qword k, columns 16 + 2k, 17 + 2k in its high half).
// (spread & 0x0f) | offsets: the table index of each byte's low nibble.
LUTGEMM_AVX512 inline __m512i TableIndex(__m512i spread) {
  const __m512i low4 = _mm512_set1_epi8(0x0f), offsets = _mm512_set1_epi32(0x30201000);
  return _mm512_ternarylogic_epi32(spread, low4, offsets, 0xEA);
}

template <Layout L, bool kLow, bool kHigh>
LUTGEMM_AVX512 inline void WordIndices(const uint32_t* words, __m512i idx[2][2]) {
  if constexpr (L == Layout::kCanonical) {
    // Bit offsets of the nibbles in a qword of two words: 0-3 of both, then 4-7 of both.
    const __m512i spread_low = _mm512_set1_epi64(0x2C2824200C080400);
    const __m512i spread_high = _mm512_set1_epi64(0x3C3834301C181410);
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m512i w = _mm512_loadu_si512(words + 16 * h);
      if constexpr (kLow) idx[h][0] = TableIndex(_mm512_multishift_epi64_epi8(spread_low, w));
      if constexpr (kHigh) idx[h][1] = TableIndex(_mm512_multishift_epi64_epi8(spread_high, w));
    }
  } else {
    // Source byte of each gathered byte (bytes 0-31: byte j of the 32 columns, 32-63: byte j+1).
    alignas(64) static constexpr uint8_t kGather[64] = {
        0,  32, 1,  33, 16, 48, 17, 49, 2,  34, 3,  35, 18, 50, 19, 51,
        4,  36, 5,  37, 20, 52, 21, 53, 6,  38, 7,  39, 22, 54, 23, 55,
        8,  40, 9,  41, 24, 56, 25, 57, 10, 42, 11, 43, 26, 58, 27, 59,
        12, 44, 13, 45, 28, 60, 29, 61, 14, 46, 15, 47, 30, 62, 31, 63};
    const __m512i gather = _mm512_load_si512(kGather);
    // Bit offsets of the nibbles of the low (columns 2k, 2k+1) and high half of a qword.
    const __m512i spread[2] = {_mm512_set1_epi64(0x1C1814100C080400),
                               _mm512_set1_epi64(0x3C3834302C282420)};
    const uint8_t* block = reinterpret_cast<const uint8_t*>(words);
    #pragma GCC unroll 2
    for (int part = 0; part < 2; ++part) {  // bytes 0-1 (chunks 0-3), bytes 2-3 (chunks 4-7)
      if (part == 0 ? !kLow : !kHigh) continue;
      const __m512i bytes =
          _mm512_permutexvar_epi8(gather, _mm512_loadu_si512(block + 2 * part * kLayoutBlock));
      #pragma GCC unroll 2
      for (int h = 0; h < 2; ++h)
        idx[h][part] = TableIndex(_mm512_multishift_epi64_epi8(spread[h], bytes));
    }
  }
}

template <int R, int kChains>
LUTGEMM_AVX512 inline void ClearSums(__m512i acc[R][2][kChains]) {
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < 2; ++h)
      for (int c = 0; c < kChains; ++c) acc[r][h][c] = _mm512_setzero_si512();
}

// The int32 column sums of one row and half: its chains added.
template <int kChains>
LUTGEMM_AVX512 inline __m512i ChainSum(const __m512i chains[kChains]) {
  if constexpr (kChains == 2) return _mm512_add_epi32(chains[0], chains[1]);
  return chains[0];
}

// One alpha segment of one scale block for 32 columns: the chunks of half word kLow (nibbles
// 0-3) and/or kHigh (4-7) of the block's words from kw0 (kWords, or p.words_per_block when 0: a
// fixed count lets the compiler unroll the word loop, which the common g % 128 == 0 case needs
// to keep the lookups, not the loop, the limit), all in group grp. Per word and plane,
// vpermb looks up all four chunks of a half word for 16 columns at once and vpdpbusd adds the
// four lookups of each column (times 1, or 2^i for uniform weights) into its int32 sum, so the
// plane sums need no widening and uniform planes accumulate into one sum. The integer sums are
// those of FastSegmentAvx2 (exact, no overflow: at most 8 * 4 lookups of |entry| <= 127 per word
// and plane, times 2^i <= 2^7), followed by the same float32 products and sums.
// For up to 4 rows the two half words accumulate in separate registers, so that enough
// independent vpdpbusd chains (latency 5) are in flight at batch 1.
template <int R, DType AT, Layout L, bool kUniform, bool kLow, bool kHigh, int kWords>
LUTGEMM_AVX512 inline void FastSegmentAvx512(const Prep& p, int64_t r0, int64_t sb, int64_t kw0,
                                             int64_t grp, int64_t col, float* facc, int64_t ld) {
  constexpr int kChains = R <= 4 && kLow && kHigh ? 2 : 1;
  const int64_t n = p.shape.n, q = p.shape.q;
  const int words = kWords > 0 ? kWords : static_cast<int>(p.words_per_block);
  const int8_t* qt[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) qt[r] = p.int8_tables.data() + (r0 + r) * p.num_chunks * kEntries;
  const bool prefetch = r0 == 0 && col + 32 * (kPrefetchBlocks + 1) <= n - n % kLayoutBlock;
  constexpr int64_t kAlphaBytes = AT == DType::kF32 ? 4 : 2;
  auto prefetch_alpha = [&](int64_t plane) {
    const char* a =
        static_cast<const char*>(p.op.alpha) + AlphaIndex(p.shape, grp, plane, col) * kAlphaBytes;
    PrefetchAhead(a, kAlphaBytes);
    if constexpr (kAlphaBytes == 4) PrefetchAhead(a + 64, kAlphaBytes);
  };
  __m512 tot[R][2];
  __m512i acc[R][2][kChains];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) tot[r][0] = tot[r][1] = _mm512_setzero_ps();
  ClearSums<R, kChains>(acc);
  if (kUniform && prefetch) prefetch_alpha(0);
  for (int64_t i = 0; i < q; ++i) {
    const __m512i weight = _mm512_set1_epi8(static_cast<char>(kUniform ? 1 << i : 1));
    if (!kUniform && prefetch) prefetch_alpha(i);
    #pragma GCC unroll 4
    for (int w = 0; w < words; ++w) {
      const uint32_t* row = p.op.bits + ((kw0 + w) * q + i) * n;
      if (prefetch) {
        PrefetchAhead(row + col, sizeof(uint32_t));
        PrefetchAhead(row + col + 16, sizeof(uint32_t));
      }
      __m512i idx[2][2];
      WordIndices<L, kLow, kHigh>(row + col, idx);
      const int64_t c0 = (kw0 + w) * kChunksPerWord;
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const int8_t* t = qt[r] + c0 * kEntries;
        const __m512i tab_low = kLow ? _mm512_loadu_si512(t) : _mm512_setzero_si512();
        const __m512i tab_high = kHigh ? _mm512_loadu_si512(t + 4 * kEntries) : tab_low;
        #pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          if constexpr (kLow)
            acc[r][h][0] = _mm512_dpbusd_epi32(acc[r][h][0], weight,
                                               _mm512_permutexvar_epi8(idx[h][0], tab_low));
          if constexpr (kHigh)
            acc[r][h][kChains - 1] = _mm512_dpbusd_epi32(
                acc[r][h][kChains - 1], weight, _mm512_permutexvar_epi8(idx[h][1], tab_high));
        }
      }
    }
    if constexpr (!kUniform) {
      const int64_t ai = AlphaIndex(p.shape, grp, i, col);
      const __m512 al[2] = {LoadAlpha16<AT>(p.op.alpha, ai), LoadAlpha16<AT>(p.op.alpha, ai + 16)};
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r)
        for (int h = 0; h < 2; ++h)
          tot[r][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ChainSum<kChains>(acc[r][h])), al[h], tot[r][h]);
      ClearSums<R, kChains>(acc);
    }
  }
  if constexpr (kUniform) {
    const int64_t ai = AlphaIndex(p.shape, grp, 0, col);
    const __m512 al[2] = {LoadAlpha16<AT>(p.op.alpha, ai), LoadAlpha16<AT>(p.op.alpha, ai + 16)};
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < 2; ++h) tot[r][h] = _mm512_mul_ps(_mm512_cvtepi32_ps(ChainSum<kChains>(acc[r][h])), al[h]);
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m512 sc = _mm512_set1_ps(p.table_scales[(r0 + r) * p.num_blocks + sb]);
    float* f = facc + r * ld;
    for (int h = 0; h < 2; ++h)
      _mm512_storeu_ps(f + 16 * h, _mm512_fmadd_ps(tot[r][h], sc, _mm512_loadu_ps(f + 16 * h)));
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

template <int R, DType AT, Layout L, bool kHalf, bool kUniform>
LUTGEMM_AVX512 void FastAvx512(const Prep& p, int64_t r0, int64_t sb, int64_t col, float* facc,
                               int64_t ld) {
  const int64_t kw0 = sb * p.words_per_block;
  if (p.op.offset != nullptr) AddOffsetsAvx512<R, AT>(p, r0, sb, col, facc, ld);
  if constexpr (kHalf) {  // g = 16: one word per scale block, two groups
    FastSegmentAvx512<R, AT, L, kUniform, true, false, 1>(p, r0, sb, kw0, SegmentGroup(p, sb, 0),
                                                          col, facc, ld);
    if (GroupHasRows(p, SegmentGroup(p, sb, 1)))
      FastSegmentAvx512<R, AT, L, kUniform, false, true, 1>(p, r0, sb, kw0,
                                                            SegmentGroup(p, sb, 1), col, facc, ld);
  } else if (p.words_per_block == 4) {
    FastSegmentAvx512<R, AT, L, kUniform, true, true, 4>(p, r0, sb, kw0, SegmentGroup(p, sb, 0),
                                                         col, facc, ld);
  } else {
    FastSegmentAvx512<R, AT, L, kUniform, true, true, 0>(p, r0, sb, kw0, SegmentGroup(p, sb, 0),
                                                         col, facc, ld);
  }
}

// The AVX-512 kernel table of one specialisation (ForSpecialisation's `make`), with the AVX2
// table's single-column tails.
struct Avx512Kernels {
  const LutKernels& avx2;
  template <DType AT, Layout L, bool kHalf, bool kUniform>
  LutKernels For() const {
    LutKernels kernels{32, kMaxRows, LUTGEMM_ROWS8(FastAvx512, , AT, L, kHalf, kUniform), {}};
    for (int r = 0; r < kMaxRows; ++r) kernels.tail[r] = avx2.tail[r];
    return kernels;
  }
};

}  // namespace

LutKernels LutKernelsAvx512Fast(const Prep& p, const LutKernels& avx2) {
  return ForSpecialisation(p, Avx512Kernels{avx2});
}

}  // namespace lutgemm::cpu
