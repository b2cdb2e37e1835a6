// Reference-structured LUT-GEMM kernel for the CPU.
//
// For each row of x: pad to Kp with zeros and build one table per 8 activations (mu = 8),
// T[p] = sum_j (2*bit_j(p) - 1) * x[j], with one add per entry. Then every byte of a sign word
// is a table index: one lookup replaces 8 multiply-adds. Per (group, plane, column) the lookups
// are summed in float32, scaled by alpha, and the offset term is offset * (sum of x over the
// group) = offset * sum of the group's T[255] entries.
#include "lut_gemm_cpu.h"

#include <vector>

namespace lutgemm::cpu {
namespace {

// tables: [Kp/8][256]. Entry 0 is -sum(x); setting bit j adds 2*x[j].
void BuildTables(const float* x_padded, int64_t num_tables, float* tables) {
  for (int64_t c = 0; c < num_tables; ++c) {
    const float* xc = x_padded + c * kTableBits;
    float* t = tables + c * kTableSize;
    float neg_sum = 0.f;
    for (int j = 0; j < kTableBits; ++j) neg_sum -= xc[j];
    t[0] = neg_sum;
    for (int j = 0; j < kTableBits; ++j) {
      const int half = 1 << j;
      const float twice = 2.f * xc[j];
      for (int p = 0; p < half; ++p) t[half + p] = t[p] + twice;
    }
  }
}

}  // namespace

void LutGemm(const BcqShape& s, int64_t m, const float* x, const uint32_t* bits,
             const float* alpha, const float* offset, float* y) {
  const int64_t kp = s.padded_k(), n = s.n, q = s.q;
  const int64_t num_tables = kp / kTableBits, wpg = s.words_per_group();
  std::vector<float> x_padded(kp, 0.f), tables(num_tables * kTableSize);
  std::vector<float> group_sum(s.num_groups());
  for (int64_t row = 0; row < m; ++row) {
    for (int64_t k = 0; k < s.k; ++k) x_padded[k] = x[row * s.k + k];
    BuildTables(x_padded.data(), num_tables, tables.data());
    for (int64_t grp = 0; grp < s.num_groups(); ++grp) {
      float sum = 0.f;
      for (int64_t c = grp * wpg * kBytesPerWord; c < (grp + 1) * wpg * kBytesPerWord; ++c)
        sum += tables[c * kTableSize + kTableSize - 1];
      group_sum[grp] = sum;
    }
    for (int64_t col = 0; col < n; ++col) {
      float acc = 0.f;
      for (int64_t grp = 0; grp < s.num_groups(); ++grp) {
        for (int64_t i = 0; i < q; ++i) {
          float plane = 0.f;
          for (int64_t w = grp * wpg; w < (grp + 1) * wpg; ++w) {
            const uint32_t word = bits[BitsIndex(s, w, i, col)];
            const float* t = tables.data() + w * kBytesPerWord * kTableSize;
            for (int b = 0; b < kBytesPerWord; ++b)
              plane += t[b * kTableSize + ((word >> (8 * b)) & 0xffu)];
          }
          acc += alpha[AlphaIndex(s, grp, i, col)] * plane;
        }
        if (offset != nullptr) acc += offset[OffsetIndex(s, grp, col)] * group_sum[grp];
      }
      y[row * n + col] = acc;
    }
  }
}

}  // namespace lutgemm::cpu
