// Launch planning for the CUDA LUT-GEMM kernels (host code, no CUDA headers): grid shape and
// split-K. Used by the FFI handler and by the CPU emulation tests.
#ifndef LUTGEMM_CUDA_LUT_GEMM_PLAN_H_
#define LUTGEMM_CUDA_LUT_GEMM_PLAN_H_

#include <algorithm>
#include <cstdint>

#include "lut_gemm_types.h"

namespace lutgemm::cuda {

// Rows of x per LUT block: M rounded up to a power of two, at most 8.
inline int RowsPerBlock(int64_t m) { return m <= 1 ? 1 : m <= 2 ? 2 : m <= 4 ? 4 : 8; }

struct LutPlan {
  int rows_per_block;   // MT
  int col_blocks;       // grid.x
  int row_blocks;       // grid.z
  int splits;           // grid.y (K slices)
  int words_per_split;
};

// Sets splits (rounding the slice length up to whole K tiles); splits = 1 disables split-K.
inline LutPlan WithSplits(LutPlan p, int64_t num_words, int splits) {
  const int tile = kTileRowWords / p.rows_per_block;
  int64_t per = (num_words + splits - 1) / splits;
  per = (per + tile - 1) / tile * tile;
  p.words_per_split = static_cast<int>(per);
  p.splits = static_cast<int>((num_words + per - 1) / per);
  return p;
}

// Chooses the split-K so that the grid has about 2 blocks per SM, each slice at least
// kMinSplitWords words (256 k) long and a whole number of K tiles.
constexpr int kMinSplitWords = 8;
inline LutPlan PlanLut(int64_t m, int64_t n, int64_t num_words, int num_sms) {
  LutPlan p;
  p.rows_per_block = RowsPerBlock(m);
  p.col_blocks = static_cast<int>((n + kColsPerBlock - 1) / kColsPerBlock);
  p.row_blocks = static_cast<int>((m + p.rows_per_block - 1) / p.rows_per_block);
  const int64_t xz = static_cast<int64_t>(p.col_blocks) * p.row_blocks;
  const int64_t want = std::max<int64_t>(1, (2 * static_cast<int64_t>(num_sms) + xz - 1) / xz);
  const int64_t max_splits = std::max<int64_t>(1, num_words / kMinSplitWords);
  return WithSplits(p, num_words, static_cast<int>(std::min(want, max_splits)));
}

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_PLAN_H_
