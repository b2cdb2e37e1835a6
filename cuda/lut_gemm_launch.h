// Host launch glue for the LUT-GEMM CUDA kernels: launch planning (grid, split-K) and the
// dispatch from run-time (q, M) to template instantiations. Included by lut_gemm_cuda.cu (nvcc)
// and by the CPU emulation driver tests/cuda_emu/emu_driver.cc, where LUTGEMM_LAUNCH runs the
// grid on fibers instead of `<<<...>>>`.
#ifndef LUTGEMM_CUDA_LUT_GEMM_LAUNCH_H_
#define LUTGEMM_CUDA_LUT_GEMM_LAUNCH_H_

#include <algorithm>
#include <cstdint>

#include "lut_gemm_kernel.cuh"

#if !defined(LUTGEMM_LAUNCH)
#define LUTGEMM_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

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

template <int QMAX>
inline void LaunchLutRows(const LutGemmArgs& a, const LutPlan& p, cudaStream_t stream) {
  const dim3 grid(p.col_blocks, p.splits, p.row_blocks), block(kThreads);
  switch (p.rows_per_block) {
    case 1:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 1>), grid, block, stream, a);
      break;
    case 2:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 2>), grid, block, stream, a);
      break;
    case 4:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 4>), grid, block, stream, a);
      break;
    default:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 8>), grid, block, stream, a);
      break;
  }
}

// Launches the LUT kernel (and the split-K reduction when p.splits > 1; a.partial must then
// hold p.splits * M * N floats). a.words_per_split is taken from the plan.
inline void LaunchLutGemm(LutGemmArgs a, const LutPlan& p, cudaStream_t stream) {
  a.words_per_split = p.words_per_split;
  switch (a.q) {
    case 1: LaunchLutRows<1>(a, p, stream); break;
    case 2: LaunchLutRows<2>(a, p, stream); break;
    case 3: LaunchLutRows<3>(a, p, stream); break;
    case 4: LaunchLutRows<4>(a, p, stream); break;
    default: LaunchLutRows<kMaxBits>(a, p, stream); break;
  }
  if (p.splits > 1) {
    const int64_t count = static_cast<int64_t>(a.m) * a.n;
    const dim3 grid(static_cast<unsigned>((count + kReduceThreads - 1) / kReduceThreads));
    LUTGEMM_LAUNCH(LutGemmReduceKernel, grid, dim3(kReduceThreads), stream, a.partial, a.y,
                   count, p.splits, a.x_type);
  }
}

inline void LaunchDequant(const DequantArgs& a, cudaStream_t stream) {
  const dim3 grid((a.n + kDequantThreads - 1) / kDequantThreads, a.num_words);
  LUTGEMM_LAUNCH(DequantKernel, grid, dim3(kDequantThreads), stream, a);
}

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_LAUNCH_H_
