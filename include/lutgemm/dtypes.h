// Element types of the kernels' operands, and scalar conversions between float32 and the 16-bit
// float storage types, host side. Shared by the CPU and the CUDA kernels and their FFI handlers.
// Portable bit manipulation (no F16C/AVX needed) so that every code path can use them.
#ifndef LUTGEMM_DTYPES_H_
#define LUTGEMM_DTYPES_H_

#include <cmath>
#include <cstdint>
#include <cstring>

namespace lutgemm {

// Element type of x, y, alpha, offset (and the CUDA path's dequantized weight). Unscoped with a
// fixed int representation because the CUDA kernels receive it as an int field of their
// argument structs and compare it with the enumerators.
enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

inline float Bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round-to-nearest-even; NaN stays NaN (quiet bit forced).
inline uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  float f;
  if (exp == 0) {  // zero or subnormal: man * 2^-24
    f = std::ldexp(static_cast<float>(man), -24);
    return sign ? -f : f;
  }
  uint32_t u = exp == 0x1f ? (sign | 0x7f800000u | (man << 13))            // Inf/NaN
                           : (sign | ((exp + 112u) << 23) | (man << 13));  // normal
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Round-to-nearest-even, with overflow to Inf and gradual underflow.
inline uint16_t FloatToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: Inf
  if (abs < 0x38800000u) {                        // below 2^-14: subnormal or zero
    const float scaled = std::fabs(f) * 16777216.0f;  // exact: units of 2^-24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

}  // namespace lutgemm

#endif  // LUTGEMM_DTYPES_H_
