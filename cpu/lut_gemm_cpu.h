// LUT-GEMM on the CPU: y[m, :] = x[m, :] @ W_hat for a packed BCQ weight (see bcq_format.h).
#ifndef LUTGEMM_CPU_LUT_GEMM_CPU_H_
#define LUTGEMM_CPU_LUT_GEMM_CPU_H_

#include <cstdint>

#include "lutgemm/bcq_format.h"

namespace lutgemm::cpu {

// x: [m, k] float32 rows; bits/alpha/offset in the packed format with alpha and offset already
// widened to float32 (offset == nullptr when the weight has none); y: [m, n] float32.
void LutGemm(const BcqShape& s, int64_t m, const float* x, const uint32_t* bits,
             const float* alpha, const float* offset, float* y);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_LUT_GEMM_CPU_H_
