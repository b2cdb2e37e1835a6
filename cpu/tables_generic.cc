// Table construction, portable C++ (the twin of tables_avx2.cc; see tables.h for the layout).
// One row of x at a time over a range of scale blocks: the caller (driver.cc) runs it per row,
// inside the task that owns the K range, so no two threads write the same tables. Fast mode
// first finds the block's largest chunk sum of |x|, then rounds every entry against it.
#include <algorithm>
#include <cmath>
#include <limits>

#include "tables.h"

namespace lutgemm::cpu {
namespace {

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

}  // namespace

void BuildTablesGeneric(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0, int64_t b1) {
  const int64_t cpb = p.block_size / kMu;  // chunks per scale block
  const int64_t c0 = b0 * cpb;    // chunk c's activations: xb + (c - c0) * kMu
  if (!fast) {
    float* ft = p.float_tables.data() + row * p.num_chunks * kEntries;
    for (int64_t c = c0; c < b1 * cpb; ++c) ChunkTable(xb + (c - c0) * kMu, ft + c * kEntries);
    return;
  }
  int8_t* qt = p.int8_tables.data() + row * p.num_chunks * kEntries;
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
    p.table_scales[row * p.num_blocks + b] = scale;
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

}  // namespace lutgemm::cpu
