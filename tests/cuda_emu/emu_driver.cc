// C ABI over the CUDA kernels run under the CPU emulation (tests/cuda_emu/cuda_emu.h), for
// tests/test_cuda_emulation.py (ctypes). Compiles the unchanged sources cuda/lut_gemm_kernel.cuh
// (device code), cuda/lut_gemm_launch.h (launch glue) and cuda/lut_gemm_handler.h (the FFI
// handler's validation) with g++.
#include "cuda_emu.h"
// clang-format off: the emulation header must come first
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "lut_gemm_handler.h"
#include "lut_gemm_kernel.cuh"
#include "lut_gemm_launch.h"

using namespace lutgemm::cuda;

namespace {

void Copy(const std::string& msg, char* out, int cap) {
  if (cap <= 0) return;
  std::strncpy(out, msg.c_str(), cap - 1);
  out[cap - 1] = '\0';
}

XLA_FFI_Buffer MakeBuffer(int dtype, int rank, int64_t* dims, void* data) {
  XLA_FFI_Buffer b{};
  b.struct_size = sizeof(XLA_FFI_Buffer);
  b.extension_start = nullptr;
  b.dtype = static_cast<XLA_FFI_DataType>(dtype);
  b.data = data;
  b.rank = rank;
  b.dims = dims;
  return b;
}

}  // namespace

extern "C" {

// Runs the LUT kernel (through the handler's validation and the real launch plan) for
// x [m, k] -> y [m, n]; alpha is [G, q, N], or [G, 1, N] when `uniform`. The split-K workspace
// holds `splits` slices when splits >= 2, none when splits == 1, and SplitsFor(num_sms) slices
// (what the lowering asks for) when splits == 0.
// Returns 0, or -1 with a message, or -2 when a barrier was divergent.
// *splits_used receives the plan's number of K slices.
int emu_lut_gemm(const void* x, int x_dtype, const uint32_t* bits, const void* alpha,
                 int a_dtype, const void* offset, void* y, int64_t m, int64_t k, int64_t n,
                 int64_t q, int64_t g, int uniform, int splits, int num_sms, int* splits_used,
                 char* msg, int msg_cap) {
  const lutgemm::BcqShape shape{k, n, q, g, offset != nullptr, uniform != 0};
  const int64_t groups = shape.num_groups();
  if (splits == 0) splits = SplitsFor(m, n, shape.num_words(), num_sms);
  // The workspace is poisoned so that an unwritten partial shows up as NaN.
  std::vector<float> workspace(splits >= 2 ? static_cast<size_t>(splits) * m * n : 0,
                               std::numeric_limits<float>::quiet_NaN());
  int64_t xd[2] = {m, k}, bd[3] = {shape.num_words(), q, n};
  int64_t ad[3] = {groups, shape.alpha_planes(), n}, od[2] = {offset ? groups : 0, n}, yd[2] = {m, n};
  int64_t wd[1] = {static_cast<int64_t>(workspace.size())};
  XLA_FFI_Buffer xb = MakeBuffer(x_dtype, 2, xd, const_cast<void*>(x));
  XLA_FFI_Buffer bb = MakeBuffer(XLA_FFI_DataType_U32, 3, bd, const_cast<uint32_t*>(bits));
  XLA_FFI_Buffer ab = MakeBuffer(a_dtype, 3, ad, const_cast<void*>(alpha));
  XLA_FFI_Buffer ob = MakeBuffer(a_dtype, 2, od, const_cast<void*>(offset));
  XLA_FFI_Buffer yb = MakeBuffer(x_dtype, 2, yd, y);
  XLA_FFI_Buffer wb = MakeBuffer(XLA_FFI_DataType_F32, 1, wd, workspace.data());
  LutGemmArgs args;
  LutPlan plan;
  xla::ffi::Error err = PrepareLutGemm(
      xla::ffi::AnyBuffer(&xb), xla::ffi::AnyBuffer(&bb), xla::ffi::AnyBuffer(&ab),
      xla::ffi::AnyBuffer(&ob), xla::ffi::AnyBuffer(&yb), xla::ffi::AnyBuffer(&wb), k, n, q, g,
      &args, &plan);
  if (err.failure()) {
    Copy(err.message(), msg, msg_cap);
    return -1;
  }
  *splits_used = plan.splits;
  if (m == 0) return 0;
  const long divergent_before = cuda_emu::Runner().divergent;
  LaunchLutGemm(args, plan, nullptr);
  return cuda_emu::Runner().divergent != divergent_before ? -2 : 0;
}

// Dequantizes to w [k, n] of w_dtype (alpha as for emu_lut_gemm).
int emu_dequant(const uint32_t* bits, const void* alpha, int a_dtype, const void* offset, void* w,
                int w_dtype, int64_t k, int64_t n, int64_t q, int64_t g, int uniform, char* msg,
                int msg_cap) {
  const lutgemm::BcqShape shape{k, n, q, g, offset != nullptr, uniform != 0};
  const int64_t groups = shape.num_groups();
  int64_t bd[3] = {shape.num_words(), q, n}, ad[3] = {groups, shape.alpha_planes(), n};
  int64_t od[2] = {offset ? groups : 0, n};
  int64_t wd[2] = {k, n};
  XLA_FFI_Buffer bb = MakeBuffer(XLA_FFI_DataType_U32, 3, bd, const_cast<uint32_t*>(bits));
  XLA_FFI_Buffer ab = MakeBuffer(a_dtype, 3, ad, const_cast<void*>(alpha));
  XLA_FFI_Buffer ob = MakeBuffer(a_dtype, 2, od, const_cast<void*>(offset));
  XLA_FFI_Buffer wb = MakeBuffer(w_dtype, 2, wd, w);
  DequantArgs args;
  xla::ffi::Error err =
      PrepareDequant(xla::ffi::AnyBuffer(&bb), xla::ffi::AnyBuffer(&ab), xla::ffi::AnyBuffer(&ob),
                     xla::ffi::AnyBuffer(&wb), k, n, q, g, &args);
  if (err.failure()) {
    Copy(err.message(), msg, msg_cap);
    return -1;
  }
  const long divergent_before = cuda_emu::Runner().divergent;
  LaunchDequant(args, nullptr);
  return cuda_emu::Runner().divergent != divergent_before ? -2 : 0;
}

// The handlers' validation alone, on arbitrary (possibly wrong) operand descriptions; no data.
// ranks[6] / dims (concatenated) / dtypes[6] describe x, bits, alpha, offset, y, workspace
// (lut_gemm, which == 0) or -, bits, alpha, offset, w, - (dequant, which == 1).
// Returns 0 when valid, else the XLA FFI error code, with the message.
int emu_validate(int which, const int* dtypes, const int* ranks, const int64_t* dims,
                 int64_t in_features, int64_t out_features, int64_t num_bits, int64_t group_size,
                 char* msg, int msg_cap) {
  static float dummy[1];
  int64_t d[6][8];
  XLA_FFI_Buffer b[6];
  const int64_t* p = dims;
  for (int i = 0; i < 6; ++i) {
    for (int r = 0; r < ranks[i] && r < 8; ++r) d[i][r] = *p++;
    b[i] = MakeBuffer(dtypes[i], ranks[i], d[i], dummy);
  }
  xla::ffi::Error err = xla::ffi::Error::Success();
  if (which == 0) {
    LutGemmArgs args;
    LutPlan plan;
    err = PrepareLutGemm(xla::ffi::AnyBuffer(&b[0]), xla::ffi::AnyBuffer(&b[1]),
                         xla::ffi::AnyBuffer(&b[2]), xla::ffi::AnyBuffer(&b[3]),
                         xla::ffi::AnyBuffer(&b[4]), xla::ffi::AnyBuffer(&b[5]), in_features,
                         out_features, num_bits, group_size, &args, &plan);
  } else {
    DequantArgs args;
    err = PrepareDequant(xla::ffi::AnyBuffer(&b[1]), xla::ffi::AnyBuffer(&b[2]),
                         xla::ffi::AnyBuffer(&b[3]), xla::ffi::AnyBuffer(&b[4]), in_features,
                         out_features, num_bits, group_size, &args);
  }
  if (err.success()) return 0;
  Copy(err.message(), msg, msg_cap);
  return static_cast<int>(*err.errc());
}

// Launch plan for a shape (no launch): out[6] = {rows_per_block, col_blocks, row_blocks,
// SplitsFor(num_sms) (the workspace slices the lowering asks for), the plan's splits,
// words_per_split}.
void emu_plan(int64_t m, int64_t n, int64_t num_words, int num_sms, int* out) {
  const int want = SplitsFor(m, n, num_words, num_sms);
  const LutPlan p = PlanLut(m, n, num_words, want);
  out[0] = p.rows_per_block;
  out[1] = p.col_blocks;
  out[2] = p.row_blocks;
  out[3] = want;
  out[4] = p.splits;
  out[5] = p.words_per_split;
}

#if defined(LUTGEMM_EMU_COVERAGE)
void emu_gcov_dump() { __gcov_dump(); }
#endif

}  // extern "C"
