// The counter-based normals of csrc/philox.h for the CPU kernels that draw
// them (noise_cpu.cpp, dh_cpu.cpp), vectorised: blocks_f32 computes whole
// Philox blocks of one noise row in tiles, the ten rounds and Box-Muller each
// in a loop over the tile (structure of arrays, so that the compiler
// vectorises both; one clone per instruction set). Same operations in the
// same order as philox::normal4, so the same bits.
#pragma once

#include <algorithm>
#include <cstdint>

#include "../philox.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(_WIN32)
#define DTP_FAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DTP_FAST_CLONES
#endif

namespace dtp_fast {
namespace {

constexpr int kPhiloxTile = 64;

// Blocks j0 .. j1 - 1 of the row with counter words (j, row, it, smp) into
// dst[4 (j - j0) .. 4 (j - j0) + 3].
DTP_FAST_CLONES void blocks_f32(float* dst, int64_t j0, int64_t j1, uint32_t row, uint32_t it, uint32_t smp,
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

// The normals of a whole row of `feat` elements (blocks of four; the last one partial) into
// eps[0 .. feat) (eps holds a multiple of four).
inline void row_normals(float* eps, int64_t feat, uint32_t row, uint32_t it, uint32_t smp, uint32_t k0,
                        uint32_t k1) {
  const int64_t full = feat / 4;
  blocks_f32(eps, 0, full, row, it, smp, k0, k1);
  if (4 * full < feat) philox::normal4(static_cast<uint32_t>(full), row, it, smp, k0, k1, eps + 4 * full);
}

}  // namespace
}  // namespace dtp_fast
