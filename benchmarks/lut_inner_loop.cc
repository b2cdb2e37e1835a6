// The fast CPU kernel's table work in isolation: where its time goes, and what alternatives to
// its inner loop would buy. No library code; each variant re-implements one step of FastAvx2
// (cpu/lut_avx2.cc) on synthetic data so that it can be timed alone.
//
//   g++ -O3 -std=c++17 -mavx2 -o /tmp/lut_inner_loop benchmarks/lut_inner_loop.cc
//   /tmp/lut_inner_loop l1                 # table work on L1-resident sign words, 3 variants
//   /tmp/lut_inner_loop rows STRIDE        # 12 rows of sign words STRIDE bytes apart, 2 orders
//
// One "word" is the kernel's unit of work: 32 columns x one 32-bit sign word (8 chunks of 4
// activations) of one plane, i.e. 4 x 32 bytes of sign bits and 256 int8 table lookups.
//
// l1 variants (sign words and tables in L1, so only the instructions count):
//   current: tables broadcast to both lanes (vbroadcasti128), vpshufb, then the two lookups of a
//            byte interleaved (vpunpck{l,h}bw) and summed into int16 by vpmaddubsw.
//   dup:     as current, with each table stored twice (plain 32-byte loads, no broadcast).
//   split:   tables biased to unsigned; per lookup vector the int16 words are added whole and the
//            odd bytes are split off with vpmaddubsw (even = total - 256 * odd), no unpacks.
// rows orders (3 planes x 4 words = 12 rows of blocks, the kernel's scale block of g = 128):
//   block:   per 32-column block all 12 rows (the kernel's order), each row prefetched 4 blocks
//            ahead; 12 short streams that alias in L1 when STRIDE is a power of two.
//   rows:    per group of 32 blocks each row in turn (int16 sums in memory), the row's next group
//            prefetched; long sequential runs per row.
// Run `rows` with 12 * STRIDE above the 32 MiB L3 (STRIDE = 4194304) for cold weights, and two
// copies at once to load both cores as the kernel does.
#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr int kRows = 12;      // q = 3 planes x 4 words per scale block
constexpr int kGroup = 32;     // blocks per row visit in the `rows` order
constexpr int kAhead = 4;      // prefetch distance of the `block` order, in blocks

// Core clock, from a chain of dependent adds (one per cycle).
double ClockHz() {
  const int64_t n = 200'000'000;
  int64_t x = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; ++i)
    asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return 4.0 * n / s;
}

enum class Variant { kCurrent, kDup, kSplit };

// Adds the lookups of one word (4 x 32 bytes at `bits`, tables at `t`) to the int16 sums a0, a1.
template <Variant V>
inline void Word(const uint8_t* bits, const int8_t* t, __m256i& a0, __m256i& a1) {
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi8(1);
  const __m256i odd_byte = _mm256_set1_epi16(0x0100);
  for (int j = 0; j < 4; ++j) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + 32 * j));
    const __m256i lo = _mm256_and_si256(b, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
    __m256i tlo, thi;
    if constexpr (V == Variant::kDup) {
      tlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 64 * j));
      thi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 64 * j + 32));
    } else {
      tlo = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 32 * j)));
      thi = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + 32 * j + 16)));
    }
    const __m256i l = _mm256_shuffle_epi8(tlo, lo), h = _mm256_shuffle_epi8(thi, hi);
    if constexpr (V == Variant::kSplit) {
      a0 = _mm256_add_epi16(a0, _mm256_add_epi16(l, h));
      a1 = _mm256_add_epi16(a1, _mm256_add_epi16(_mm256_maddubs_epi16(l, odd_byte),
                                                 _mm256_maddubs_epi16(h, odd_byte)));
    } else {
      a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(ones, _mm256_unpacklo_epi8(l, h)));
      a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(ones, _mm256_unpackhi_epi8(l, h)));
    }
  }
}

// `words` words over 16 blocks of sign words and 16 sets of tables (4 KiB in all: L1).
template <Variant V>
__attribute__((noinline)) int64_t L1Words(const uint8_t* bits, const int8_t* tables, int64_t words) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0;
  for (int64_t w = 0; w < words; ++w) Word<V>(bits + (w & 15) * 128, tables + (w & 15) * 256, a0, a1);
  return _mm256_extract_epi64(_mm256_xor_si256(a0, a1), 0);
}

// One pass over kRows rows of `blocks` 128-byte blocks, `stride` bytes apart, in either order.
__attribute__((noinline)) int64_t RowsPass(const uint8_t* bits, const int8_t* t, int64_t stride,
                                           int64_t blocks, bool by_rows) {
  __m256i s = _mm256_setzero_si256();
  if (!by_rows) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int i = 0; i < 3; ++i) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0;
        for (int w = 0; w < 4; ++w) {
          const uint8_t* at = bits + (w * 3 + i) * stride + b * 128;
          if (b + kAhead < blocks) {
            _mm_prefetch(reinterpret_cast<const char*>(at + kAhead * 128), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(at + kAhead * 128 + 64), _MM_HINT_T0);
          }
          Word<Variant::kCurrent>(at, t + w * 128, a0, a1);
        }
        s = _mm256_add_epi16(s, _mm256_xor_si256(a0, a1));
      }
    return _mm256_extract_epi64(s, 0);
  }
  alignas(32) __m256i acc[3][kGroup][2];
  for (int64_t b0 = 0; b0 + kGroup <= blocks; b0 += kGroup) {
    std::memset(acc, 0, sizeof(acc));
    for (int i = 0; i < 3; ++i)
      for (int w = 0; w < 4; ++w) {
        const uint8_t* row = bits + (w * 3 + i) * stride + b0 * 128;
        for (int b = 0; b < kGroup; ++b) {
          if (b0 + kGroup + b < blocks) {
            _mm_prefetch(reinterpret_cast<const char*>(row + (kGroup + b) * 128), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(row + (kGroup + b) * 128 + 64), _MM_HINT_T0);
          }
          Word<Variant::kCurrent>(row + b * 128, t + w * 128, acc[i][b][0], acc[i][b][1]);
        }
      }
    for (int i = 0; i < 3; ++i)
      for (int b = 0; b < kGroup; ++b) s = _mm256_add_epi16(s, _mm256_xor_si256(acc[i][b][0], acc[i][b][1]));
  }
  return _mm256_extract_epi64(s, 0);
}

// Fastest of `trials` timings of fn(), in seconds.
template <typename F>
double Fastest(int trials, F fn) {
  double best = 1e30;
  for (int t = 0; t < trials; ++t) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::strcmp(argv[1], "l1") != 0 && std::strcmp(argv[1], "rows") != 0) ||
      (std::strcmp(argv[1], "rows") == 0 && (argc < 3 || std::atoll(argv[2]) < 128 * kGroup))) {
    std::fprintf(stderr, "usage: %s l1 | rows STRIDE (>= %d bytes)\n", argv[0], 128 * kGroup);
    return 2;
  }
  std::mt19937 rng(0);
  const double hz = ClockHz();
  std::vector<int8_t> tables(16 * 256);
  for (auto& v : tables) v = static_cast<int8_t>(rng());
  volatile int64_t sink = 0;
  if (std::strcmp(argv[1], "l1") == 0) {
    std::vector<uint8_t> bits(16 * 128);
    for (auto& v : bits) v = static_cast<uint8_t>(rng());
    const int64_t words = 20'000'000;
    const char* names[] = {"current", "dup", "split"};
    int64_t (*fns[])(const uint8_t*, const int8_t*, int64_t) = {
        L1Words<Variant::kCurrent>, L1Words<Variant::kDup>, L1Words<Variant::kSplit>};
    for (int v = 0; v < 3; ++v) {
      const double s = Fastest(7, [&] { sink = sink + fns[v](bits.data(), tables.data(), words); });
      std::printf("l1 %-8s %.2f cycles/word (clock %.2f GHz)\n", names[v], s * hz / words, hz / 1e9);
    }
    return 0;
  }
  const int64_t stride = std::atoll(argv[2]) / (128 * kGroup) * (128 * kGroup);
  const int64_t blocks = stride / 128;  // a multiple of kGroup
  std::vector<uint8_t> bits(kRows * stride);
  for (auto& v : bits) v = static_cast<uint8_t>(rng());
  const double words = static_cast<double>(kRows) * blocks;
  for (int by_rows = 0; by_rows < 2; ++by_rows) {
    const double s = Fastest(5, [&] {
      sink = sink + RowsPass(bits.data(), tables.data(), stride, blocks, by_rows);
    });
    std::printf("rows stride %lld %-5s %.2f cycles/word, %.1f GB/s of sign words (clock %.2f GHz)\n",
                static_cast<long long>(stride), by_rows ? "rows" : "block", s * hz / words,
                words * 128 / s / 1e9, hz / 1e9);
  }
  return 0;
}
