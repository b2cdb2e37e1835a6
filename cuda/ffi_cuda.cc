// XLA FFI handlers for the CUDA LUT-GEMM kernels and the nanobind module that exports them.
//
//   lutgemm_cuda          x, bits, alpha, offset -> y, workspace   (lookup-table path, any M)
//   lutgemm_cuda_dequant  bits, alpha, offset -> w [K, N]          (large-M path: + XLA's dot)
//
// The split-K workspace (float32 [S * M * N], or [0] for no split) is a second result that XLA
// allocates; the lowering chooses S statically from the shapes (lutgemm_jax/ops.py), so the
// handler's launches depend on nothing but the operand shapes. The handlers validate every
// operand before launching (lut_gemm_handler.h, on top of lutgemm::CheckOperands), query no
// device state, allocate nothing and do not synchronize, so they are registered as
// command-buffer (CUDA graph) compatible. Launch errors come back as ffi::Error.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "lut_gemm_cuda.h"
#include "lut_gemm_handler.h"
#include "lutgemm/ffi_checks.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace lutgemm::cuda {
namespace {

ffi::Error LaunchError(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("lut_gemm: ") + what + " launch failed: " +
                              cudaGetErrorString(err));
}

ffi::Error LutGemmCudaImpl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer bits,
                           ffi::AnyBuffer alpha, ffi::AnyBuffer offset,
                           ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> workspace,
                           int64_t in_features, int64_t out_features, int64_t num_bits,
                           int64_t group_size) {
  LutGemmArgs args;
  LutPlan plan;
  if (ffi::Error err = PrepareLutGemm(x, bits, alpha, offset, *y, *workspace, in_features,
                                      out_features, num_bits, group_size, &args, &plan);
      err.failure())
    return err;
  if (plan.col_blocks == 0) return ffi::Error::Success();  // M == 0
  if (cudaError_t err = RunLutGemm(args, plan, stream); err != cudaSuccess)
    return LaunchError("LUT kernel", err);
  return ffi::Error::Success();
}

ffi::Error DequantCudaImpl(cudaStream_t stream, ffi::AnyBuffer bits, ffi::AnyBuffer alpha,
                           ffi::AnyBuffer offset, ffi::Result<ffi::AnyBuffer> w,
                           int64_t in_features, int64_t out_features, int64_t num_bits,
                           int64_t group_size) {
  DequantArgs args;
  if (ffi::Error err = PrepareDequant(bits, alpha, offset, *w, in_features, out_features,
                                      num_bits, group_size, &args);
      err.failure())
    return err;
  if (cudaError_t err = RunDequant(args, stream); err != cudaSuccess)
    return LaunchError("dequantization kernel", err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LutGemmCuda, LutGemmCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // bits
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // offset
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Ret<ffi::AnyBuffer>()  // split-K workspace (f32)
                                  .Attr<int64_t>("in_features")
                                  .Attr<int64_t>("out_features")
                                  .Attr<int64_t>("num_bits")
                                  .Attr<int64_t>("group_size"),
                              {ffi::Traits::kCmdBufferCompatible});

XLA_FFI_DEFINE_HANDLER_SYMBOL(DequantCuda, DequantCudaImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // bits
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // offset
                                  .Ret<ffi::AnyBuffer>()  // w [K, N]
                                  .Attr<int64_t>("in_features")
                                  .Attr<int64_t>("out_features")
                                  .Attr<int64_t>("num_bits")
                                  .Attr<int64_t>("group_size"),
                              {ffi::Traits::kCmdBufferCompatible});

}  // namespace lutgemm::cuda

NB_MODULE(_lutgemm_cuda, m) {
  m.doc() = "LUT-GEMM CUDA kernels as XLA FFI handlers.";
  m.def("registrations", []() {
    nb::dict d;
    d["lutgemm_cuda"] = nb::capsule(reinterpret_cast<void*>(lutgemm::cuda::LutGemmCuda));
    d["lutgemm_cuda_dequant"] = nb::capsule(reinterpret_cast<void*>(lutgemm::cuda::DequantCuda));
    return d;
  });
}
