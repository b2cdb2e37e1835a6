// LutGemm: the driver of the CPU kernel. It validates nothing (ffi_cpu.cc did), picks the path
// (lookup tables or dense tiles, dense.cc) and the ISA twins, builds the lookup tables, and
// splits the work into tasks for the worker pool.
//
// Tasks of the lookup path:
// * column chunks: every task owns whole 32-column blocks of y (no two tasks share a 128-byte
//   line of y or of a sign-word row) and runs all of K for them, reading the tables of every row
//   (built once, before the tasks) and streaming its columns' sign words;
// * K slices (split-K, KSlices and PassSlices): every task owns a range of whole scale blocks
//   (and a column chunk of them where there are more tasks than slices), and writes float32
//   partial sums; the partials are added in slice order afterwards.
// Within a task (RunColumns), per block of up to kr.rows rows of x (4; 8 with AVX-512):
//   for each scale block of S activations (S | g, S <= 128; one word for g = 16):
//     for each block of W columns (W = 32 fast / 16 exact on AVX2, 1 generic):
//       the offset terms of the groups starting in the block, then
//       for each alpha segment and plane: sum the lookups of its words -> per-column plane sums
//                                         tot += plane_sum * alpha (uniform: see lut_avx2.cc)
//       facc[row, col] += tot (* table scale in fast mode)
// so each (word, plane) row of sign words streams sequentially over the task's columns and every
// weight byte is read once per block of rows. For more rows than a block, columns are tiled so
// that a tile of the weight stays in L2 across row blocks.
// Every output is computed by one task in a fixed order, and the split depends on the shape and
// the task count bound only through whole columns or fixed K slices: results are bitwise equal
// for any number of threads.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "dense.h"
#include "lut.h"
#include "lut_gemm_cpu.h"
#include "tables.h"

namespace lutgemm::cpu {

void RunTasks(int64_t count, int64_t tasks, const ParallelFor& parallel_for,
              const std::function<void(int64_t)>& fn) {
  if (count == 1 || tasks == 1) {
    for (int64_t i = 0; i < count; ++i) fn(i);
  } else {
    parallel_for(count, fn);
  }
}

void StoreRow(const float* src, DType t, void* y, int64_t offset, int64_t count) {
  switch (t) {
    case DType::kF32:
      std::memcpy(static_cast<float*>(y) + offset, src, count * sizeof(float));
      break;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(y) + offset;
      for (int64_t i = 0; i < count; ++i) d[i] = FloatToBf16(src[i]);
      break;
    }
    default: {
      uint16_t* d = static_cast<uint16_t*>(y) + offset;
      for (int64_t i = 0; i < count; ++i) d[i] = FloatToF16(src[i]);
      break;
    }
  }
}

namespace {

// Bytes of sign words per column tile when several row blocks reuse them: the per-core L2 of the
// smallest x86 server cores this targets (512 KiB on Zen 3; Intel's 1-2 MiB L2 holds it too).
constexpr int64_t kL2TileBytes = 512 * 1024;

// Column chunks of the lookup path: at least kMinChunkColumns columns where N allows, about
// kChunksPerTask per task for load balance, but at least one chunk per task. Per scale block a
// chunk streams q * S/32 sign-word rows and the alpha rows side by side; each such pass over a
// chunk pays for its start (the hardware prefetcher's training, the first kPrefetchBlocks
// column blocks that no software prefetch covered) and its end (software prefetches past the
// chunk, evicted before the next chunk reads them). 4096 columns (16 KiB of each sign-word row)
// make those a small part of the pass; two chunks per task still let a thread that finishes
// early take over work.
constexpr int64_t kMinChunkColumns = 4096;
constexpr int64_t kChunksPerTask = 2;

// Computes columns [c_begin, c_end) of every row over scale blocks [sb_begin, sb_end) of K.
// c_begin is a multiple of 32. The result goes to y (in x's dtype) or, for a K slice, as float32
// into partial[m, n].
void RunColumns(const Prep& p, const LutKernels& kr, int64_t c_begin, int64_t c_end,
                int64_t sb_begin, int64_t sb_end, float* partial) {
  const int64_t n = p.shape.n, q = p.shape.q, m = p.op.m;
  // Column tile: all of the range for one block of rows (one pass over the weight); otherwise a
  // tile whose sign words over the scale blocks run here (K * q / 8 bytes per column without
  // split-K) fill about kL2TileBytes, so every row block re-reads them from L2 instead of DRAM.
  int64_t tile = c_end - c_begin;
  if (m > kr.rows) {
    const int64_t bytes_per_col = (sb_end - sb_begin) * p.block_size * q / 8;
    tile = kL2TileBytes / bytes_per_col / kLayoutBlock * kLayoutBlock;
    tile = std::max<int64_t>(kLayoutBlock, tile);
  }
  std::vector<float> facc(static_cast<size_t>(kr.rows) * std::min(tile, c_end - c_begin));
  for (int64_t t0 = c_begin; t0 < c_end; t0 += tile) {
    const int64_t t1 = std::min(t0 + tile, c_end), ld = t1 - t0;
    const int64_t vec_end = t0 + (t1 - t0) / kr.width * kr.width;
    for (int64_t r0 = 0; r0 < m; r0 += kr.rows) {
      const int rows = static_cast<int>(std::min<int64_t>(kr.rows, m - r0));
      std::fill(facc.begin(), facc.begin() + rows * ld, 0.f);
      for (int64_t sb = sb_begin; sb < sb_end; ++sb) {
        for (int64_t c = t0; c < vec_end; c += kr.width)
          kr.vec[rows - 1](p, r0, sb, c, facc.data() + (c - t0), ld);
        for (int64_t c = vec_end; c < t1; ++c)
          kr.tail[rows - 1](p, r0, sb, c, facc.data() + (c - t0), ld);
      }
      for (int r = 0; r < rows; ++r) {
        if (partial != nullptr)
          std::memcpy(partial + (r0 + r) * n + t0, facc.data() + r * ld, ld * sizeof(float));
        else
          StoreRow(facc.data() + r * ld, p.op.x_type, p.op.y, (r0 + r) * n + t0, ld);
      }
    }
  }
}

// Split-K for tall-skinny weights. Columns alone cannot keep several threads busy when N has
// only a few 32-column blocks (a router, a value head, a narrow tensor-parallel shard), and the
// lookup tables, whose bytes grow with K alone, are then a large part of the work (4 bytes per
// activation against q * N / 8 of sign bits). So K is cut into up to kKSlices slices of whole
// scale blocks; each slice is one work item that builds its own tables and writes float32
// partial sums of all columns, and the partials are added in slice order. The number of slices
// depends on the shape only, never on the thread count, so results stay bitwise identical for
// any number of threads.
// A slice reads about kMinSliceBytes of sign words or more: below that, handing a slice to
// another thread costs more than reading it (a wake-up is tens of microseconds; 128 KiB streams
// from DRAM in about ten).
constexpr int64_t kSplitKBelowN = 128;  // split K when N < 128 (fewer than 4 whole blocks of 32)
constexpr int64_t kKSlices = 8;
constexpr int64_t kMinSliceBytes = 128 * 1024;

int64_t KSlices(const Prep& p) {
  if (p.shape.n >= kSplitKBelowN) return 1;
  const int64_t bytes = p.padded_k / 8 * p.shape.q * p.shape.n;
  return std::max<int64_t>(1, std::min({kKSlices, p.num_blocks, bytes / kMinSliceBytes}));
}

// Split-K for one pass over the weight (M <= kr.rows: decode) of a narrow weight. Column chunks
// alone make every task stream, per scale block, q * S/32 pieces of N / tasks * 4 bytes, one per
// (word, plane) row: with N <= 4096 and two tasks, 8 KiB or less, two pages, after which the
// streams restart on the next block's rows. Two K slices give each task whole rows (with two
// tasks: one contiguous half of the sign words each), which streams faster (BENCHMARKS.md has
// the A/B); on wider weights the pieces are long already and the split did not pay. More slices
// measured no better, and each costs M * N float32 partials. As for
// KSlices, the count depends on the shape only (not on the number of tasks), so results stay
// bitwise identical for any number of threads.
constexpr int64_t kPassSlices = 2;
constexpr int64_t kPassSplitMaxN = 4096;
constexpr int64_t kMinPassSliceBytes = 256 * 1024;  // below this a pass is a few microseconds

int64_t PassSlices(const Prep& p, const LutKernels& kr) {
  if (p.op.m > kr.rows || p.shape.n > kPassSplitMaxN) return 1;
  const int64_t bytes = p.padded_k / 8 * p.shape.q * p.shape.n;
  return std::max<int64_t>(1, std::min({kPassSlices, p.num_blocks, bytes / kMinPassSliceBytes}));
}

// The first scale block of K slice s of `slices`.
int64_t SliceBegin(const Prep& p, int64_t s, int64_t slices) {
  return s * p.num_blocks / slices;
}

// Every row's tables for scale blocks [b0, b1), and the offset term's sums of x over the groups
// that start in those blocks (in double). float32 x is read in place for the blocks that lie
// inside K; other dtypes, and the block reaching past K, go through a float32 copy zero-padded
// to the block's end. Reading in place avoids a per-row copy whose cost (glibc's memcpy) is of
// the order of the lookups themselves for tall, narrow weights.
void PrepareBlocks(Prep& p, Isa isa, bool fast, int64_t b0, int64_t b1) {
  const Operands& op = p.op;
  const int64_t k = p.shape.k;
  const int64_t direct = op.x_type == DType::kF32 ? std::clamp(k / p.block_size, b0, b1) : b0;
  const auto build = isa == Isa::kAvx2 ? BuildTablesAvx2 : BuildTablesGeneric;
  std::vector<float> xb((b1 - direct) * p.block_size, 0.f);  // x[r, direct * S ..], zero past K
  for (int64_t r = 0; r < p.op.m; ++r) {
    if (direct > b0)
      build(static_cast<const float*>(op.x) + r * k + b0 * p.block_size, p, r, fast, b0, direct);
    if (direct < b1) {
      const int64_t lo = direct * p.block_size, hi = std::min(k, b1 * p.block_size);
      for (int64_t i = lo; i < hi; ++i) xb[i - lo] = ToF32(op.x, op.x_type, r * k + i);
      build(xb.data(), p, r, fast, direct, b1);
    }
    if (p.op.offset == nullptr) continue;
    const int64_t g = p.shape.group_size;
    for (int64_t grp = (b0 * p.block_size + g - 1) / g; grp * g < b1 * p.block_size; ++grp) {
      double sum = 0.0;
      for (int64_t i = grp * g; i < std::min(k, (grp + 1) * g); ++i)
        sum += ToF32(op.x, op.x_type, r * k + i);
      p.group_sums[r * p.num_groups + grp] = static_cast<float>(sum);
    }
  }
}

// y[i] = partial[0][i] + partial[1][i] + ... (in slice order, summed into partial[0]), stored in
// x's dtype.
void SumSlices(float* partial, int64_t slices, int64_t count, const Operands& op) {
  for (int64_t s = 1; s < slices; ++s)
    for (int64_t i = 0; i < count; ++i) partial[i] += partial[s * count + i];
  StoreRow(partial, op.x_type, op.y, 0, count);
}

// Columns per chunk when `tasks` tasks share the columns: at least kMinChunkColumns where N
// allows, about kChunksPerTask per task for load balance, at least one per task, whole blocks.
int64_t ChunkColumns(int64_t n, int64_t tasks) {
  int64_t chunk = std::max<int64_t>(kMinChunkColumns,
                                    (n + tasks * kChunksPerTask - 1) / (tasks * kChunksPerTask));
  chunk = std::min<int64_t>(chunk, (n + tasks - 1) / tasks);
  return std::max<int64_t>(kLayoutBlock, (chunk + kLayoutBlock - 1) / kLayoutBlock * kLayoutBlock);
}

}  // namespace

void LutGemm(const Operands& op, Mode mode, Path path, Isa isa, int64_t max_tasks,
             const ParallelFor& parallel_for) {
  const bool fast = mode == Mode::kFast;
  if (isa == Isa::kAvx2 && !IsaSupported(Isa::kAvx2)) isa = Isa::kPortable;
  Prep p(op);
  const int64_t tasks = std::max<int64_t>(1, max_tasks);
  if (path == Path::kDense) {
    RunDensePath(p, isa, tasks, parallel_for);
    return;
  }
  const int64_t m = op.m, n = op.shape.n;
  if (fast) {
    p.int8_tables.resize(m * p.num_chunks * kEntries);
    p.table_scales.resize(m * p.num_blocks);
  } else {
    p.float_tables.resize(m * p.num_chunks * kEntries);
  }
  p.group_sums.resize(m * p.num_groups);
  const LutKernels kr = isa == Isa::kAvx2 ? LutKernelsAvx2(fast, p) : LutKernelsGeneric(fast);

  // Tall-skinny split-K: work item s builds the tables of K slice s and computes all columns over
  // it.
  if (const int64_t slices = KSlices(p); slices > 1) {
    std::vector<float> partial(slices * m * n);
    RunTasks(slices, tasks, parallel_for, [&](int64_t s) {
      const int64_t b0 = SliceBegin(p, s, slices), b1 = SliceBegin(p, s + 1, slices);
      PrepareBlocks(p, isa, fast, b0, b1);
      RunColumns(p, kr, 0, n, b0, b1, partial.data() + s * m * n);
    });
    SumSlices(partial.data(), slices, m * n, op);
    return;
  }

  // One pass over the weight: K slices x column chunks. With one chunk per slice (as many tasks
  // as slices, or fewer) each item builds its slice's tables itself; otherwise the tables are
  // built first, a slice per task. The partials (at most 8 x 4096 per slice) are summed on the
  // calling thread: a parallel step would cost more in waking the workers.
  if (const int64_t slices = PassSlices(p, kr); slices > 1) {
    const int64_t chunk = ChunkColumns(n, (tasks + slices - 1) / slices);
    const int64_t nchunk = (n + chunk - 1) / chunk;
    auto prepare = [&](int64_t s) {
      PrepareBlocks(p, isa, fast, SliceBegin(p, s, slices), SliceBegin(p, s + 1, slices));
    };
    if (nchunk > 1) RunTasks(slices, tasks, parallel_for, prepare);
    std::vector<float> partial(slices * m * n);
    RunTasks(slices * nchunk, tasks, parallel_for, [&](int64_t i) {
      const int64_t s = i / nchunk, c = i % nchunk;
      if (nchunk == 1) prepare(s);
      RunColumns(p, kr, c * chunk, std::min(n, (c + 1) * chunk), SliceBegin(p, s, slices),
                 SliceBegin(p, s + 1, slices), partial.data() + s * m * n);
    });
    SumSlices(partial.data(), slices, m * n, op);
    return;
  }

  PrepareBlocks(p, isa, fast, 0, p.num_blocks);
  const int64_t chunk = ChunkColumns(n, tasks);
  const int64_t nchunk = (n + chunk - 1) / chunk;
  RunTasks(nchunk, tasks, parallel_for, [&](int64_t i) {
    RunColumns(p, kr, i * chunk, std::min(n, (i + 1) * chunk), 0, p.num_blocks, nullptr);
  });
}

}  // namespace lutgemm::cpu
