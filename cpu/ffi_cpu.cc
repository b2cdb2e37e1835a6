// XLA FFI handler for the CPU LUT-GEMM kernel and the nanobind module that exports it.
#include <cstdint>
#include <vector>

#include "lut_gemm_cpu.h"
#include "lutgemm/dtypes.h"
#include "lutgemm/ffi_checks.h"
#include "nanobind/nanobind.h"
#include "xla/ffi/api/ffi.h"

namespace nb = nanobind;
namespace ffi = xla::ffi;

namespace lutgemm::cpu {
namespace {

// Widens a float32/bfloat16/float16 buffer to float32.
std::vector<float> ToFloat(ffi::AnyBuffer buf) {
  const size_t count = buf.element_count();
  std::vector<float> out(count);
  switch (buf.element_type()) {
    case ffi::DataType::F32: {
      const float* p = static_cast<const float*>(buf.untyped_data());
      out.assign(p, p + count);
      break;
    }
    case ffi::DataType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(buf.untyped_data());
      for (size_t i = 0; i < count; ++i) out[i] = Bf16ToFloat(p[i]);
      break;
    }
    default: {
      const uint16_t* p = static_cast<const uint16_t*>(buf.untyped_data());
      for (size_t i = 0; i < count; ++i) out[i] = F16ToFloat(p[i]);
      break;
    }
  }
  return out;
}

void FromFloat(const std::vector<float>& src, ffi::Result<ffi::AnyBuffer> dst) {
  switch (dst->element_type()) {
    case ffi::DataType::F32: {
      float* p = static_cast<float*>(dst->untyped_data());
      for (size_t i = 0; i < src.size(); ++i) p[i] = src[i];
      break;
    }
    case ffi::DataType::BF16: {
      uint16_t* p = static_cast<uint16_t*>(dst->untyped_data());
      for (size_t i = 0; i < src.size(); ++i) p[i] = FloatToBf16(src[i]);
      break;
    }
    default: {
      uint16_t* p = static_cast<uint16_t*>(dst->untyped_data());
      for (size_t i = 0; i < src.size(); ++i) p[i] = FloatToF16(src[i]);
      break;
    }
  }
}

ffi::Error LutGemmCpuImpl(ffi::AnyBuffer x, ffi::AnyBuffer bits, ffi::AnyBuffer alpha,
                          ffi::AnyBuffer offset, ffi::Result<ffi::AnyBuffer> y,
                          int64_t in_features, int64_t out_features, int64_t num_bits,
                          int64_t group_size) {
  GemmProblem p;
  if (ffi::Error err = CheckOperands(x, bits, alpha, offset, *y, in_features, out_features,
                                     num_bits, group_size, &p);
      err.failure())
    return err;
  if (p.m == 0) return ffi::Error::Success();
  const std::vector<float> xf = ToFloat(x), af = ToFloat(alpha), of = ToFloat(offset);
  std::vector<float> yf(p.m * p.shape.n);
  LutGemm(p.shape, p.m, xf.data(), static_cast<const uint32_t*>(bits.untyped_data()), af.data(),
          p.shape.has_offset ? of.data() : nullptr, yf.data());
  FromFloat(yf, y);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LutGemmCpu, LutGemmCpuImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // bits
                                  .Arg<ffi::AnyBuffer>()  // alpha
                                  .Arg<ffi::AnyBuffer>()  // offset
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Attr<int64_t>("in_features")
                                  .Attr<int64_t>("out_features")
                                  .Attr<int64_t>("num_bits")
                                  .Attr<int64_t>("group_size"));

}  // namespace lutgemm::cpu

NB_MODULE(_lutgemm_cpu, m) {
  m.doc() = "LUT-GEMM CPU kernels as XLA FFI handlers.";
  m.def("registrations", []() {
    nb::dict d;
    d["lutgemm_cpu"] = nb::capsule(reinterpret_cast<void*>(lutgemm::cpu::LutGemmCpu));
    return d;
  });
}
