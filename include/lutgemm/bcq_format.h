// The packed BCQ weight format: the C++ twin of lutgemm_jax/format.py (keep them in sync).
//
// A dense kernel W: [K, N] (y = x @ W) is approximated as
//
//   W_hat[k, n] = sum_{i<q} alpha[k / g][i][n] * s_i[k][n] + offset[k / g][n],   s_i = +-1
//
//   bits   uint32 [Kp/32][q][N]   bit t (LSB = 0) of word [kw][i][n] is 1 where s_i[32*kw+t][n] = +1;
//                                 byte j of a word is the 8-activation table index for
//                                 k = 32*kw + 8j .. 32*kw + 8j + 7.
//   alpha  [G][q][N]              float32, bfloat16 or float16 (G = Kp / g), or
//          [G][1][N]              "uniform": plane i's scale is alpha[grp][0][n] * 2^i (the
//                                 exact BCQ form of integer codes; one stored scale per group)
//   offset [G][N]                 alpha's dtype, optional (G = 0 rows when absent)
//
// g is 16 or a positive multiple of 32; Kp is K rounded up to a multiple of max(g, 32) so that
// sign words stay whole. With g = 16 one word spans two groups: bytes 0-1 belong to group
// 2*kw, bytes 2-3 to group 2*kw + 1. Rows K <= k < Kp are padding: consumers treat the
// activations there as zero, so they contribute nothing.
// This header holds only host/device-neutral constants and index arithmetic; it is included by
// the CPU kernel, the CUDA kernel and their FFI handlers.
#ifndef LUTGEMM_BCQ_FORMAT_H_
#define LUTGEMM_BCQ_FORMAT_H_

#include <cstdint>

#if defined(__CUDACC__)
#define LUTGEMM_HD __host__ __device__ __forceinline__
#else
#define LUTGEMM_HD inline
#endif

namespace lutgemm {

constexpr int kWordBits = 32;      // sign bits per packed word, along K
constexpr int kTableBits = 8;      // mu: activations per lookup table (one byte of a word)
constexpr int kTableSize = 1 << kTableBits;
constexpr int kBytesPerWord = kWordBits / kTableBits;
constexpr int kMaxBits = 8;        // largest q
constexpr int kHalfWordGroup = 16; // the one group size below a word (GGUF's 16-weight blocks)

// Shape of one packed weight, as the FFI attributes describe it.
struct BcqShape {
  int64_t k;           // logical in_features
  int64_t n;           // out_features
  int64_t q;           // bit-planes
  int64_t group_size;  // g: 16 or a multiple of 32
  bool has_offset;
  bool uniform = false;  // alpha is [G][1][N]: plane i's scale is alpha * 2^i

  // K rounded up to whole groups and whole words (g = 16: to a multiple of 32).
  LUTGEMM_HD int64_t k_multiple() const { return group_size < kWordBits ? kWordBits : group_size; }
  LUTGEMM_HD int64_t padded_k() const { return (k + k_multiple() - 1) / k_multiple() * k_multiple(); }
  LUTGEMM_HD int64_t num_words() const { return padded_k() / kWordBits; }
  LUTGEMM_HD int64_t num_groups() const { return padded_k() / group_size; }
  // Only for g >= 32; a g = 16 weight has two groups per word.
  LUTGEMM_HD int64_t words_per_group() const { return group_size / kWordBits; }
  // Scale planes stored in alpha: 1 for uniform weights, q otherwise.
  LUTGEMM_HD int64_t alpha_planes() const { return uniform ? 1 : q; }
};

// Layouts of the sign words in `bits` (the FFI attribute `layout`; lutgemm_jax.format.LAYOUTS):
//   kCanonical  as described above (what every quantizer produces; the CUDA kernel's input).
//   kCpu        same array shape. In every (word, plane) row of N words, the first
//               N32 = N - N % 32 columns form blocks of 32 columns whose 128 bytes are stored
//               byte-major: byte j of column c of a block sits at byte 32*j + c of the block
//               (canonical: 4*c + j). The last N % 32 columns stay canonical.
// The CPU's AVX2 kernel reads byte j of 32 columns with one 32-byte load in the kCpu layout,
// where the canonical one needs an in-register 4 x 32 byte transpose per word. The layout is
// produced once per weight (lutgemm_jax.to_layout), never per call.
enum class Layout : int64_t { kCanonical = 0, kCpu = 1 };
constexpr int kLayoutBlock = 32;  // columns per byte-major block of the kCpu layout

// Offset in bytes, from the start of a (word, plane) row, of byte j of column `col`'s word.
LUTGEMM_HD int64_t SignByteOffset(Layout layout, int64_t n, int64_t col, int j) {
  if (layout == Layout::kCpu && col < n - n % kLayoutBlock)
    return (col - col % kLayoutBlock) * kBytesPerWord + j * kLayoutBlock + col % kLayoutBlock;
  return col * kBytesPerWord + j;
}

// Flat indices into the three arrays.
LUTGEMM_HD int64_t BitsIndex(const BcqShape& s, int64_t word, int64_t plane, int64_t col) {
  return (word * s.q + plane) * s.n + col;
}
// Index of the stored scale of (group, plane, col); a uniform weight stores plane 0 only and the
// caller multiplies by 2^plane (UniformPlaneFactor).
LUTGEMM_HD int64_t AlphaIndex(const BcqShape& s, int64_t group, int64_t plane, int64_t col) {
  return s.uniform ? group * s.n + col : (group * s.q + plane) * s.n + col;
}
LUTGEMM_HD float UniformPlaneFactor(const BcqShape& s, int64_t plane) {
  return s.uniform ? static_cast<float>(int64_t{1} << plane) : 1.0f;
}
LUTGEMM_HD int64_t OffsetIndex(const BcqShape& s, int64_t group, int64_t col) {
  return group * s.n + col;
}

// Attributes come from the caller (an FFI call can carry any int64): K and g are bounded so that
// padded_k() = (k + g - 1) / g * g cannot overflow int64 (an overflowed Kp of 0 would let empty
// weight buffers pass the shape checks while the kernel reads K activations), and N so that the
// index arithmetic stays far from overflow. No real weight comes near these bounds.
constexpr int64_t kMaxDim = int64_t{1} << 40;

// Returns nullptr when the shape is a valid format instance, or a message saying what is wrong.
inline const char* CheckShape(const BcqShape& s) {
  if (s.k <= 0) return "K (in_features) must be positive";
  if (s.k > kMaxDim) return "K (in_features) is too large (more than 2^40)";
  if (s.n <= 0) return "N (out_features) must be positive";
  if (s.n > kMaxDim) return "N (out_features) is too large (more than 2^40)";
  if (s.q < 1 || s.q > kMaxBits) return "q (num_bits) must be in 1..8";
  if (s.group_size != kHalfWordGroup && (s.group_size <= 0 || s.group_size % kWordBits != 0))
    return "group_size must be 16 or a positive multiple of 32";
  if (s.group_size > kMaxDim) return "group_size is too large (more than 2^40)";
  return nullptr;
}

}  // namespace lutgemm

#endif  // LUTGEMM_BCQ_FORMAT_H_
