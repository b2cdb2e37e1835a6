// LUT-GEMM on the CPU: y[m, :] = x[m, :] @ W_hat for a packed BCQ weight (see bcq_format.h),
// straight from the packed format in either sign-word layout (no dequantization).
//
// Both modes split K into chunks of mu = 4 activations; chunk c (k = 4c .. 4c+3) is exactly nibble
// (c % 8) of sign word c / 8, so each nibble of a word indexes a 16-entry table
//   T_c[p] = sum_{j<4} (2*bit_j(p) - 1) * x[4c + j].
// * exact: float32 tables; on AVX2 looked up 8 columns at a time with two vpermps + a blend.
// * fast:  int8 tables, one scale per "scale block" of S activations (S = the largest of
//          128/96/64/32 dividing g), T_q = round(T * 127 / max_c sum_j |x[4c+j]|); on AVX2 looked
//          up 32 columns at a time with vpshufb (the T-MAC technique), summed exactly in int16.
//          vpshufb needs byte j of 32 columns in one vector: the kCpu sign layout stores them so
//          (one load); canonical words are transposed in registers first.
// Per (scale block, plane, column) the lookups are summed, scaled by alpha (and, in fast mode, by
// the block's table scale) and accumulated in float32; the offset adds offset * sum(x over group).
// With g = 16 a scale block is one sign word whose halves are summed and scaled separately (two
// groups). Uniform weights (alpha [G, 1, N]) scale plane i by alpha * 2^i; in fast mode their
// integer plane sums are first combined exactly, sum_i 2^i * (plane i sum), and scaled once.
// Every column is computed by one thread with a fixed operation order; for tall-skinny weights
// (N < 128) K is split into slices fixed by the shape, whose partial sums are added in slice
// order. Either way results do not depend on the number of threads.
#ifndef LUTGEMM_CPU_LUT_GEMM_CPU_H_
#define LUTGEMM_CPU_LUT_GEMM_CPU_H_

#include <cstdint>
#include <functional>

#include "lutgemm/bcq_format.h"
#include "lutgemm/dtypes.h"

namespace lutgemm::cpu {

// Accuracy of the lookup tables: float32 (exact) or int8 with one scale per block (fast).
enum class Mode : int64_t { kExact = 0, kFast = 1 };
// kLut: lookup tables over the sign bits (reads `Mode`). kDense: the large-batch path,
// y = x @ W_hat with W_hat dequantized one small tile at a time (never a full [K, N] copy) and
// multiplied with a register-blocked FMA micro-kernel (float32 throughout; ignores `Mode`).
enum class Path : int64_t { kLut = 0, kDense = 1 };
enum class Isa : int { kPortable = 0, kAvx2 = 1 };

struct Operands {
  BcqShape shape;
  int64_t m;              // rows of x
  const void* x;          // [m, k] in x_type
  DType x_type;
  const uint32_t* bits;   // [Kp/32, q, n]
  Layout layout;          // how the sign words of `bits` are arranged (bcq_format.h)
  const void* alpha;      // [G, q, n] or uniform [G, 1, n] (shape.uniform) in alpha_type
  const void* offset;     // [G, n] in alpha_type, or nullptr
  DType alpha_type;
  void* y;                // [m, n] in x_type
};

// Runs fn(i) for every i in [0, count), possibly concurrently, and returns when all have run.
using ParallelFor =
    std::function<void(int64_t count, const std::function<void(int64_t)>& fn)>;

// Whether this CPU can run `isa` (checked with CPUID).
bool IsaSupported(Isa isa);

// The ISA to use: LUTGEMM_CPU_ISA=portable|avx2 forces one (avx2 on a CPU without it falls back
// to portable); otherwise the best supported.
Isa SelectIsa();

// Computes y. `max_tasks` bounds the number of concurrent tasks handed to `parallel_for`.
void LutGemm(const Operands& op, Mode mode, Path path, Isa isa, int64_t max_tasks,
             const ParallelFor& parallel_for);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_LUT_GEMM_CPU_H_
