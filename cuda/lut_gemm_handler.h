// Host-side preparation of the CUDA FFI calls: operand validation (lutgemm::CheckOperands and its
// helpers) and kernel arguments. No CUDA runtime calls here, so the CPU tests build this file
// with the emulation header and check every InvalidArgument path without a GPU.
#ifndef LUTGEMM_CUDA_LUT_GEMM_HANDLER_H_
#define LUTGEMM_CUDA_LUT_GEMM_HANDLER_H_

#include <cstdint>
#include <limits>
#include <string>

#include "lut_gemm_plan.h"
#include "lutgemm/ffi_checks.h"
#include "xla/ffi/api/ffi.h"

namespace lutgemm::cuda {

namespace ffi = xla::ffi;

inline int ToElemType(ffi::DataType t) {
  return t == ffi::DataType::F32 ? kF32 : t == ffi::DataType::BF16 ? kBF16 : kF16;
}

constexpr int64_t kMaxGridYZ = 65535;
constexpr int64_t kMaxInt = std::numeric_limits<int>::max();

// Validates a LUT-GEMM call and fills the kernel arguments and launch plan. The split-K
// workspace is a float32 vector of S * M * N elements (S >= 2) or empty (no split-K); the plan
// uses at most S slices. m == 0 is valid (nothing to launch: plan->col_blocks == 0).
inline ffi::Error PrepareLutGemm(ffi::AnyBuffer x, ffi::AnyBuffer bits, ffi::AnyBuffer alpha,
                                 ffi::AnyBuffer offset, ffi::AnyBuffer y, ffi::AnyBuffer workspace,
                                 int64_t in_features, int64_t out_features, int64_t num_bits,
                                 int64_t group_size, LutGemmArgs* args, LutPlan* plan) {
  GemmProblem p;
  if (ffi::Error err = CheckOperands(x, bits, alpha, offset, y, in_features, out_features,
                                     num_bits, group_size, &p);
      err.failure())
    return err;
  const BcqShape& s = p.shape;
  // The kernels index rows, columns and K in int; the grid's y/z extents are limited.
  if (s.padded_k() > kMaxInt || s.n > kMaxInt || p.m > kMaxInt / 2)
    return ffi::Error::InvalidArgument("lut_gemm: shape too large for the CUDA kernels");
  const int64_t mn = p.m * s.n;
  auto wd = workspace.dimensions();
  const int64_t ws = wd.size() == 1 ? wd[0] : -1;
  if (workspace.element_type() != ffi::DataType::F32 || ws < 0 ||
      (ws != 0 && (mn == 0 || ws % mn != 0 || ws / mn < 2)))
    return ShapeError("workspace", wd,
                      "a float32 vector of S * M * N elements, S >= 2 (M * N = " +
                          std::to_string(mn) + "), or [0]");
  *args = LutGemmArgs{};
  args->x = x.untyped_data();
  args->bits = static_cast<const uint32_t*>(bits.untyped_data());
  args->alpha = alpha.untyped_data();
  args->offset = s.has_offset ? offset.untyped_data() : nullptr;
  args->y = y.untyped_data();
  args->partial = ws != 0 ? static_cast<float*>(workspace.untyped_data()) : nullptr;
  args->m = static_cast<int>(p.m);
  args->k = static_cast<int>(s.k);
  args->n = static_cast<int>(s.n);
  args->q = static_cast<int>(s.q);
  args->num_words = static_cast<int>(s.num_words());
  args->group_size = static_cast<int>(s.group_size);
  args->words_per_group = static_cast<int>(s.words_per_group());
  args->uniform = s.uniform ? 1 : 0;
  args->x_type = ToElemType(x.element_type());
  args->a_type = ToElemType(alpha.element_type());
  if (p.m == 0) {
    *plan = LutPlan{1, 0, 0, 1, 1};
    return ffi::Error::Success();
  }
  *plan = PlanLut(p.m, s.n, s.num_words(), ws != 0 ? ws / mn : 1);
  if (plan->row_blocks > kMaxGridYZ)
    return ffi::Error::InvalidArgument(
        "lut_gemm: too many rows of x for the CUDA LUT kernel (M > 524280); the lowering uses "
        "the dequantize + dot path for M > 8");
  return ffi::Error::Success();
}

// Validates a dequantization call: bits, alpha, offset as for lut_gemm, result w [K, N] float.
inline ffi::Error PrepareDequant(ffi::AnyBuffer bits, ffi::AnyBuffer alpha, ffi::AnyBuffer offset,
                                 ffi::AnyBuffer w, int64_t in_features, int64_t out_features,
                                 int64_t num_bits, int64_t group_size, DequantArgs* args) {
  BcqShape s{};
  if (ffi::Error err = CheckWeight("lut_gemm dequantize", bits, alpha, offset, in_features,
                                   out_features, num_bits, group_size, &s);
      err.failure())
    return err;
  if (!IsFloatType(w.element_type()))
    return ffi::Error::InvalidArgument(
        "lut_gemm dequantize: output must be float32, bfloat16 or float16");
  const int64_t n = s.n;
  auto wd = w.dimensions();
  if (wd.size() != 2 || wd[0] != s.k || wd[1] != n)
    return ShapeError("output", wd, "[K, N] = " + DimsToString({s.k, n}));
  if (s.num_words() > kMaxGridYZ || n > kMaxInt)
    return ffi::Error::InvalidArgument("lut_gemm dequantize: K too large (K/32 > 65535)");
  *args = DequantArgs{static_cast<const uint32_t*>(bits.untyped_data()),
                      alpha.untyped_data(),
                      s.has_offset ? offset.untyped_data() : nullptr,
                      w.untyped_data(),
                      static_cast<int>(s.k),
                      static_cast<int>(n),
                      static_cast<int>(s.q),
                      static_cast<int>(s.num_words()),
                      static_cast<int>(s.group_size),
                      static_cast<int>(s.words_per_group()),
                      s.uniform ? 1 : 0,
                      ToElemType(alpha.element_type()),
                      ToElemType(w.element_type())};
  return ffi::Error::Success();
}

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_HANDLER_H_
