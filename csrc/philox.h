// Philox4x32-10 counter-based RNG: the C++/CUDA twin of analogtrain/ops/rng.py (header only).
//
// A random number is a pure function of (seed, counter), so the torch reference, this CPU kernel and
// the CUDA kernel draw the SAME numbers for the same seed and offset, whatever the thread layout.
// Counter layout (the contract of rng.py, word for word):
//
//     key     = (seed & 0xFFFFFFFF, seed >> 32)
//     counter = (c0 = a, c1 = (stream << 24) | block, c2 = b, c3 = offset & 0xFFFFFFFF)
//
// Draw k of an (a, b, stream) sequence uses block = k / 4 and word k % 4.
//   uniform: u = float(((r >> 8) + 0.5) * 2^-24)   (evaluated in double, rounded to float)
//   normal : Box–Muller in double on the word pairs (r0, r1) -> draws 0 (cos), 1 (sin) and
//            (r2, r3) -> draws 2 (cos), 3 (sin), rounded to float.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define AT_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define AT_HD inline __attribute__((always_inline))  // hot helpers: never a PLT call from the .so
#else
#define AT_HD inline
#endif

namespace analogtrain {

// Stream ids (analogtrain.ops.rng.Stream; append only).
enum StreamId : uint32_t {
  S_X_TRAIN = 1,
  S_D_TRAIN = 2,
  S_PULSE_NOISE = 3,
  S_WRITE_NOISE = 4,
  S_PROB_ROUND = 5,
  S_CHOPPER = 6,
  S_TRANSFER_NOISE = 7,
};

struct Philox4 {
  uint32_t r[4];
};

AT_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// Philox4x32 with 10 rounds (Random123 constants); returns the four output words.
AT_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t seed) {
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0;
    const uint32_t n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;  // the key bump after the last round is unused, harmless
    k1 += 0xBB67AE85u;
  }
  Philox4 out;
  out.r[0] = c0;
  out.r[1] = c1;
  out.r[2] = c2;
  out.r[3] = c3;
  return out;
}

// The block of draws `block` (draws 4*block .. 4*block+3) of the (a, b, stream) sequence.
AT_HD Philox4 philox_block(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t a, uint32_t b,
                           uint32_t block) {
  return philox4x32_10(a, ((stream & 0xFFu) << 24) | (block & 0xFFFFFFu), b,
                       static_cast<uint32_t>(offset & 0xFFFFFFFFull), seed);
}

// uint32 word -> float uniform in (0, 1]: float(((r >> 8) + 0.5) * 2^-24), computed exactly in double.
AT_HD float word_to_uniform(uint32_t r) {
  return static_cast<float>((static_cast<double>(r >> 8) + 0.5) * 5.9604644775390625e-08);
}

AT_HD double word_to_uniform_d(uint32_t r) {
  return (static_cast<double>(r >> 8) + 0.5) * 5.9604644775390625e-08;
}

// Box–Muller of one word pair in double, rounded to float; use_sin selects the second normal.
AT_HD float box_muller(uint32_t w0, uint32_t w1, bool use_sin) {
  const double u0 = word_to_uniform_d(w0);
  const double u1 = word_to_uniform_d(w1);
  const double rad = sqrt(-2.0 * log(u0));
  const double ang = 6.283185307179586 * u1;  // 2π in double, as math.pi * 2.0
  return static_cast<float>(rad * (use_sin ? sin(ang) : cos(ang)));
}

// Both normals of one word pair (z_cos, z_sin).
AT_HD void box_muller2(uint32_t w0, uint32_t w1, float& z_cos, float& z_sin) {
  const double u0 = word_to_uniform_d(w0);
  const double u1 = word_to_uniform_d(w1);
  const double rad = sqrt(-2.0 * log(u0));
  const double ang = 6.283185307179586 * u1;
  z_cos = static_cast<float>(rad * cos(ang));
  z_sin = static_cast<float>(rad * sin(ang));
}

// Single draws (convenience; hot loops use philox_block and reuse the four words).
AT_HD float uniform_draw(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t a, uint32_t b,
                         uint32_t draw) {
  const Philox4 p = philox_block(seed, offset, stream, a, b, draw >> 2);
  return word_to_uniform(p.r[draw & 3u]);
}

AT_HD float normal_draw(uint64_t seed, uint64_t offset, uint32_t stream, uint32_t a, uint32_t b,
                        uint32_t draw) {
  const Philox4 p = philox_block(seed, offset, stream, a, b, draw >> 2);
  const uint32_t k = draw & 3u;
  return k < 2 ? box_muller(p.r[0], p.r[1], k == 1) : box_muller(p.r[2], p.r[3], k == 3);
}

// Integer form of the Bernoulli test "uniform(r) < p": returns t such that the test holds exactly
// when (r >> 8) < t (t in [0, 2^24]). word_to_uniform is monotone in r >> 8, so this is exact and
// lets hot loops compare integers instead of converting every word.
AT_HD uint32_t bernoulli_threshold(float p) {
  if (!(p > 0.0f)) return 0u;
  const double pd = static_cast<double>(p);
  if (pd >= 1.0 + 1e-7) return 1u << 24;  // every uniform (max 1.0) is below p
  int64_t q = static_cast<int64_t>(floor(pd * 16777216.0));
  if (q > (1 << 24)) q = 1 << 24;
  if (q < 0) q = 0;
  // smallest q with f(q) >= p, where f(q) = word_to_uniform(q << 8)
  while (q > 0 && word_to_uniform(static_cast<uint32_t>(q - 1) << 8) >= p) --q;
  while (q < (1 << 24) && word_to_uniform(static_cast<uint32_t>(q) << 8) < p) ++q;
  return static_cast<uint32_t>(q);
}

}  // namespace analogtrain
