// Host/device-neutral types and constants of the CUDA LUT-GEMM kernels (no CUDA headers needed):
// shared by the kernels (lut_gemm_kernel.cuh), the launch planning and the FFI handlers.
#ifndef LUTGEMM_CUDA_LUT_GEMM_TYPES_H_
#define LUTGEMM_CUDA_LUT_GEMM_TYPES_H_

#include <cstdint>

#include "lutgemm/bcq_format.h"

namespace lutgemm::cuda {

// Element types of x, y, alpha, offset and the dequantized weight.
enum ElemType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

constexpr int kThreads = 128;                         // threads per LUT block
constexpr int kColsPerThread = 4;                     // one uint4 of bits words
constexpr int kColsPerBlock = kThreads * kColsPerThread;
constexpr int kTileRowWords = 8;                      // TW * MT: words per tile times rows
constexpr int kTableFloats = kTileRowWords * kBytesPerWord * kTableSize;  // 32 KiB
constexpr int kStageFloats = kTileRowWords * kWordBits;                   // 1 KiB
constexpr int kReduceThreads = 256;
constexpr int kDequantThreads = 256;

// Everything the LUT kernel needs; passed by value.
struct LutGemmArgs {
  const void* x;          // [M, K], x_type
  const uint32_t* bits;   // [Kp/32, q, N]
  const void* alpha;      // [G, q, N], or [G, 1, N] when uniform; a_type
  const void* offset;     // [G, N], a_type, or nullptr
  void* y;                // [M, N], x_type (written when num_splits == 1)
  float* partial;         // [S, M, N] float32 scratch (when num_splits > 1)
  int m, k, n, q;
  int num_words;          // Kp / 32
  int group_size;         // g: 16 (two groups per word) or a multiple of 32
  int words_per_group;    // g / 32 (g >= 32 only)
  int words_per_split;    // K slice per blockIdx.y, in words
  int uniform;            // 1: alpha holds one scale per group, plane i's is alpha * 2^i
  int x_type, a_type;
};

struct DequantArgs {
  const uint32_t* bits;
  const void* alpha;      // as in LutGemmArgs
  const void* offset;     // or nullptr
  void* w;                // [K, N], w_type
  int k, n, q, num_words, group_size, words_per_group, uniform;
  int a_type, w_type;
};

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_TYPES_H_
