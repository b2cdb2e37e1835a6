// Driver of the dense path (dense.h).
//
// BLIS-style blocking with the weight dequantized on the fly. x is packed once per call (PackX,
// split over the tasks by row blocks). Each task owns a range of output columns and, per tile of
// kNB columns x kKB rows of K:
//   dequantize the tile into kNB / kNR packed micro-panels (64 KiB, L2), then
//   for each chunk of kMC rows of x (their packed panels of this K tile stay in L2):
//     for each group of micro_cols / kNR micro-panels (kKB x 16 floats each, kept in L1):
//       for each block of micro_rows rows of x (its packed panels stream from L2):
//         micro_rows x micro_cols register-blocked FMA micro-kernel (6 x 16 on AVX2 and
//         portable, 12 x 32 on AVX-512), accumulating into the task's [m, kNB] buffer.
// Every weight element is dequantized once per call and reused by all m rows, so at m >= 64 the
// dequantization is a few percent of the FMAs. Columns never straddle tasks, and each output's
// sum runs over k in the same order whatever the split (deterministic for any thread count).
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "dense.h"

namespace lutgemm::cpu {
namespace {

// Column chunks per task: about kChunksPerTask chunks (of at least kNB columns) per task, so
// that threads finishing early take another chunk and uneven progress evens out.
constexpr int64_t kChunksPerTask = 4;

// Row blocks [b0, b1) of x [m, k] into float32 panels (PanelIndex), rows past m zero. The rows
// of the last K tile past k are left unwritten: the micro-kernels read only kc = k - k0 rows of
// it.
void PackX(const Operands& op, int64_t m, int64_t k, int64_t b0, int64_t b1, float* xp) {
  const int64_t blocks = (m + kMR - 1) / kMR;
  const std::vector<float> zeros(op.x_type == DType::kF32 ? k : 0, 0.f);
  std::vector<float> rows(op.x_type == DType::kF32 ? 0 : kMR * k, 0.f);
  for (int64_t b = b0; b < b1; ++b) {
    const float* src[kMR];
    for (int r = 0; r < kMR; ++r) {
      const int64_t row = b * kMR + r;
      if (op.x_type == DType::kF32) {
        src[r] = row < m ? static_cast<const float*>(op.x) + row * k : zeros.data();
      } else {
        for (int64_t i = 0; row < m && i < k; ++i)
          rows[r * k + i] = ToF32(op.x, op.x_type, row * k + i);
        if (row >= m) std::fill(rows.begin() + r * k, rows.begin() + (r + 1) * k, 0.f);
        src[r] = rows.data() + r * k;
      }
    }
    for (int64_t k0 = 0; k0 < k; k0 += kKB) {
      float* d = xp + PanelIndex(blocks, k0, b * kMR);
      const int64_t kc = std::min<int64_t>(kKB, k - k0);
      for (int64_t kk = 0; kk < kc; ++kk)
        for (int r = 0; r < kMR; ++r) d[kk * kMR + r] = src[r][k0 + kk];
    }
  }
}

// Columns [c_begin, c_end) of every row; xp is x packed by PanelIndex. Each
// column's sums run over k in the same order whatever the column split, so results do not depend
// on the thread count.
void RunDense(const Prep& p, const DenseKernels& dk, const float* xp, int64_t c_begin,
              int64_t c_end) {
  const int64_t m = p.op.m, k = p.shape.k, n = p.shape.n, blocks = (m + kMR - 1) / kMR;
  // The tile, 64-byte aligned so that no micro-panel row of kNR floats straddles two lines.
  std::vector<float> wt_buf(kKB * kNB + 16), facc(m * kNB);
  float* wt = wt_buf.data() + (-reinterpret_cast<uintptr_t>(wt_buf.data()) / sizeof(float)) % 16;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += kNB) {
    const int64_t nc = std::min<int64_t>(kNB, c_end - c0);
    std::fill(facc.begin(), facc.end(), 0.f);
    for (int64_t k0 = 0; k0 < k; k0 += kKB) {
      const int64_t kc = std::min<int64_t>(kKB, k - k0);
      dk.tile(p, k0, kc, c0, nc, wt);
      // Rows in chunks of kMC whose x panels (kMC x kc floats) stay in L2 next to the tile;
      // within a chunk, micro-panels outer: one or two panels (kc x kNR floats, 16 KiB each)
      // stay in L1 while the chunk's row blocks of x stream past them from L2. The tile's
      // columns past nc are zero and facc holds kNB columns, so a call may run past nc.
      for (int64_t mc = 0; mc < m; mc += kMC) {
        const int64_t mc_end = std::min(m, mc + kMC);
        for (int64_t cs = 0; cs < nc; cs += dk.micro_cols) {
          for (int64_t m0 = mc; m0 < mc_end; m0 += dk.micro_rows) {
            const int mr = static_cast<int>(std::min<int64_t>(dk.micro_rows, mc_end - m0));
            dk.micro[mr - 1](xp + PanelIndex(blocks, k0, m0), wt + TileIndex(0, cs), kc,
                             facc.data() + m0 * kNB + cs, kNB);
          }
        }
      }
    }
    for (int64_t r = 0; r < m; ++r)
      StoreRow(facc.data() + r * kNB, p.op.x_type, p.op.y, r * n + c0, nc);
  }
}

}  // namespace

void RunDensePath(const Prep& p, Isa isa, int64_t max_tasks, const ParallelFor& parallel_for) {
  DenseKernels dk = isa == Isa::kAvx2 ? DenseKernelsAvx2(p) : DenseKernelsGeneric();
  if (isa == Isa::kAvx2 && DenseAvx512Usable()) SetKernelsAvx512(p, dk);
  const int64_t m = p.op.m, k = p.shape.k, n = p.shape.n;
  const int64_t blocks = (m + kMR - 1) / kMR, ktiles = (k + kKB - 1) / kKB;
  std::unique_ptr<float[]> xp(new float[ktiles * blocks * kKB * kMR]);
  const int64_t tasks = std::max<int64_t>(1, max_tasks);
  // Packing x is a copy of M x K floats: split over the tasks by row blocks (at M = 2048 it
  // would otherwise hold the other threads idle for several percent of the call).
  const int64_t pack_items = std::min(blocks, tasks);
  RunTasks(pack_items, tasks, parallel_for, [&](int64_t i) {
    PackX(p.op, m, k, i * blocks / pack_items, (i + 1) * blocks / pack_items, xp.get());
  });
  int64_t chunk = (n + tasks * kChunksPerTask - 1) / (tasks * kChunksPerTask);
  chunk = std::max<int64_t>(kNB, (chunk + kNB - 1) / kNB * kNB);
  const int64_t nchunk = (n + chunk - 1) / chunk;
  RunTasks(nchunk, tasks, parallel_for, [&](int64_t i) {
    RunDense(p, dk, xp.get(), i * chunk, std::min(n, (i + 1) * chunk));
  });
}

}  // namespace lutgemm::cpu
