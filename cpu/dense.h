// The dense path (large batches): y = x @ W_hat with W_hat dequantized one small tile at a time
// (never a full [K, N] copy) and multiplied with a register-blocked FMA micro-kernel, float32
// throughout. dense.cc drives it; dense_generic.cc, dense_avx2.cc and dense_avx512.cc hold the
// kernels (the AVX-512F ones where the CPU has them, else AVX2, else portable).
#ifndef LUTGEMM_CPU_DENSE_H_
#define LUTGEMM_CPU_DENSE_H_

#include <cstdint>

#include "kernel_common.h"

namespace lutgemm::cpu {

constexpr int kNR = 16;   // columns per micro-panel (two AVX2 vectors of accumulators)
constexpr int kMR = 6;    // rows of x per micro-kernel call (6 x 2 accumulators + 3 = 15 ymm)
constexpr int kNB = 64;   // columns per dequantized tile
constexpr int kKB = 256;  // rows of K per tile (tile = 64 KiB of float32, one micro-panel 16 KiB)
constexpr int kAvx512Rows = 2 * kMR;  // rows of x per AVX-512 micro-kernel call (dense_avx512.cc)
// Rows of x per pass over a tile: their packed x panels of one K tile (kMC x kKB floats, 192 KiB)
// and the tile (64 KiB) fit a 512 KiB L2 together, so every micro-panel reads x from L2 rather
// than re-streaming all M rows from L3 (a multiple of kAvx512Rows and of kMR).
constexpr int kMC = 192;

// A dequantized tile is stored as kNB / kNR micro-panels, each [kKB][kNR] contiguous, so that the
// micro-kernel walks one panel sequentially and the panel (16 KiB) maps onto every L1 set evenly
// (a row stride of kNB floats would crowd it into a quarter of the sets, where x evicts it).
inline int64_t TileIndex(int64_t kk, int64_t c) {
  return (c / kNR) * (kKB * kNR) + kk * kNR + c % kNR;
}

// x is packed once per call into panels of kKB x kMR floats (the kMR rows of a row block
// interleaved per k, zero rows past m), ordered [K tile][row block][kk][kMR]: the broadcasts walk
// one contiguous stream instead of kMR rows K floats apart (which alias in L1 when K is a multiple
// of 1024), and the row blocks of one K tile follow each other in memory, as the micro-kernel
// calls do.
inline int64_t PanelIndex(int64_t blocks, int64_t i, int64_t row) {
  return ((i / kKB * blocks + row / kMR) * kKB + i % kKB) * kMR + row % kMR;
}

// W_hat[k0 .. k0+kc, c0 .. c0+nc] into the micro-panels of wt (TileIndex); columns >= nc are
// zero. kc <= kKB, nc <= kNB, k0 a multiple of kKB.
using TileFn = void (*)(const Prep&, int64_t, int64_t, int64_t, int64_t, float*);
// c[r * ldc + j] += sum_{k < kc} x[r, k] * W[k, j] for r < MR (micro[MR - 1]), j < micro_cols:
// micro_rows / kMR consecutive packed x panels (x[r, k] = xp[(r / kMR) * kKB * kMR + k * kMR +
// r % kMR]) against micro_cols / kNR consecutive micro-panels (W[k, j] = wt[(j / kNR) * kKB * kNR +
// k * kNR + j % kNR]). Each output adds its k terms in order onto c's value.
using MicroFn = void (*)(const float*, const float*, int64_t, float*, int64_t);

struct DenseKernels {
  TileFn tile;
  int micro_rows;  // rows of x per micro-kernel call: kMR, or kAvx512Rows
  int micro_cols;  // columns per call: kNR, or 2 * kNR
  MicroFn micro[kAvx512Rows];
};

// The generic dequantization (any tile; the AVX2 twin's partial tiles use it too).
void DequantTileGeneric(const Prep& p, int64_t k0, int64_t kc, int64_t c0, int64_t nc, float* wt);
DenseKernels DenseKernelsGeneric();
// AVX2 kernels for p's alpha dtype and q (the dequantization keeps q planes in registers).
DenseKernels DenseKernelsAvx2(const Prep& p);
// Whether the AVX-512F micro-kernel can run (CPUID) and is not turned off by LUTGEMM_CPU_ISA=avx2.
bool DenseAvx512Usable();
bool DenseAvx512Supported();  // CPUID only, ignoring LUTGEMM_CPU_ISA
// Replaces dk's kernels by the AVX-512F ones for p's alpha dtype and q: the 16-column
// dequantization and the 12 x 32 micro-kernel (dense_avx512.cc).
void SetKernelsAvx512(const Prep& p, DenseKernels& dk);

// Computes y for every row of x (p.op) on the dense path.
void RunDensePath(const Prep& p, Isa isa, int64_t max_tasks, const ParallelFor& parallel_for);

}  // namespace lutgemm::cpu

#endif  // LUTGEMM_CPU_DENSE_H_
