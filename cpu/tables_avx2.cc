// Table construction with AVX2 + FMA (the twin of tables_generic.cc; see tables.h for the
// layout). One chunk's 16 float entries are two 8-lane vectors built from broadcasts of its 4
// activations and constant sign vectors. Fast mode keeps a scale block's float tables (up to 32
// chunks = 64 vectors) on the stack, takes the block maximum from them, then converts two chunks
// per 32-byte store. Same operation order as the generic twin, so the tables are bitwise equal.
// Like the twin it runs per row of x inside the task that owns the K range (driver.cc).
#include <immintrin.h>

#include <cmath>
#include <limits>

#include "tables.h"

namespace lutgemm::cpu {
namespace {

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

}  // namespace

// BuildTablesGeneric on AVX2, giving the same table values. Fast mode: a scale block's float
// tables are built into a stack buffer first; the block's max |entry| equals
// max_c sum_j |x[4c+j]| (the entry whose signs match x is evaluated in the same order as that
// sum, and rounding is monotonic).
LUTGEMM_AVX2 void BuildTablesAvx2(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0,
                                  int64_t b1) {
  const int64_t cpb = p.block_size / kMu;  // chunks per scale block: 8..32, even
  const int64_t c0 = b0 * cpb;    // chunk c's activations: xb + (c - c0) * kMu
  if (!fast) {
    float* ft = p.float_tables.data() + row * p.num_chunks * kEntries;
    for (int64_t c = c0; c < b1 * cpb; ++c) {
      __m256 lo, hi;
      ChunkTableAvx2(xb + (c - c0) * kMu, &lo, &hi);
      _mm256_storeu_ps(ft + c * kEntries, lo);
      _mm256_storeu_ps(ft + c * kEntries + 8, hi);
    }
    return;
  }
  int8_t* qt = p.int8_tables.data() + row * p.num_chunks * kEntries;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i max_finite = _mm256_set1_epi32(0x7f7fffff);
  const __m256i interleave = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  __m256 t[2 * 32];
  for (int64_t b = b0; b < b1; ++b) {
    const float* xblock = xb + (b - b0) * p.block_size;
    __m256 vmax = _mm256_setzero_ps();
    __m256i nonfinite = _mm256_setzero_si256();
    for (int64_t c = 0; c < cpb; ++c) {
      ChunkTableAvx2(xblock + c * kMu, &t[2 * c], &t[2 * c + 1]);
      // Entries 8-15 are the negated entries 7-0 (all signs flipped), so |entries 0-7| suffice.
      vmax = _mm256_max_ps(vmax, _mm256_and_ps(t[2 * c], abs_mask));
    }
    for (int64_t i = 0; i < p.block_size; i += 8) {
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
    p.table_scales[row * p.num_blocks + b] = scale;
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

}  // namespace lutgemm::cpu
