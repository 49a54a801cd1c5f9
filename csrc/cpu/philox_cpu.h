// The counter-based normals of csrc/philox.h for the CPU kernels that draw
// them (noise_cpu.cpp, dh_cpu.cpp), vectorised: blocks_f32 computes whole
// Philox blocks of one noise row. With AVX-512 (checked at run time) sixteen
// blocks at a time in intrinsics: the 32x32 -> 64-bit products of the rounds
// as even / odd lane products, Box-Muller in the same float32 operations in
// the same order as philox::box_muller (IEEE add, mul, div and sqrt round
// alike in every lane; -ffp-contract=off), the four outputs interleaved by
// a 4x16 transpose. Otherwise (and for the last blocks) in tiles, the ten
// rounds and Box-Muller each in a loop over the tile (structure of arrays,
// so that the compiler vectorises both; one clone per instruction set).
// Same bits as philox::normal4 either way.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "../philox.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(_WIN32)
#define DTP_FAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define DTP_FAST_PHILOX_AVX512 1
#include <immintrin.h>
#else
#define DTP_FAST_CLONES
#endif

namespace dtp_fast {
namespace {

constexpr int kPhiloxTile = 64;

// Blocks j0 .. j1 - 1 of the row with counter words (j, row, it, smp) into
// dst[4 (j - j0) .. 4 (j - j0) + 3].
DTP_FAST_CLONES void blocks_f32_tiled(float* dst, int64_t j0, int64_t j1, uint32_t row, uint32_t it, uint32_t smp,
                                uint32_t k0, uint32_t k1) {
  uint32_t a[kPhiloxTile], b[kPhiloxTile], c[kPhiloxTile], d[kPhiloxTile];
  for (int64_t t0 = j0; t0 < j1; t0 += kPhiloxTile) {
    const int n = static_cast<int>(std::min<int64_t>(kPhiloxTile, j1 - t0));
    for (int i = 0; i < n; ++i) {
      a[i] = static_cast<uint32_t>(t0 + i);
      b[i] = row;
      c[i] = it;
      d[i] = smp;
    }
    uint32_t ka = k0, kb = k1;
    for (int r = 0; r < 10; ++r) {
      for (int i = 0; i < n; ++i) philox::round(a[i], b[i], c[i], d[i], ka, kb);
      ka += philox::kW0;
      kb += philox::kW1;
    }
    float* o = dst + 4 * (t0 - j0);
    for (int i = 0; i < n; ++i) philox::box_muller(a[i], b[i], c[i], d[i], o + 4 * i);
  }
}

#ifdef DTP_FAST_PHILOX_AVX512
// Sixteen lanes of x * m (32 x 32 -> 64 bits): the high and low words.
__attribute__((target("avx512f"))) inline void mul_hilo16(__m512i x, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(x, m);                         // lanes 0, 2, ..: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m);   // lanes 1, 3, ..
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

__attribute__((target("avx512f"))) inline __m512 neg16(__m512 x, __mmask16 where) {  // -x where set: the sign bit
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  return _mm512_castsi512_ps(_mm512_mask_xor_epi32(_mm512_castps_si512(x), where, _mm512_castps_si512(x), sign));
}

// philox::radius of sixteen words
__attribute__((target("avx512f"))) inline __m512 radius16(__m512i a) {
  using namespace philox;
  const __m512 v = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_srli_epi32(a, 8), _mm512_set1_epi32(1)));
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i mant = _mm512_and_si512(bits, _mm512_set1_epi32(0x007FFFFF));
  const __mmask16 big = _mm512_cmpgt_epu32_mask(mant, _mm512_set1_epi32(static_cast<int>(kSqrt2Mantissa)));
  const __m512 f = _mm512_castsi512_ps(_mm512_or_si512(
      mant, _mm512_mask_blend_epi32(big, _mm512_set1_epi32(0x3F800000), _mm512_set1_epi32(0x3F000000))));
  // e - 24 with e = exponent - 127 (+ 1 where big)
  const __m512i e0 = _mm512_sub_epi32(_mm512_srli_epi32(bits, 23), _mm512_set1_epi32(127 + 24));
  const __m512i e = _mm512_mask_add_epi32(e0, big, e0, _mm512_set1_epi32(1));
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 t = _mm512_sub_ps(f, one);
  const __m512 s = _mm512_div_ps(t, _mm512_add_ps(t, _mm512_set1_ps(2.0f)));
  const __m512 s2 = _mm512_mul_ps(s, s);
  __m512 poly = _mm512_add_ps(_mm512_set1_ps(kL9), _mm512_mul_ps(s2, _mm512_set1_ps(kL11)));
  poly = _mm512_add_ps(_mm512_set1_ps(kL7), _mm512_mul_ps(s2, poly));
  poly = _mm512_add_ps(_mm512_set1_ps(kL5), _mm512_mul_ps(s2, poly));
  poly = _mm512_add_ps(_mm512_set1_ps(kL3), _mm512_mul_ps(s2, poly));
  poly = _mm512_add_ps(one, _mm512_mul_ps(s2, poly));
  const __m512 ln_u = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(e), _mm512_set1_ps(kLn2)),
                                    _mm512_mul_ps(_mm512_add_ps(s, s), poly));
  return _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), ln_u));
}

// philox::cos_sin of sixteen words
__attribute__((target("avx512f"))) inline void cos_sin16(__m512i b, __m512& c, __m512& s) {
  using namespace philox;
  const __m512 phi = _mm512_mul_ps(
      _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(b, 6), _mm512_set1_epi32(0x00FFFFFF))),
                    _mm512_set1_ps(0.5f)),
      _mm512_set1_ps(kQuarterStep));
  const __m512 p2 = _mm512_mul_ps(phi, phi);
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 sn = _mm512_add_ps(_mm512_set1_ps(kS11), _mm512_mul_ps(p2, _mm512_set1_ps(kS13)));
  sn = _mm512_add_ps(_mm512_set1_ps(kS9), _mm512_mul_ps(p2, sn));
  sn = _mm512_add_ps(_mm512_set1_ps(kS7), _mm512_mul_ps(p2, sn));
  sn = _mm512_add_ps(_mm512_set1_ps(kS5), _mm512_mul_ps(p2, sn));
  sn = _mm512_add_ps(_mm512_set1_ps(kS3), _mm512_mul_ps(p2, sn));
  sn = _mm512_mul_ps(phi, _mm512_add_ps(one, _mm512_mul_ps(p2, sn)));
  __m512 cs = _mm512_add_ps(_mm512_set1_ps(kC12), _mm512_mul_ps(p2, _mm512_set1_ps(kC14)));
  cs = _mm512_add_ps(_mm512_set1_ps(kC10), _mm512_mul_ps(p2, cs));
  cs = _mm512_add_ps(_mm512_set1_ps(kC8), _mm512_mul_ps(p2, cs));
  cs = _mm512_add_ps(_mm512_set1_ps(kC6), _mm512_mul_ps(p2, cs));
  cs = _mm512_add_ps(_mm512_set1_ps(kC4), _mm512_mul_ps(p2, cs));
  cs = _mm512_add_ps(_mm512_set1_ps(kC2), _mm512_mul_ps(p2, cs));
  cs = _mm512_add_ps(one, _mm512_mul_ps(p2, cs));
  const __m512i q = _mm512_srli_epi32(b, 30);
  const __mmask16 odd = _mm512_test_epi32_mask(q, _mm512_set1_epi32(1));
  const __mmask16 neg = _mm512_test_epi32_mask(q, _mm512_set1_epi32(2));
  const __m512 c1 = _mm512_mask_blend_ps(odd, cs, neg16(sn, 0xFFFF));
  const __m512 s1 = _mm512_mask_blend_ps(odd, sn, cs);
  c = neg16(c1, neg);
  s = neg16(s1, neg);
}

// The sixteen blocks with counters (a[i], row, it, smp): normal k of block i in lane i of x[k].
__attribute__((target("avx512f"))) inline void normals16(__m512i a, uint32_t row, uint32_t it, uint32_t smp,
                                                          uint32_t k0, uint32_t k1, __m512 x[4]) {
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(philox::kM0)), m1 = _mm512_set1_epi32(static_cast<int>(philox::kM1));
  __m512i b = _mm512_set1_epi32(static_cast<int>(row)), c = _mm512_set1_epi32(static_cast<int>(it));
  __m512i d = _mm512_set1_epi32(static_cast<int>(smp));
  uint32_t ka = k0, kb = k1;
  for (int r = 0; r < 10; ++r) {  // philox::round
    __m512i hi0, lo0, hi1, lo1;
    mul_hilo16(a, m0, hi0, lo0);
    mul_hilo16(c, m1, hi1, lo1);
    const __m512i n0 = _mm512_ternarylogic_epi32(hi1, b, _mm512_set1_epi32(static_cast<int>(ka)), 0x96);  // xor3
    const __m512i n2 = _mm512_ternarylogic_epi32(hi0, d, _mm512_set1_epi32(static_cast<int>(kb)), 0x96);
    b = lo1;
    d = lo0;
    a = n0;
    c = n2;
    ka += philox::kW0;
    kb += philox::kW1;
  }
  const __m512 r1 = radius16(a), r2 = radius16(c);
  __m512 cos1, sin1, cos2, sin2;
  cos_sin16(b, cos1, sin1);
  cos_sin16(d, cos2, sin2);
  x[0] = _mm512_mul_ps(r1, cos1);
  x[1] = _mm512_mul_ps(r1, sin1);
  x[2] = _mm512_mul_ps(r2, cos2);
  x[3] = _mm512_mul_ps(r2, sin2);
}

// Blocks j0 .. j0 + 16 n - 1 (as blocks_f32_tiled), sixteen at a time.
__attribute__((target("avx512f"))) void blocks_f32_avx512(float* dst, int64_t j0, int64_t n, uint32_t row,
                                                           uint32_t it, uint32_t smp, uint32_t k0, uint32_t k1) {
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (int64_t g = 0; g < n; ++g) {
    __m512 x[4];
    normals16(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(j0 + 16 * g))), iota), row,
              it, smp, k0, k1, x);
    const __m512 x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
    // out[4 i + k] = xk[i]: within each 128-bit lane j, u_m holds block 4 j + m as (x0, x1, x2, x3)
    const __m512 t0 = _mm512_unpacklo_ps(x0, x1), t1 = _mm512_unpackhi_ps(x0, x1);
    const __m512 t2 = _mm512_unpacklo_ps(x2, x3), t3 = _mm512_unpackhi_ps(x2, x3);
    const __m512 u0 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    const __m512 u1 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t2)));
    const __m512 u2 = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    const __m512 u3 = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t1), _mm512_castps_pd(t3)));
    // then the 4x4 transpose of the 128-bit lanes
    const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u2, u3, 0x44);
    const __m512 v2 = _mm512_shuffle_f32x4(u0, u1, 0xEE), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
    float* o = dst + 64 * g;
    _mm512_storeu_ps(o, _mm512_shuffle_f32x4(v0, v1, 0x88));
    _mm512_storeu_ps(o + 16, _mm512_shuffle_f32x4(v0, v1, 0xDD));
    _mm512_storeu_ps(o + 32, _mm512_shuffle_f32x4(v2, v3, 0x88));
    _mm512_storeu_ps(o + 48, _mm512_shuffle_f32x4(v2, v3, 0xDD));
  }
}

// A row's normals in channels_last order (see row_normals_cl) for HW % 4 == 0: element (c, p) is lane p % 4
// of block c HW / 4 + p / 4, so the blocks of sixteen channels at four positions p0 .. p0 + 3 give four
// vectors that are each sixteen consecutive outputs.
__attribute__((target("avx512f"))) void row_normals_cl_avx512(float* eps, int64_t C, int64_t HW, uint32_t row,
                                                               uint32_t it, uint32_t smp, uint32_t k0, uint32_t k1) {
  const uint32_t q = static_cast<uint32_t>(HW / 4);
  const __m512i iota_q = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(static_cast<int>(q)));
  for (int64_t p0 = 0; p0 < HW; p0 += 4) {
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 m = static_cast<__mmask16>(C - c0 >= 16 ? 0xFFFF : (1u << (C - c0)) - 1);
      __m512 x[4];
      normals16(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(c0) * q +
                                                                    static_cast<uint32_t>(p0 / 4))), iota_q),
                row, it, smp, k0, k1, x);
      for (int l = 0; l < 4; ++l) _mm512_mask_storeu_ps(eps + (p0 + l) * C + c0, m, x[l]);
    }
  }
}

// Whether the AVX-512 paths of the CPU kernels run: the CPU has AVX-512F and DTP_FAST_NO_AVX512 is not set
// (set, the portable paths run instead, with the same results: how the tests check them on AVX-512 machines).
inline bool have_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && std::getenv("DTP_FAST_NO_AVX512") == nullptr;
  return yes;
}
#endif

// Blocks j0 .. j1 - 1 of the row with counter words (j, row, it, smp) into
// dst[4 (j - j0) .. 4 (j - j0) + 3].
inline void blocks_f32(float* dst, int64_t j0, int64_t j1, uint32_t row, uint32_t it, uint32_t smp, uint32_t k0,
                       uint32_t k1) {
#ifdef DTP_FAST_PHILOX_AVX512
  if (have_avx512() && j1 - j0 >= 16) {
    const int64_t n = (j1 - j0) / 16;
    blocks_f32_avx512(dst, j0, n, row, it, smp, k0, k1);
    dst += 64 * n;
    j0 += 16 * n;
  }
#endif
  if (j0 < j1) blocks_f32_tiled(dst, j0, j1, row, it, smp, k0, k1);
}

// The normals of a whole row of `feat` elements (blocks of four; the last one partial) into
// eps[0 .. feat) (eps holds a multiple of four).
inline void row_normals(float* eps, int64_t feat, uint32_t row, uint32_t it, uint32_t smp, uint32_t k0,
                        uint32_t k1) {
  const int64_t full = feat / 4;
  blocks_f32(eps, 0, full, row, it, smp, k0, k1);
  if (4 * full < feat) philox::normal4(static_cast<uint32_t>(full), row, it, smp, k0, k1, eps + 4 * full);
}

// The normals of a whole row of C * HW elements (those of row_normals, element (c, p) = c * HW + p) in
// channels_last order: eps[p * C + c]. tmp holds (C * HW + 3) / 4 * 4 floats (used unless AVX-512 and
// HW % 4 == 0).
inline void row_normals_cl(float* eps, float* tmp, int64_t C, int64_t HW, uint32_t row, uint32_t it, uint32_t smp,
                           uint32_t k0, uint32_t k1) {
#ifdef DTP_FAST_PHILOX_AVX512
  if (HW % 4 == 0 && have_avx512()) {
    row_normals_cl_avx512(eps, C, HW, row, it, smp, k0, k1);
    return;
  }
#endif
  row_normals(tmp, C * HW, row, it, smp, k0, k1);
  for (int64_t p = 0; p < HW; ++p)
    for (int64_t c = 0; c < C; ++c) eps[p * C + c] = tmp[c * HW + p];
}

// The normals of row r of a noise block of copies of a batch of B rows (copy m = r / B of row b = r % B:
// sample index offset + b, iteration `iteration` + m / samples, noise sample m % samples; a NoiseBlock of
// dtp_fast/noise.py), in the memory order of a (C, HW) row: channels_last (row_normals_cl) or row-major.
inline void block_row_normals(float* eps, float* tmp, int64_t r, int64_t B, int64_t C, int64_t HW, bool channels_last,
                              int64_t offset, int64_t iteration, int64_t samples, uint32_t k0, uint32_t k1) {
  const int64_t m = r / B, b = r % B;
  const auto row = static_cast<uint32_t>(offset + b), it = static_cast<uint32_t>(iteration + m / samples);
  const auto smp = static_cast<uint32_t>(m % samples);
  if (channels_last) {
    row_normals_cl(eps, tmp, C, HW, row, it, smp, k0, k1);
  } else {
    row_normals(eps, C * HW, row, it, smp, k0, k1);
  }
}

}  // namespace
}  // namespace dtp_fast
