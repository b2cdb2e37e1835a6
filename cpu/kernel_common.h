// What every CPU kernel file reads: the per-call state (Prep), the lookup-table geometry, the
// alpha segments of a scale block, element loads, and the driver helpers the paths share.
#ifndef LUTGEMM_CPU_KERNEL_COMMON_H_
#define LUTGEMM_CPU_KERNEL_COMMON_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "lut_gemm_cpu.h"
#include "lutgemm/bcq_format.h"
#include "lutgemm/dtypes.h"

// AVX2 code is compiled per function with this target attribute (never per file, never with
// -march): the generic code around it stays runnable on any x86-64, and the ISA is chosen at run
// time (cpu_features.cc).
#define LUTGEMM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace lutgemm::cpu {

constexpr int kMu = 4;                           // activations per lookup table
constexpr int kEntries = 1 << kMu;               // 16 entries per table
constexpr int kChunksPerWord = kWordBits / kMu;  // 8 nibbles (tables) per sign word
constexpr int kMaxRows = 8;                      // most rows of x per pass over the weight

// Activations per scale block: the largest of 128/96/64/32 dividing g, so that a block lies in
// one group; g = 16: one word (32), whose two halves are separate groups (alpha segments below).
// A block is the unit of a kernel call, of a fast-mode table scale and of split-K.
inline int64_t ScaleBlock(int64_t g) {
  for (int64_t s : {128, 96, 64, 32})
    if (g % s == 0) return s;
  return kWordBits;
}

// The state of one LutGemm call: the operands, the geometry derived from their shape, and the
// lookup tables of every row of x (filled by the driver, read by the lookup kernels).
struct Prep {
  explicit Prep(const Operands& operands)
      : op(operands),
        shape(operands.shape),
        padded_k(shape.padded_k()),
        num_groups(shape.num_groups()),
        block_size(ScaleBlock(shape.group_size)),
        num_blocks(padded_k / block_size),
        words_per_block(block_size / kWordBits),
        num_chunks(padded_k / kMu) {}

  const Operands& op;       // pointers, dtypes, layout and M
  const BcqShape& shape;    // op.shape
  int64_t padded_k;         // Kp: K rounded up to whole groups and words
  int64_t num_groups;       // G = Kp / g
  int64_t block_size;       // S: activations per scale block (ScaleBlock)
  int64_t num_blocks;       // Kp / S
  int64_t words_per_block;  // S / 32
  int64_t num_chunks;       // Kp / 4: tables per row of x
  std::vector<float> float_tables;  // exact: [M][num_chunks][16]
  std::vector<int8_t> int8_tables;  // fast:  [M][num_chunks][16]
  std::vector<float> table_scales;  // fast:  [M][num_blocks], the int8 step of each block
  std::vector<float> group_sums;    // [M][num_groups]: sum of x over each group (offset term)
};

inline float ToF32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(p)[i]);
    default:
      return F16ToFloat(static_cast<const uint16_t*>(p)[i]);
  }
}

// The sign word of (word kw, plane i, column col), in either layout (bits are little-endian).
inline uint32_t LoadWord(const Prep& p, int64_t kw, int64_t i, int64_t col) {
  const int64_t row = (kw * p.shape.q + i) * p.shape.n;
  if (p.op.layout == Layout::kCanonical) return p.op.bits[row + col];
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(p.op.bits + row);
  uint32_t word = 0;
  for (int j = 0; j < kBytesPerWord; ++j)
    word |= uint32_t{bytes[SignByteOffset(p.op.layout, p.shape.n, col, j)]} << (8 * j);
  return word;
}

// Alpha segments of a scale block: the whole block (one group) for g >= 32; for g = 16 (S = 32,
// one word) the word's halves, nibbles 0-3 (group 2*kw) and 4-7 (group 2*kw + 1). Each segment's
// plane sums are scaled by its own group's alpha and added to the output on their own.
// A g = 16 group of padding rows only (the high half of the last word when K % 32 is 1..16) is
// skipped, scales and offset alike, as the dense path (which reads rows < K only) and the
// reference W_hat[:K] never see it; a group of g >= 32 always holds real rows.
inline bool HalfWordGroups(const Prep& p) { return p.shape.group_size == kHalfWordGroup; }
inline int Segments(const Prep& p) { return HalfWordGroups(p) ? 2 : 1; }
inline bool GroupHasRows(const Prep& p, int64_t grp) {
  return grp * p.shape.group_size < p.shape.k;
}
inline int64_t SegmentGroup(const Prep& p, int64_t sb, int seg) {
  return HalfWordGroups(p) ? 2 * sb + seg : sb * p.block_size / p.shape.group_size;
}

// The groups whose first row lies in scale block sb and holds real rows, [*first, *last): their
// offset terms offset[grp, col] * sum(x over grp) are added by the lookup kernel of that block
// (one group for g >= S, none when S < g and the block is not a group's first; two for g = 16).
inline void OffsetGroups(const Prep& p, int64_t sb, int64_t* first, int64_t* last) {
  const int64_t g = p.shape.group_size;
  *first = (sb * p.block_size + g - 1) / g;
  *last = *first;
  while (*last * g < (sb + 1) * p.block_size && GroupHasRows(p, *last)) ++*last;
}

// Runs fn(i) for every i in [0, count): in order on the calling thread when there is one item or
// one task, else through parallel_for. Every item writes its own outputs, so the result does not
// depend on which thread runs which item.
void RunTasks(int64_t count, int64_t tasks, const ParallelFor& parallel_for,
              const std::function<void(int64_t)>& fn);

// Stores count float32 values into y[offset ..] in the output dtype t (round to nearest even).
void StoreRow(const float* src, DType t, void* y, int64_t offset, int64_t count);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_KERNEL_COMMON_H_
