// Host launch glue for the LUT-GEMM CUDA kernels: the dispatch from run-time (q, M, g) to template
// instantiations and the launches, following a LutPlan (lut_gemm_plan.h). Included by lut_gemm_cuda.cu (nvcc)
// and by the CPU emulation driver tests/cuda_emu/emu_driver.cc, where LUTGEMM_LAUNCH runs the
// grid on fibers instead of `<<<...>>>`.
#ifndef LUTGEMM_CUDA_LUT_GEMM_LAUNCH_H_
#define LUTGEMM_CUDA_LUT_GEMM_LAUNCH_H_

#include <cstdint>

#include "lut_gemm_kernel.cuh"
#include "lut_gemm_plan.h"

#if !defined(LUTGEMM_LAUNCH)
#define LUTGEMM_LAUNCH(kernel, grid, block, stream, ...) \
  kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

namespace lutgemm::cuda {

template <int QMAX, bool G16>
inline void LaunchLutRows(const LutGemmArgs& a, const LutPlan& p, cudaStream_t stream) {
  const dim3 grid(p.col_blocks, p.splits, p.row_blocks), block(kThreads);
  switch (p.rows_per_block) {
    case 1:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 1, G16>), grid, block, stream, a);
      break;
    case 2:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 2, G16>), grid, block, stream, a);
      break;
    case 4:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 4, G16>), grid, block, stream, a);
      break;
    default:
      LUTGEMM_LAUNCH((LutGemmKernel<QMAX, 8, G16>), grid, block, stream, a);
      break;
  }
}

template <int QMAX>
inline void LaunchLutGroups(const LutGemmArgs& a, const LutPlan& p, cudaStream_t stream) {
  if (a.group_size == kHalfWordGroup) {
    LaunchLutRows<QMAX, true>(a, p, stream);
  } else {
    LaunchLutRows<QMAX, false>(a, p, stream);
  }
}

// Launches the LUT kernel (and the split-K reduction when p.splits > 1; a.partial must then
// hold p.splits * M * N floats). a.words_per_split is taken from the plan.
inline void LaunchLutGemm(LutGemmArgs a, const LutPlan& p, cudaStream_t stream) {
  a.words_per_split = p.words_per_split;
  switch (a.q) {
    case 1: LaunchLutGroups<1>(a, p, stream); break;
    case 2: LaunchLutGroups<2>(a, p, stream); break;
    case 3: LaunchLutGroups<3>(a, p, stream); break;
    case 4: LaunchLutGroups<4>(a, p, stream); break;
    default: LaunchLutGroups<kMaxBits>(a, p, stream); break;
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
