// Lookup kernels (T-MAC's "table lookup" stage): one call computes, for a block of up to 4
// (AVX-512: 8) rows of x, one scale block of K and `width` columns, the sum over that block of
//   sum_i alpha_i[group, col] * sum_{chunks c in the block} T_c[nibble of plane i's sign word]
// (times the block's table scale in fast mode) and adds it to facc[r * ld + (col - col0)], after
// adding the offset terms offset[grp, col] * sum(x[r] over grp) of the groups starting in the
// block (OffsetGroups), each as its own float32 product and sum.
// The driver (driver.cc) walks scale blocks and column blocks and owns facc.
#ifndef LUTGEMM_CPU_LUT_H_
#define LUTGEMM_CPU_LUT_H_

#include <cstdint>
#include <type_traits>

#include "kernel_common.h"

namespace lutgemm::cpu {

// (p, first row r0, scale block sb, first column col, facc of the column block's first column,
// facc's row stride ld).
using BlockFn = void (*)(const Prep&, int64_t, int64_t, int64_t, float*, int64_t);

// The kernels of one call: vec[R - 1] computes `width` columns for R rows; tail[R - 1] one column
// (the last N % width columns); R <= rows, the rows of x per pass over the weight (4, or 8 for
// the AVX-512 kernel, whose 32 registers hold the sums of 8 rows).
struct LutKernels {
  int width;
  int rows;
  BlockFn vec[kMaxRows];
  BlockFn tail[kMaxRows];
};

// The kernel table for R = 1..4 (1..8) rows of one kernel template F (with template arguments
// after R).
#define LUTGEMM_ROWS(F, ...) \
  { F<1 __VA_ARGS__>, F<2 __VA_ARGS__>, F<3 __VA_ARGS__>, F<4 __VA_ARGS__> }
#define LUTGEMM_ROWS8(F, ...)                                                                   \
  {                                                                                             \
    F<1 __VA_ARGS__>, F<2 __VA_ARGS__>, F<3 __VA_ARGS__>, F<4 __VA_ARGS__>, F<5 __VA_ARGS__>, \
        F<6 __VA_ARGS__>, F<7 __VA_ARGS__>, F<8 __VA_ARGS__>                                  \
  }

// The kernel table of p's specialisation: calls make.template For<AT, L, kHalf, kUniform>() with
// p's alpha dtype, sign layout, half-word groups (g = 16) and uniform scales as compile-time
// arguments (the vector kernel files instantiate every combination).
template <class Make>
LutKernels ForSpecialisation(const Prep& p, const Make& make) {
  auto with_flags = [&](auto at, auto layout) {
    constexpr DType AT = decltype(at)::value;
    constexpr Layout L = decltype(layout)::value;
    if (HalfWordGroups(p))
      return p.shape.uniform ? make.template For<AT, L, true, true>()
                             : make.template For<AT, L, true, false>();
    return p.shape.uniform ? make.template For<AT, L, false, true>()
                           : make.template For<AT, L, false, false>();
  };
  auto with_layout = [&](auto at) {
    if (p.op.layout == Layout::kCpu)
      return with_flags(at, std::integral_constant<Layout, Layout::kCpu>{});
    return with_flags(at, std::integral_constant<Layout, Layout::kCanonical>{});
  };
  switch (p.op.alpha_type) {
    case DType::kF32:
      return with_layout(std::integral_constant<DType, DType::kF32>{});
    case DType::kBF16:
      return with_layout(std::integral_constant<DType, DType::kBF16>{});
    default:
      return with_layout(std::integral_constant<DType, DType::kF16>{});
  }
}

// Portable kernels, one column per call (width 1), 4 rows per pass (tails for up to 8).
LutKernels LutKernelsGeneric(bool fast);
// AVX2 kernels specialised for p's alpha dtype, layout, group size 16 and uniform scales (width
// 32 fast, 16 exact; the generic kernels for the tail).
// Fast mode on a CPU with AVX-512 BW + VBMI + VNNI (Avx512Lookups): the vector kernels of
// lut_avx512.cc, equal bit for bit to the AVX2 ones.
LutKernels LutKernelsAvx2(bool fast, const Prep& p);
// lut_avx512.cc's vector kernels for p, with avx2's tail kernels.
LutKernels LutKernelsAvx512Fast(const Prep& p, const LutKernels& avx2);
// Whether the AVX2 path may use lut_avx512.cc: the CPU has AVX-512 F/BW/VL/VBMI/VNNI and
// LUTGEMM_CPU_ISA is not "avx2" or "portable" (avx2 keeps the AVX2 kernels, e.g. to test them on
// such a CPU).
bool Avx512Lookups();
// The CPU half of Avx512Lookups (CPUID only), and the LUTGEMM_CPU_ISA half (shared with the
// dense path's AVX-512 micro-kernel).
bool Avx512LookupsSupported();
bool Avx512Allowed();

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_LUT_H_
