// XLA FFI handlers for the CUDA LUT-GEMM kernels and the nanobind module that exports them.
//
//   lutgemm_cuda          x, bits, alpha, offset -> y        (the lookup-table path, any M)
//   lutgemm_cuda_dequant  bits, alpha, offset -> w [K, N]    (large-M path: + XLA's dot)
//
// The handlers validate every operand before launching (lut_gemm_handler.h, on top of
// lutgemm::CheckOperands), do no allocation other than XLA's own scratch allocator (split-K
// partials) and no synchronization, and always launch the same kernels for the same shapes, so
// they are registered as command-buffer (CUDA graph) compatible. Launch errors come back as
// ffi::Error.
#include <cuda_runtime.h>

#include <atomic>
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

// Streaming multiprocessors of the current device, cached per device (an attribute query, not a
// stream operation: safe during CUDA-graph capture).
int SmCount() {
  static std::atomic<int> cache[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return 132;
  int sms = cache[device].load(std::memory_order_relaxed);
  if (sms == 0) {
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        sms <= 0)
      sms = 132;
    cache[device].store(sms, std::memory_order_relaxed);
  }
  return sms;
}

ffi::Error LaunchError(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("lut_gemm: ") + what + " launch failed: " +
                              cudaGetErrorString(err));
}

ffi::Error LutGemmCudaImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                           ffi::AnyBuffer bits, ffi::AnyBuffer alpha, ffi::AnyBuffer offset,
                           ffi::Result<ffi::AnyBuffer> y, int64_t in_features,
                           int64_t out_features, int64_t num_bits, int64_t group_size) {
  LutGemmArgs args;
  LutPlan plan;
  if (ffi::Error err = PrepareLutGemm(x, bits, alpha, offset, *y, in_features, out_features,
                                      num_bits, group_size, SmCount(), &args, &plan);
      err.failure())
    return err;
  if (plan.col_blocks == 0) return ffi::Error::Success();  // M == 0
  if (plan.splits > 1) {
    const size_t bytes = sizeof(float) * static_cast<size_t>(plan.splits) * args.m * args.n;
    std::optional<void*> mem = scratch.Allocate(bytes, 256);
    if (mem.has_value()) {
      args.partial = static_cast<float*>(*mem);
    } else {
      plan = WithSplits(plan, args.num_words, 1);  // still correct, only slower
    }
  }
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
                                  .Ctx<ffi::ScratchAllocator>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // bits
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // offset
                                  .Ret<ffi::AnyBuffer>()  // y
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
