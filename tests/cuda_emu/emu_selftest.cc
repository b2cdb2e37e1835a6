// Self-test of the CUDA emulation (tests/cuda_emu/cuda_emu.h): a barrier really orders shared
// memory between a block's threads, a missing barrier shows up as a wrong result, and a barrier
// that some threads skip is reported as divergent. Built and run by test_cuda_emulation.py.
#include "cuda_emu.h"
// clang-format off: the emulation header must come first
#include <cstdio>

constexpr int kN = 64;

// Each thread writes its id, then (after the barrier, when `sync`) reads its right neighbour's.
__global__ void Rotate(int* out, bool sync) {
  __shared__ int s[kN];
  const int t = threadIdx.x;
  s[t] = t + 1000 * blockIdx.x;
  if (sync) __syncthreads();
  out[blockIdx.x * kN + t] = s[(t + 1) % kN];
  __syncthreads();
  s[t] = -1;  // the next block must not see this block's values
}

// Thread 0 leaves early; the others wait at a barrier: undefined behaviour on a GPU.
__global__ void Divergent(int* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

int main() {
  int out[2 * kN];
  int failures = 0;
  cuda_emu::Launch(Rotate, dim3(2), dim3(kN), out, true);
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < kN; ++t) failures += out[b * kN + t] != (t + 1) % kN + 1000 * b;
  std::printf("with barrier: %d wrong\n", failures);
  cuda_emu::Launch(Rotate, dim3(1), dim3(kN), out, false);
  int wrong = 0;
  for (int t = 0; t < kN; ++t) wrong += out[t] != (t + 1) % kN;
  std::printf("without barrier: %d wrong\n", wrong);
  if (wrong == 0) ++failures;  // the race must be visible
  const long before = cuda_emu::Runner().divergent;
  cuda_emu::Launch(Divergent, dim3(1), dim3(kN), out);
  std::printf("divergent barriers: %ld\n", cuda_emu::Runner().divergent - before);
  if (cuda_emu::Runner().divergent == before) ++failures;
  std::printf("%s\n", failures ? "FAIL" : "OK");
  return failures ? 1 : 0;
}
