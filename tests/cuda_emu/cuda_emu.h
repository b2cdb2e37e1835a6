// A small CUDA emulation for running the project's CUDA kernels on the CPU (tests only).
//
// Include this before the kernel source; compile with g++ (C++17). What it provides:
//  * the CUDA keywords (__global__, __device__, __host__, __forceinline__, __launch_bounds__,
//    __align__) as plain C++; `__shared__` becomes `static`, so one instance per kernel
//    instantiation is shared by all threads of the block being run (blocks run one at a time);
//  * threadIdx / blockIdx / blockDim / gridDim, dim3, uint4 / float4 / float2, cudaStream_t;
//  * __half / __nv_bfloat16 as 16-bit storage types with the CUDA conversion functions
//    (round-to-nearest-even, NaN kept; via include/lutgemm/dtypes.h), fmaf, min;
//  * EmuLaunch(kernel, grid, block, args...): runs the grid block by block. A block's threads are
//    ucontext fibers on the calling OS thread; __syncthreads() yields to a scheduler that resumes
//    the next fiber only after every thread of the block reached the barrier (a real barrier:
//    no thread passes it before all arrived). A barrier reached by only some threads (others
//    exited) is reported as an error, as it would be undefined behaviour on a GPU.
// The kernel source bends only through LUTGEMM_LAUNCH (defined here to call EmuLaunch).
// Not emulated (the kernels do not use them): warp intrinsics, atomics, dynamic shared memory.
#ifndef LUTGEMM_TESTS_CUDA_EMU_H_
#define LUTGEMM_TESTS_CUDA_EMU_H_

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#include "lutgemm/dtypes.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint4 {
  uint32_t x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline float2 make_float2(float x, float y) { return {x, y}; }
using cudaStream_t = void*;

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return lutgemm::F16ToFloat(h.bits); }
inline float __bfloat162float(__nv_bfloat16 h) { return lutgemm::Bf16ToFloat(h.bits); }
inline __half __float2half_rn(float f) { return {lutgemm::FloatToF16(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return {lutgemm::FloatToBf16(f)}; }
inline int min(int a, int b) { return a < b ? a : b; }
using std::fmaf;

namespace cuda_emu {

struct Fiber {
  ucontext_t ctx;
  std::vector<char> stack;
  bool done = false;
};

struct BlockRunner {
  static constexpr size_t kStack = 256 * 1024;
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::function<void()> body;
  int current = 0;
  long barriers = 0;       // barrier rounds completed (all launches)
  long divergent = 0;      // barriers not reached by every thread
};

inline BlockRunner& Runner() {
  static BlockRunner runner;
  return runner;
}

inline void SetThread(int t) {
  const unsigned bx = blockDim.x, by = blockDim.y;
  threadIdx = dim3(t % bx, (t / bx) % by, t / (bx * by));
}

inline void Trampoline() {
  BlockRunner& r = Runner();
  r.body();
  r.fibers[r.current].done = true;
  // returning resumes uc_link (the scheduler)
}

// Runs one block: every fiber until it reaches a barrier or ends, round after round.
inline void RunBlock(int threads) {
  BlockRunner& r = Runner();
  if (static_cast<int>(r.fibers.size()) < threads) r.fibers.resize(threads);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = r.fibers[t];
    f.stack.resize(BlockRunner::kStack);
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = &r.scheduler;
    makecontext(&f.ctx, Trampoline, 0);
  }
  for (;;) {
    int waiting = 0;
    for (int t = 0; t < threads; ++t) {
      if (r.fibers[t].done) continue;
      r.current = t;
      SetThread(t);
      swapcontext(&r.scheduler, &r.fibers[t].ctx);
      if (!r.fibers[t].done) ++waiting;
    }
    if (waiting == 0) return;
    ++r.barriers;
    if (waiting != threads) ++r.divergent;  // some threads exited while others wait
  }
}

template <class Kernel, class... Args>
void Launch(Kernel kernel, dim3 grid, dim3 block, Args... args) {
  BlockRunner& r = Runner();
  gridDim = grid;
  blockDim = block;
  r.body = [&]() { kernel(args...); };
  const int threads = static_cast<int>(block.x * block.y * block.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        RunBlock(threads);
      }
}

}  // namespace cuda_emu

inline void __syncthreads() {
  cuda_emu::BlockRunner& r = cuda_emu::Runner();
  swapcontext(&r.fibers[r.current].ctx, &r.scheduler);
  cuda_emu::SetThread(r.current);  // the scheduler ran other threads meanwhile
}

#define LUTGEMM_LAUNCH(kernel, grid, block, stream, ...) \
  ((void)(stream), cuda_emu::Launch(kernel, grid, block, __VA_ARGS__))

// Coverage builds (-DLUTGEMM_EMU_COVERAGE --coverage) flush counters on demand: the library is
// loaded into the test process, which does not exit between the run and the gcov report.
#if defined(LUTGEMM_EMU_COVERAGE)
extern "C" void __gcov_dump(void);
#endif

#endif  // LUTGEMM_TESTS_CUDA_EMU_H_
