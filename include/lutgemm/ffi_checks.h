// Operand validation shared by every LUT-GEMM FFI handler (CPU and CUDA).
//
// Operands: x [..., K] (f32/bf16/f16), bits u32 [Kp/32, q, N], alpha [G, q, N] or uniform
// [G, 1, N] (f32/bf16/f16),
// offset [G, N] or [0, N] (alpha's dtype; zero rows = no offset); result y [..., N] in x's dtype.
// Attributes: in_features (K), out_features (N), num_bits (q), group_size (g).
// Everything is checked against the attributes before a kernel runs; a mismatch is returned as
// ffi::Error::InvalidArgument, never a crash or an out-of-bounds access.
#ifndef LUTGEMM_FFI_CHECKS_H_
#define LUTGEMM_FFI_CHECKS_H_

#include <cstdint>
#include <initializer_list>
#include <string>

#include "lutgemm/bcq_format.h"
#include "lutgemm/dtypes.h"
#include "xla/ffi/api/ffi.h"

namespace lutgemm {

namespace ffi = xla::ffi;

inline bool IsFloatType(ffi::DataType t) {
  return t == ffi::DataType::F32 || t == ffi::DataType::BF16 || t == ffi::DataType::F16;
}

// The kernels' element type of a float operand (IsFloatType checked first).
inline DType ToDType(ffi::DataType t) {
  return t == ffi::DataType::F32 ? kF32 : t == ffi::DataType::BF16 ? kBF16 : kF16;
}

inline std::string DimsToString(ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}
inline std::string DimsToString(std::initializer_list<int64_t> dims) {
  return DimsToString(ffi::Span<const int64_t>(dims.begin(), dims.size()));
}

inline ffi::Error ShapeError(const char* name, ffi::Span<const int64_t> got,
                             const std::string& want) {
  return ffi::Error::InvalidArgument(std::string("lut_gemm: ") + name + " has shape " +
                                     DimsToString(got) + ", expected " + want);
}

// The validated geometry of one call: rows of x (M, the product of x's leading dims) and shape.
struct GemmProblem {
  BcqShape shape;
  int64_t m;
};

// Checks the attributes and the packed weight (bits, alpha, offset) against each other and
// fills *s, including has_offset. `op` prefixes the messages.
inline ffi::Error CheckWeight(const char* op, ffi::AnyBuffer bits, ffi::AnyBuffer alpha,
                              ffi::AnyBuffer offset, int64_t in_features, int64_t out_features,
                              int64_t num_bits, int64_t group_size, BcqShape* s) {
  *s = BcqShape{in_features, out_features, num_bits, group_size, false};
  const std::string prefix = std::string(op) + ": ";
  if (const char* msg = CheckShape(*s))
    return ffi::Error::InvalidArgument(prefix + "bad attributes: " + msg);
  if (bits.element_type() != ffi::DataType::U32)
    return ffi::Error::InvalidArgument(prefix + "bits must be uint32");
  if (!IsFloatType(alpha.element_type()))
    return ffi::Error::InvalidArgument(prefix + "alpha must be float32, bfloat16 or float16");
  if (offset.element_type() != alpha.element_type())
    return ffi::Error::InvalidArgument(prefix + "offset must have alpha's dtype");

  const int64_t n = s->n, q = s->q, g = s->num_groups();
  auto bd = bits.dimensions();
  if (bd.size() != 3 || bd[0] != s->num_words() || bd[1] != q || bd[2] != n)
    return ShapeError("bits", bd, "[Kp/32, q, N] = " + DimsToString({s->num_words(), q, n}));
  auto ad = alpha.dimensions();
  if (ad.size() != 3 || ad[0] != g || (ad[1] != q && ad[1] != 1) || ad[2] != n)
    return ShapeError("alpha", ad,
                      "[G, q, N] = " + DimsToString({g, q, n}) + " or uniform [G, 1, N]");
  s->uniform = ad[1] == 1;
  auto od = offset.dimensions();
  if (od.size() != 2 || (od[0] != g && od[0] != 0) || od[1] != n)
    return ShapeError("offset", od, "[G, N] = " + DimsToString({g, n}) + " or [0, N]");
  s->has_offset = od[0] == g;
  return ffi::Error::Success();
}

inline ffi::Error CheckOperands(ffi::AnyBuffer x, ffi::AnyBuffer bits, ffi::AnyBuffer alpha,
                                ffi::AnyBuffer offset, ffi::AnyBuffer y, int64_t in_features,
                                int64_t out_features, int64_t num_bits, int64_t group_size,
                                GemmProblem* problem) {
  BcqShape s{in_features, out_features, num_bits, group_size, false};
  if (const char* msg = CheckShape(s))
    return ffi::Error::InvalidArgument(std::string("lut_gemm: bad attributes: ") + msg);
  if (!IsFloatType(x.element_type()))
    return ffi::Error::InvalidArgument("lut_gemm: x must be float32, bfloat16 or float16");
  if (y.element_type() != x.element_type())
    return ffi::Error::InvalidArgument("lut_gemm: output must have x's dtype");
  auto xd = x.dimensions();
  if (xd.size() < 1 || xd.back() != s.k)
    return ShapeError("x", xd, "[..., " + std::to_string(s.k) + "]");
  int64_t m = 1;
  for (size_t i = 0; i + 1 < xd.size(); ++i) m *= xd[i];
  if (ffi::Error err = CheckWeight("lut_gemm", bits, alpha, offset, in_features, out_features,
                                   num_bits, group_size, &s);
      err.failure())
    return err;

  auto yd = y.dimensions();
  bool y_ok = yd.size() == xd.size() && yd.back() == s.n;
  for (size_t i = 0; y_ok && i + 1 < xd.size(); ++i) y_ok = yd[i] == xd[i];
  if (!y_ok) return ShapeError("output", yd, "[..., " + std::to_string(s.n) + "] matching x");

  problem->shape = s;
  problem->m = m;
  return ffi::Error::Success();
}

}  // namespace lutgemm

#endif  // LUTGEMM_FFI_CHECKS_H_
