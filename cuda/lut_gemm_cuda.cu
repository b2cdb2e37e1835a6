// The CUDA kernels' host entry points: instantiates the kernels of lut_gemm_kernel.cuh through
// the launch glue of lut_gemm_launch.h and reports launch errors. Compiled by nvcc.
#include <cuda_runtime.h>

#include "lut_gemm_cuda.h"
#include "lut_gemm_launch.h"

namespace lutgemm::cuda {

cudaError_t RunLutGemm(const LutGemmArgs& args, const LutPlan& plan, cudaStream_t stream) {
  LaunchLutGemm(args, plan, stream);
  return cudaGetLastError();
}

cudaError_t RunDequant(const DequantArgs& args, cudaStream_t stream) {
  LaunchDequant(args, stream);
  return cudaGetLastError();
}

}  // namespace lutgemm::cuda
