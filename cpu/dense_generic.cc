// Dense-path kernels, portable C++ (the twins of dense_avx2.cc; see dense.h and dense.cc).
// DequantTile: one weight element at a time, offset + sum_i alpha_i * (+-1) in plane order (the
// order the AVX2 twin keeps, so both give bitwise equal tiles). MicroGeneric: the 6 x 16 block
// as plain loops (the compiler vectorises the inner 16 columns). Each task (dense.cc) runs them
// on its own columns, tile and accumulator.
#include <cstdint>

#include "dense.h"

namespace lutgemm::cpu {
namespace {

// W_hat[k0 .. k0+kc, c0 .. c0+nc] into the micro-panels of wt; columns >= nc are zero.
template <DType AT>
inline void DequantTile(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc, float* wt) {
  const int64_t n = p.shape.n, q = p.shape.q;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const int64_t k = k0 + kk, grp = k / p.shape.group_size, kw = k / kWordBits, t = k % kWordBits;
    for (int64_t c = 0; c < kNB; ++c) {
      float v = 0.f;
      if (c < nc) {
        if (p.op.offset) v = ToF32(p.op.offset, AT, grp * n + c0 + c);
        for (int64_t i = 0; i < q; ++i) {
          const uint32_t word = LoadWord(p, kw, i, c0 + c);
          // alpha_i (uniform: alpha * 2^i, exact) times +-1.
          const float a = ToF32(p.op.alpha, AT, AlphaIndex(p.shape, grp, i, c0 + c)) *
                          UniformPlaneFactor(p.shape, i);
          v += a * static_cast<float>(static_cast<int>((word >> t) & 1u) * 2 - 1);
        }
      }
      wt[TileIndex(kk, c)] = v;
    }
  }
}

template <int MR>
void MicroGeneric(const float* xp, const float* wt, int64_t kc, float* c, int64_t ldc) {
  #pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int64_t k = 0; k < kc; ++k) {
      const float xv = xp[k * kMR + r];
      for (int j = 0; j < kNR; ++j) c[r * ldc + j] += xv * wt[k * kNR + j];
    }
}

}  // namespace

void DequantTileGeneric(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc, float* wt) {
  switch (p.op.alpha_type) {
    case DType::kF32:
      return DequantTile<DType::kF32>(p, k0, kc, c0, nc, wt);
    case DType::kBF16:
      return DequantTile<DType::kBF16>(p, k0, kc, c0, nc, wt);
    default:
      return DequantTile<DType::kF16>(p, k0, kc, c0, nc, wt);
  }
}

DenseKernels DenseKernelsGeneric() {
  return {DequantTileGeneric,
          kMR,
          kNR,
          {MicroGeneric<1>, MicroGeneric<2>, MicroGeneric<3>, MicroGeneric<4>, MicroGeneric<5>,
           MicroGeneric<6>}};
}

}  // namespace lutgemm::cpu
