// Counter-based Gaussian noise of the noise family (philox_normal_), also drawn
// inside the dh family's noisy_unpool_diff_philox, shared by the CPU and CUDA
// kernels and mirrored op for op in Python (dtp_fast/noise.py, pure PyTorch)
// and Triton.
//
// A block of four standard normals is a pure function of a 128-bit counter
// and a 64-bit key:
//   (a, b, c, d) = Philox4x32-10(counter, key)       (Salmon et al., SC 2011)
//   normals      = (r1 cos t1, r1 sin t1, r2 cos t2, r2 sin t2)
//   r1 = sqrt(-2 ln u(a)),  t1 = 2 pi v(b)  (and r2, t2 from c, d)
// with u(a) = (top 24 bits of a + 1) / 2^24 in (0, 1] and v(b) the angle of
// b as a fraction of a turn. The logarithm, sine and cosine are polynomials
// of fixed float32 operations (no libm), so that every implementation that
// performs the same IEEE operations in the same order gets the same bits;
// compile without floating-point contraction (-ffp-contract=off).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DTP_FAST_HD __host__ __device__ __forceinline__
#else
#define DTP_FAST_HD inline
#endif

namespace dtp_fast {
namespace philox {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key increments

// One Philox round on the counter words, under the round's key.
DTP_FAST_HD void round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
  const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
  const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
  const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
  c1 = static_cast<uint32_t>(p1);
  c3 = static_cast<uint32_t>(p0);
  c0 = n0;
  c2 = n2;
}

// Philox4x32-10: ten rounds, the key bumped by (kW0, kW1) after each.
DTP_FAST_HD void rounds10(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    round(c[0], c[1], c[2], c[3], k0, k1);
    k0 += kW0;
    k1 += kW1;
  }
}

DTP_FAST_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

DTP_FAST_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
#endif
}

// Polynomial coefficients (float32; the Python mirror uses the same literals).
constexpr float kLn2 = 0.693147180559945309f;
constexpr uint32_t kSqrt2Mantissa = 0x3504F3u;  // mantissa bits of float32(sqrt 2) = 0x3FB504F3
constexpr float kL3 = 0.333333333333333333f, kL5 = 0.2f, kL7 = 0.142857142857142857f,
                kL9 = 0.111111111111111111f, kL11 = 0.0909090909090909091f;
constexpr float kS3 = -0.166666666666666667f, kS5 = 0.00833333333333333333f,
                kS7 = -1.98412698412698413e-4f, kS9 = 2.75573192239858907e-6f,
                kS11 = -2.50521083854417188e-8f, kS13 = 1.60590438368216146e-10f;
constexpr float kC2 = -0.5f, kC4 = 0.0416666666666666667f, kC6 = -0.00138888888888888889f,
                kC8 = 2.48015873015873016e-5f, kC10 = -2.75573192239858907e-7f,
                kC12 = 2.08767569878680990e-9f, kC14 = -1.14707455977297247e-11f;
// pi / 2 / 2^24 (exact division): one step of the 24-bit angle within a quarter turn
constexpr float kQuarterStep = 1.57079632679489662f / 16777216.0f;

// sqrt(-2 ln u) for u = ((a >> 8) + 1) / 2^24, in [0, 5.77]
DTP_FAST_HD float radius(uint32_t a) {
  const float v = static_cast<float>(static_cast<int32_t>((a >> 8) + 1u));  // exact, in [1, 2^24]
  const uint32_t bits = float_to_bits(v);
  int e = static_cast<int>(bits >> 23) - 127;
  // v = f 2^e with f in [1/sqrt2, sqrt2]: the mantissa with exponent 0, or -1
  // where it exceeds sqrt 2 (selected in integers: no FP compare or branch)
  const uint32_t mant = bits & 0x007FFFFFu;
  const bool big = mant > kSqrt2Mantissa;
  const float f = bits_to_float(mant | (big ? 0x3F000000u : 0x3F800000u));
  e = e + (big ? 1 : 0);
  const float t = f - 1.0f;
  const float s = t / (t + 2.0f);                                 // ln f = 2 atanh(s)
  const float s2 = s * s;
  const float poly = 1.0f + s2 * (kL3 + s2 * (kL5 + s2 * (kL7 + s2 * (kL9 + s2 * kL11))));
  const float ln_u = static_cast<float>(e - 24) * kLn2 + (s + s) * poly;
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * ln_u);
#else
  return std::sqrt(-2.0f * ln_u);
#endif
}

// cos and sin of the angle 2 pi (b / 2^32) (rounded to 24 bits within a quarter turn)
DTP_FAST_HD void cos_sin(uint32_t b, float& c, float& s) {
  const uint32_t q = b >> 30;                                     // quarter turn
  const float phi = (static_cast<float>(static_cast<int32_t>((b >> 6) & 0x00FFFFFFu)) + 0.5f) * kQuarterStep;
  // phi in (0, pi/2)
  const float p2 = phi * phi;
  const float sn = phi * (1.0f + p2 * (kS3 + p2 * (kS5 + p2 * (kS7 + p2 * (kS9 + p2 * (kS11 + p2 * kS13))))));
  const float cs = 1.0f + p2 * (kC2 + p2 * (kC4 + p2 * (kC6 + p2 * (kC8 + p2 * (kC10 + p2 * (kC12 + p2 * kC14))))));
  const bool odd = q & 1u, neg = q & 2u;
  const float c1 = odd ? -sn : cs, s1 = odd ? cs : sn;
  c = neg ? -c1 : c1;
  s = neg ? -s1 : s1;
}

// The four normals of the Philox output words (a, b, c, d).
DTP_FAST_HD void box_muller(uint32_t a, uint32_t b, uint32_t c, uint32_t d, float out[4]) {
  const float r1 = radius(a), r2 = radius(c);
  float cos1, sin1, cos2, sin2;
  cos_sin(b, cos1, sin1);
  cos_sin(d, cos2, sin2);
  out[0] = r1 * cos1;
  out[1] = r1 * sin1;
  out[2] = r2 * cos2;
  out[3] = r2 * sin2;
}

// The four normals of counter (c0, c1, c2, c3) under key (k0, k1).
DTP_FAST_HD void normal4(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                         float out[4]) {
  uint32_t c[4] = {c0, c1, c2, c3};
  rounds10(c, k0, k1);
  box_muller(c[0], c[1], c[2], c[3], out);
}

}  // namespace philox
}  // namespace dtp_fast
