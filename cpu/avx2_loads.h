// AVX2 loads of 8 columns' alpha and sign words, shared by the lookup (lut_avx2.cc) and the
// dequantize (dense_avx2.cc) kernels.
#ifndef LUTGEMM_CPU_AVX2_LOADS_H_
#define LUTGEMM_CPU_AVX2_LOADS_H_

#include <immintrin.h>

#include <cstdint>

#include "kernel_common.h"

namespace lutgemm::cpu {

// 8 consecutive scales (alpha or offset) from element i, widened to float32.
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
  const uint32_t* row = p.op.bits + (kw * p.shape.q + i) * p.shape.n;
  if (p.op.layout == Layout::kCanonical || col >= p.shape.n - p.shape.n % kLayoutBlock)
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + col));
  const uint8_t* b =
      reinterpret_cast<const uint8_t*>(row) + SignByteOffset(p.op.layout, p.shape.n, col, 0);
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
  const uint32_t* row = p.op.bits + (kw * p.shape.q + i) * p.shape.n;
  if (col >= p.shape.n - p.shape.n % kLayoutBlock)
    return _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + col)),
                             8 * j);
  const uint8_t* b =
      reinterpret_cast<const uint8_t*>(row) + SignByteOffset(p.op.layout, p.shape.n, col, j);
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b)));
}

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_AVX2_LOADS_H_
