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
// Slices are whole words, so each starts on a group boundary for every g (g = 16 groups are
// word halves; larger groups may span slices, and each block reloads its first group's scales).
inline LutPlan WithSplits(LutPlan p, int64_t num_words, int splits) {
  const int tile = kTileRowWords / p.rows_per_block;
  int64_t per = (num_words + splits - 1) / splits;
  per = (per + tile - 1) / tile * tile;
  p.words_per_split = static_cast<int>(per);
  p.splits = static_cast<int>((num_words + per - 1) / per);
  return p;
}

// Geometry of the LUT grid without split-K.
inline LutPlan BaseLutPlan(int64_t m, int64_t n) {
  LutPlan p;
  p.rows_per_block = RowsPerBlock(m);
  p.col_blocks = static_cast<int>((n + kColsPerBlock - 1) / kColsPerBlock);
  p.row_blocks = static_cast<int>((m + p.rows_per_block - 1) / p.rows_per_block);
  p.splits = 1;
  p.words_per_split = 0;
  return p;
}

// The number of K slices to provide workspace for: about 2 blocks per SM of a num_sms GPU, each
// slice at least kMinSplitWords words (256 k) long. The CUDA lowering computes the same number
// (lutgemm_jax/ops.py: _cuda_splits, checked against this function by the tests) and sizes the
// split-K workspace with it, so the split is static: it does not depend on the device.
constexpr int kMinSplitWords = 8;
constexpr int kPlanSms = 132;  // H100 SXM
inline int SplitsFor(int64_t m, int64_t n, int64_t num_words, int num_sms = kPlanSms) {
  const LutPlan p = BaseLutPlan(m, n);
  const int64_t xz = static_cast<int64_t>(p.col_blocks) * p.row_blocks;
  if (xz == 0) return 1;  // M == 0: nothing to split
  const int64_t want = std::max<int64_t>(1, (2 * static_cast<int64_t>(num_sms) + xz - 1) / xz);
  const int64_t most = std::max<int64_t>(1, num_words / kMinSplitWords);
  return static_cast<int>(std::min(want, most));
}

// The launch plan for at most max_splits K slices (the workspace's capacity; <= 1: no split-K).
// Slices are whole K tiles, so the plan may use fewer slices than max_splits.
inline LutPlan PlanLut(int64_t m, int64_t n, int64_t num_words, int64_t max_splits) {
  const int64_t cap =
      std::max<int64_t>(1, std::min<int64_t>({max_splits, num_words, int64_t{65535}}));
  return WithSplits(BaseLutPlan(m, n), num_words, static_cast<int>(cap));
}

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_PLAN_H_
