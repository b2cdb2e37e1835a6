// Run-time ISA detection (CPUID) and the LUTGEMM_CPU_ISA override (portable | avx2 | avx512). The
// kernels' AVX2 twins (and the AVX-512 lookup kernel) are compiled with per-function target
// attributes, so the library loads on any x86-64 and uses them only where this says the CPU has
// AVX2 + FMA + F16C (and AVX-512 F/BW/VL/VBMI/VNNI).
#include <cstdlib>
#include <string>

#include "lut.h"
#include "lut_gemm_cpu.h"

namespace lutgemm::cpu {

bool IsaSupported(Isa isa) {
  if (isa == Isa::kPortable) return true;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

Isa SelectIsa() {
  static const bool avx2 = IsaSupported(Isa::kAvx2);
  const char* env = std::getenv("LUTGEMM_CPU_ISA");
  if (env != nullptr && std::string(env) == "portable") return Isa::kPortable;
  return avx2 ? Isa::kAvx2 : Isa::kPortable;
}

bool Avx512Allowed() {
  // LUTGEMM_CPU_ISA=avx2 (or portable) keeps the AVX2 kernels, e.g. to test them on such a CPU.
  const char* env = std::getenv("LUTGEMM_CPU_ISA");
  return env == nullptr || (std::string(env) != "avx2" && std::string(env) != "portable");
}

bool Avx512LookupsSupported() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return IsaSupported(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
  }();
  return supported;
#else
  return false;
#endif
}

bool Avx512Lookups() { return Avx512LookupsSupported() && Avx512Allowed(); }

}  // namespace lutgemm::cpu
