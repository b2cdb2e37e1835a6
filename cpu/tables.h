// Lookup-table construction (T-MAC's "LUT constructor" stage): per row of x, every chunk of
// mu = 4 activations gets the 16 signed sums of its activations.
//
// Layout: tables of row r, chunk c (k = 4c .. 4c+3) at entries [(r * num_chunks + c) * 16, +16):
//   entry e = sum_{j<4} (2 * bit_j(e) - 1) * x[4c + j]
// so nibble (c % 8) of sign word c / 8 indexes chunk c's table directly.
// * exact mode: float32 entries, computed as ((s0 x0 + s1 x1) + s2 x2) + s3 x3.
// * fast mode: int8 entries round(entry * 127 / a_b), with one scale a_b / 127 per scale block b
//   (a_b = max over b's chunks of sum_j |x[4c+j]|, so no entry saturates); a block with a NaN or
//   Inf activation gets a NaN scale (its row becomes NaN), an all-zero block scale 0.
// The generic and AVX2 twins give bitwise equal tables. They are built per K range (scale blocks
// [b0, b1)) so that split-K slices build only their own.
#ifndef LUTGEMM_CPU_TABLES_H_
#define LUTGEMM_CPU_TABLES_H_

#include <cstdint>

#include "kernel_common.h"

namespace lutgemm::cpu {

// Tables of row `row` for scale blocks [b0, b1) into p's float (exact) or int8 (fast) tables and
// block scales; xb: the row's float32 activations from block b0 on, zero past K.
void BuildTablesGeneric(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0, int64_t b1);
void BuildTablesAvx2(const float* xb, Prep& p, int64_t row, bool fast, int64_t b0, int64_t b1);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_TABLES_H_
