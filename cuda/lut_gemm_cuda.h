// Host entry points of the CUDA kernels (defined in lut_gemm_cuda.cu, compiled by nvcc).
#ifndef LUTGEMM_CUDA_LUT_GEMM_CUDA_H_
#define LUTGEMM_CUDA_LUT_GEMM_CUDA_H_

#include <cuda_runtime.h>

#include "lut_gemm_plan.h"

namespace lutgemm::cuda {

// Launches the LUT kernel (+ split-K reduction); returns cudaGetLastError() after the launches.
cudaError_t RunLutGemm(const LutGemmArgs& args, const LutPlan& plan, cudaStream_t stream);
// Launches the dequantization kernel; returns cudaGetLastError().
cudaError_t RunDequant(const DequantArgs& args, cudaStream_t stream);

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_CUDA_H_
