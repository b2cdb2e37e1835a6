// LUT-GEMM CUDA kernels: y = x @ W_hat for packed BCQ weights, computed with lookup tables.
//
// This header holds device code only (kernels and __device__ helpers). It is compiled by nvcc for
// the extension (cuda/lut_gemm_cuda.cu) and, unchanged, by g++ under the CUDA-emulation header
// tests/cuda_emu/cuda_emu.h for the CPU tests. Host launch glue lives in lut_gemm_launch.h.
//
// ---- LutGemmKernel<QMAX, MT, G16>: the lookup-table path (decode, M <= 8 rows per block) --------
// Grid:  x = ceil(N / 512) column tiles, y = split-K slices, z = ceil(M / MT) row tiles.
// Block: 128 threads (4 warps). Thread t owns the 4 adjacent output columns
//        col0 = 512 * blockIdx.x + 4 t .. col0 + 3 for MT rows of x, in float32 registers
//        (acc[MT][4]). A warp therefore covers 128 consecutive columns, i.e. one 512-byte fully
//        coalesced row segment of bits[kw][i][:] per bit-plane: each thread reads its 4 words
//        [kw, i, col0..col0+3] with ONE 128-bit load (uint4; scalar fallback when N % 4 != 0 or
//        at the ragged right edge).
// K loop: the block walks its K slice (words w_begin .. w_end of 32 k each) in tiles of
//        TW = 8 / MT words. Per tile (three barriers):
//          1. stage x[row0 .. row0+MT)[32*t0 .. 32*(t0+TW)) into shared memory as float32,
//             zero beyond K (padding rows contribute nothing) and beyond M;
//          2. build the TW*4 lookup tables (one per 8 activations) cooperatively:
//             T[c][p][r] = sum_j (bit_j(p) ? +1 : -1) * x[r][8c + j], float32; thread t computes
//             entries p = t and p = t + 128 of every table (8 FMAs per entry and row, the +-1
//             signs precomputed in registers); the MT rows of one entry are adjacent so a
//             lookup fetches all rows with one 16-byte (MT >= 4) / 8-byte / 4-byte shared load;
//          3. for each word of the tile: load the q bit-plane words (uint4 each, all issued
//             before use), reload alpha [4 columns][q] (and offset) only when the group changes,
//             then per plane and column 4 table lookups (one per byte) summed in float32 and
//             multiplied by alpha into acc; the offset term adds offset * (sum of x over the
//             word) = offset * sum_b T[b][255].
// Groups: g >= 32 spans whole words (a group changes between words only). g = 16 (G16) splits
//        every word into two segments, bytes 0-1 (group 2w) and bytes 2-3 (group 2w + 1): each
//        segment loads its group's scales and sums its 2 lookups per plane before the alpha
//        FMA. A table covers one byte, so no table straddles a group boundary, and every K
//        slice of the split-K plan (whole words) starts and ends on a group boundary.
// Uniform weights (alpha [G, 1, N]): one scale load per group and column; plane i's scale is
//        that value times 2^i (exact), computed at the reload, so the lookup loop is unchanged.
// Output: with one K slice the block converts acc to x's dtype and writes y; with S > 1 slices
//        it writes float32 partials [S][M][N] into the workspace (a second result of the custom
//        call, allocated by XLA, S chosen statically by the lowering) and LutGemmReduceKernel
//        sums the S slices in a fixed order (deterministic; no atomics anywhere).
// Shared memory (static): tables TW*4*256*MT floats = 8192 floats = 32 KiB for every MT, plus
//        the x stage TW*32*MT = 256 floats = 1 KiB: 33 KiB per block, so up to 6 blocks (24
//        warps) per H100 SM and 5 per A100 SM.
// Bytes moved (batch M, K x N weight, q planes, G groups, 2-byte alpha/offset): bits
//        K*N*q/8 (read exactly once over the grid) + alpha/offset G*N*(q[+1])*2 (once per group
//        per column) + x M*K*2 per column tile (ceil(N/512) times, L2-resident) + y M*N*2;
//        with S slices also 2*S*M*N*4 of float32 partials (L2-resident for decode shapes).
//        E.g. 12288 x 12288, q=3, g=128, M=1: 56.6 MB bits + 7.1 MB alpha = 63.7 MB, 19 us at
//        3.35 TB/s.
// Templates: QMAX = 1..4 is q exactly (fully unrolled); QMAX = 8 serves q = 5..8 at run time
//        (unrolled to 8 with a uniform `i < q` predicate so register arrays keep constant
//        indices). MT in {1, 2, 4, 8}: rows per block (M rounded up to a power of two). G16:
//        g = 16 (a compile-time segment count keeps the g >= 32 kernels' inner loop as it is).
//
// ---- LutGemmReduceKernel: y[m][n] = sum_{s=0..S-1} partial[s][m][n] in order, cast to y's dtype.
// ---- DequantKernel: W[k][n] (k < K) = sum_i alpha*s_i + offset in the output dtype, one thread
//        per (word, column): q word loads, the scales of the word's one group (two for g = 16,
//        one per 16 rows), 32 coalesced row stores. Used for the large-M path (dequantize + XLA
//        dot on tensor cores).
#ifndef LUTGEMM_CUDA_LUT_GEMM_KERNEL_CUH_
#define LUTGEMM_CUDA_LUT_GEMM_KERNEL_CUH_

#include <cstdint>

#include "lut_gemm_types.h"
#include "lutgemm/bcq_format.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace lutgemm::cuda {

__device__ __forceinline__ float LoadAsFloat(const void* p, int64_t i, int type) {
  if (type == kF32) return static_cast<const float*>(p)[i];
  if (type == kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  return __half2float(static_cast<const __half*>(p)[i]);
}

__device__ __forceinline__ void StoreFromFloat(void* p, int64_t i, int type, float v) {
  if (type == kF32) {
    static_cast<float*>(p)[i] = v;
  } else if (type == kBF16) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  }
}

// The 4 bits words [w, plane, col0 .. col0+3]; columns >= N read as 0 (never stored).
__device__ __forceinline__ uint4 LoadBits(const LutGemmArgs& a, int w, int plane, int col0,
                                          bool vec) {
  const uint32_t* row = a.bits + (static_cast<int64_t>(w) * a.q + plane) * a.n;
  if (vec) return *reinterpret_cast<const uint4*>(row + col0);  // 128-bit load
  uint4 r;
  r.x = row[col0];
  r.y = col0 + 1 < a.n ? row[col0 + 1] : 0u;
  r.z = col0 + 2 < a.n ? row[col0 + 2] : 0u;
  r.w = col0 + 3 < a.n ? row[col0 + 3] : 0u;
  return r;
}

__device__ __forceinline__ uint32_t Lane(const uint4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// The scales of planes 0 .. q-1 of (group grp, column col) into al: alpha [G, q, N], or, when
// uniform, alpha [G, 1, N] with plane i's scale alpha * 2^i (one load; the power-of-two multiple
// is exact in float32).
template <int QMAX>
__device__ __forceinline__ void LoadPlaneScales(const void* alpha, int a_type, bool uniform, int q,
                                                int grp, int n, int col, float (&al)[QMAX]) {
  if (uniform) {
    const float a0 = LoadAsFloat(alpha, static_cast<int64_t>(grp) * n + col, a_type);
#pragma unroll
    for (int i = 0; i < QMAX; ++i)
      if (i < q) al[i] = a0 * static_cast<float>(1 << i);
  } else {
#pragma unroll
    for (int i = 0; i < QMAX; ++i)
      if (i < q) al[i] = LoadAsFloat(alpha, (static_cast<int64_t>(grp) * q + i) * n + col, a_type);
  }
}

// Adds the MT rows stored at p (one table entry) to s, with one wide shared-memory load.
template <int MT>
__device__ __forceinline__ void AddRows(const float* p, float (&s)[MT]) {
  if constexpr (MT % 4 == 0) {
#pragma unroll
    for (int r = 0; r < MT; r += 4) {
      const float4 v = reinterpret_cast<const float4*>(p)[r / 4];
      s[r] += v.x;
      s[r + 1] += v.y;
      s[r + 2] += v.z;
      s[r + 3] += v.w;
    }
  } else if constexpr (MT == 2) {
    const float2 v = *reinterpret_cast<const float2*>(p);
    s[0] += v.x;
    s[1] += v.y;
  } else {
    s[0] += p[0];
  }
}

// Stores the MT rows of one table entry with one wide shared-memory store.
template <int MT>
__device__ __forceinline__ void StoreRows(float* p, const float (&v)[MT]) {
  if constexpr (MT % 4 == 0) {
#pragma unroll
    for (int r = 0; r < MT; r += 4)
      reinterpret_cast<float4*>(p)[r / 4] = make_float4(v[r], v[r + 1], v[r + 2], v[r + 3]);
  } else if constexpr (MT == 2) {
    *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
  } else {
    p[0] = v[0];
  }
}

// Minimum resident blocks per SM promised to ptxas, which caps registers per thread at
// 65536 / (kThreads * blocks). Decode shapes (MT = 1, q <= 4) get 5 blocks = 20 warps (<= 102
// registers; 5 * 33 KiB of shared memory fits a Hopper SM) to hide the latency of the weight
// stream; 2-4 rows with q <= 4 get 3; the largest register sets (8 rows, or the generic-q
// kernel) get 1, i.e. no cap, which keeps them free of spills (ptxas -v in docs/cuda.md).
template <int QMAX, int MT>
constexpr int MinBlocksPerSm() {
  return QMAX <= 4 && MT == 1 ? 5 : QMAX <= 4 && MT <= 4 ? 3 : 1;
}

template <int QMAX, int MT, bool G16>
__global__ void __launch_bounds__(kThreads, (MinBlocksPerSm<QMAX, MT>()))
    LutGemmKernel(const LutGemmArgs a) {
  constexpr int TW = kTileRowWords / MT;  // words per K tile
  constexpr int kTileK = TW * kWordBits;
  // Segments of a word with one group each: g = 16 splits a word into two halves of 2 bytes
  // (2 tables), g >= 32 keeps it whole. A table indexes one byte, so it never straddles groups.
  constexpr int kSegs = G16 ? 2 : 1;
  constexpr int kSegBytes = kBytesPerWord / kSegs;
  __shared__ __align__(16) float tables[kTableFloats];  // [TW*4][256][MT]
  __shared__ __align__(16) float xs[kStageFloats];      // [MT][TW*32]

  const int tid = threadIdx.x;
  const int q = QMAX <= 4 ? QMAX : a.q;
  const int col0 = blockIdx.x * kColsPerBlock + tid * kColsPerThread;
  const int row0 = blockIdx.z * MT;
  const int w_begin = blockIdx.y * a.words_per_split;
  const int w_end = min(a.num_words, w_begin + a.words_per_split);
  const bool active = col0 < a.n;
  const bool vec = a.n % kColsPerThread == 0;  // then col0 < n implies col0 + 3 < n
  const bool has_offset = a.offset != nullptr;

  // +-1 signs of this thread's two table entries p0 = tid, p1 = tid + 128.
  float sign0[kTableBits], sign1[kTableBits];
#pragma unroll
  for (int j = 0; j < kTableBits; ++j) {
    sign0[j] = (tid >> j) & 1 ? 1.f : -1.f;
    sign1[j] = ((tid + kThreads) >> j) & 1 ? 1.f : -1.f;
  }

  float acc[MT][kColsPerThread];
  float al[kColsPerThread][QMAX];
  float off[kColsPerThread];
#pragma unroll
  for (int c = 0; c < kColsPerThread; ++c) {
    off[c] = 0.f;
#pragma unroll
    for (int r = 0; r < MT; ++r) acc[r][c] = 0.f;
#pragma unroll
    for (int i = 0; i < QMAX; ++i) al[c][i] = 0.f;
  }
  int group = -1;

  for (int t0 = w_begin; t0 < w_end; t0 += TW) {
    const int nw = min(TW, w_end - t0);
    __syncthreads();  // the previous tile's tables are no longer read
    // 1. Stage x as float32, zero beyond K and M.
    for (int e = tid; e < MT * kTileK; e += kThreads) {
      const int r = e / kTileK, kk = t0 * kWordBits + e % kTileK;
      const int row = row0 + r;
      xs[e] = row < a.m && kk < a.k
                  ? LoadAsFloat(a.x, static_cast<int64_t>(row) * a.k + kk, a.x_type)
                  : 0.f;
    }
    __syncthreads();
    // 2. Build the tables: entries tid and tid + 128 of each of the tile's nw*4 tables.
    for (int c = 0; c < nw * kBytesPerWord; ++c) {
      float v0[MT], v1[MT];
#pragma unroll
      for (int r = 0; r < MT; ++r) {
        const float* xr = xs + r * kTileK + c * kTableBits;
        v0[r] = 0.f;
        v1[r] = 0.f;
#pragma unroll
        for (int j = 0; j < kTableBits; ++j) {
          v0[r] = fmaf(sign0[j], xr[j], v0[r]);
          v1[r] = fmaf(sign1[j], xr[j], v1[r]);
        }
      }
      float* t = tables + (c * kTableSize + tid) * MT;
      StoreRows<MT>(t, v0);
      StoreRows<MT>(t + kThreads * MT, v1);
    }
    __syncthreads();
    // 3. Look up.
    if (active) {
      for (int w = t0; w < t0 + nw; ++w) {
        uint4 words[QMAX];
#pragma unroll
        for (int i = 0; i < QMAX; ++i)
          if (i < q) words[i] = LoadBits(a, w, i, col0, vec);
        const float* tw = tables + (w - t0) * kBytesPerWord * kTableSize * MT;
#pragma unroll
        for (int h = 0; h < kSegs; ++h) {
          const int grp = G16 ? 2 * w + h : w / a.words_per_group;
          if (G16 || grp != group) {  // alpha (and offset) once per group
            group = grp;
#pragma unroll
            for (int c = 0; c < kColsPerThread; ++c) {
              const int col = min(col0 + c, a.n - 1);  // ragged edge: a valid, unused column
              LoadPlaneScales<QMAX>(a.alpha, a.a_type, a.uniform, q, grp, a.n, col, al[c]);
              if (has_offset)
                off[c] = LoadAsFloat(a.offset, static_cast<int64_t>(grp) * a.n + col, a.a_type);
            }
          }
          const float* ts = tw + h * kSegBytes * kTableSize * MT;  // the segment's tables
          if (has_offset) {  // offset * sum(x over the segment) = offset * sum_b T[b][255]
            float xsum[MT];
#pragma unroll
            for (int r = 0; r < MT; ++r) xsum[r] = 0.f;
#pragma unroll
            for (int b = 0; b < kSegBytes; ++b)
              AddRows<MT>(ts + (b * kTableSize + kTableSize - 1) * MT, xsum);
#pragma unroll
            for (int c = 0; c < kColsPerThread; ++c)
#pragma unroll
              for (int r = 0; r < MT; ++r) acc[r][c] = fmaf(off[c], xsum[r], acc[r][c]);
          }
#pragma unroll
          for (int i = 0; i < QMAX; ++i) {
            if (i < q) {
#pragma unroll
              for (int c = 0; c < kColsPerThread; ++c) {
                const uint32_t seg = Lane(words[i], c) >> (kWordBits / kSegs * h);
                float s[MT];
#pragma unroll
                for (int r = 0; r < MT; ++r) s[r] = 0.f;
#pragma unroll
                for (int b = 0; b < kSegBytes; ++b)
                  AddRows<MT>(ts + (b * kTableSize + ((seg >> (8 * b)) & 0xffu)) * MT, s);
#pragma unroll
                for (int r = 0; r < MT; ++r) acc[r][c] = fmaf(al[c][i], s[r], acc[r][c]);
              }
            }
          }
        }
      }
    }
  }

  // Epilogue: y (one slice) or float32 partials (split-K).
  if (active) {
#pragma unroll
    for (int r = 0; r < MT; ++r) {
      const int row = row0 + r;
      if (row < a.m) {
#pragma unroll
        for (int c = 0; c < kColsPerThread; ++c) {
          const int col = col0 + c;
          if (col < a.n) {
            const int64_t idx = static_cast<int64_t>(row) * a.n + col;
            if (gridDim.y == 1) {
              StoreFromFloat(a.y, idx, a.x_type, acc[r][c]);
            } else {
              a.partial[static_cast<int64_t>(blockIdx.y) * a.m * a.n + idx] = acc[r][c];
            }
          }
        }
      }
    }
  }
}

// y[i] = sum_s partial[s][i] for s = 0 .. splits-1 in order, i < m*n; cast to y's dtype.
__global__ void __launch_bounds__(kReduceThreads)
    LutGemmReduceKernel(const float* partial, void* y, int64_t count, int splits, int y_type) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (i < count) {
    float sum = 0.f;
    for (int s = 0; s < splits; ++s) sum += partial[s * count + i];
    StoreFromFloat(y, i, y_type, sum);
  }
}

// W[k][n] for k < K: one thread per (word kw = blockIdx.y, column n).
__global__ void __launch_bounds__(kDequantThreads) DequantKernel(const DequantArgs a) {
  const int n = blockIdx.x * kDequantThreads + threadIdx.x;
  const int kw = blockIdx.y;
  if (n < a.n) {
    uint32_t words[kMaxBits];
#pragma unroll
    for (int i = 0; i < kMaxBits; ++i)
      if (i < a.q) words[i] = a.bits[(static_cast<int64_t>(kw) * a.q + i) * a.n + n];
    // g = 16: rows 0-15 of the word are group 2 kw, rows 16-31 group 2 kw + 1.
    const int segs = a.group_size < kWordBits ? 2 : 1;
    const int seg_rows = kWordBits / segs;
    const int t_end = min(kWordBits, a.k - kw * kWordBits);  // rows >= K are padding
    for (int h = 0; h < segs; ++h) {
      const int grp = segs == 2 ? 2 * kw + h : kw / a.words_per_group;
      const float off = a.offset != nullptr
                            ? LoadAsFloat(a.offset, static_cast<int64_t>(grp) * a.n + n, a.a_type)
                            : 0.f;
      float al[kMaxBits];
      LoadPlaneScales<kMaxBits>(a.alpha, a.a_type, a.uniform, a.q, grp, a.n, n, al);
      for (int t = h * seg_rows; t < min(t_end, (h + 1) * seg_rows); ++t) {
        float v = off;
#pragma unroll
        for (int i = 0; i < kMaxBits; ++i)
          if (i < a.q) v += (words[i] >> t) & 1u ? al[i] : -al[i];
        StoreFromFloat(a.w, static_cast<int64_t>(kw * kWordBits + t) * a.n + n, a.w_type, v);
      }
    }
  }
}

}  // namespace lutgemm::cuda

#endif  // LUTGEMM_CUDA_LUT_GEMM_KERNEL_CUH_
