// CPU kernel of the noise family: dtp_fast::philox_normal_, counter-based standard normals
// (csrc/philox.h) written into a contiguous (rows, features...) tensor.
// Row r, element e of the row gets lane e % 4 of the block with counter
// (e / 4, offset + r, iteration, sample) under the key (key0, key1).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../noise_args.h"
#include "../philox.h"

namespace dtp_fast {
namespace {

// Blocks of four normals per task.
constexpr int64_t kGrain = 4096;

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(_WIN32)
#define DTP_FAST_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DTP_FAST_CLONES
#endif

// Whole blocks j0 .. j1 - 1 of one row, block j into dst[4 (j - j0) .. 4 (j - j0) + 3]:
// tiles of kTile blocks, the Philox rounds and Box-Muller each in a loop over
// the tile (structure of arrays, so the compiler vectorises both).
constexpr int kTile = 64;

DTP_FAST_CLONES void blocks_f32(float* dst, int64_t j0, int64_t j1, uint32_t row, uint32_t it, uint32_t smp,
                                uint32_t k0, uint32_t k1) {
  uint32_t a[kTile], b[kTile], c[kTile], d[kTile];
  for (int64_t t0 = j0; t0 < j1; t0 += kTile) {
    const int n = static_cast<int>(std::min<int64_t>(kTile, j1 - t0));
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

template <typename scalar_t>
void fill(scalar_t* out, int64_t rows, int64_t feat, uint32_t k0, uint32_t k1, int64_t offset, uint32_t it,
          uint32_t smp) {
  const int64_t full = feat / 4, blocks = (feat + 3) / 4;
  at::parallel_for(0, rows * blocks, kGrain, [&](int64_t begin, int64_t end) {
    constexpr int64_t kBuf = 256;  // blocks staged as float32 for other dtypes
    float buf[4 * kBuf];
    for (int64_t i = begin; i < end;) {
      const int64_t r = i / blocks, j0 = i % blocks, j1 = std::min(blocks, j0 + (end - i));
      const uint32_t row = static_cast<uint32_t>(offset + r);
      scalar_t* dst = out + r * feat;
      const int64_t jf = std::min(j1, full);  // whole blocks
      if constexpr (std::is_same_v<scalar_t, float>) {
        blocks_f32(dst + 4 * j0, j0, jf, row, it, smp, k0, k1);
      } else {
        for (int64_t a = j0; a < jf; a += kBuf) {
          const int64_t b = std::min(jf, a + kBuf);
          blocks_f32(buf, a, b, row, it, smp, k0, k1);
          for (int64_t e = 4 * a; e < 4 * b; ++e) dst[e] = static_cast<scalar_t>(buf[e - 4 * a]);
        }
      }
      if (jf < j1) {  // the last, partial block of the row
        float v[4];
        philox::normal4(static_cast<uint32_t>(jf), row, it, smp, k0, k1, v);
        for (int64_t e = 4 * jf; e < feat; ++e) dst[e] = static_cast<scalar_t>(v[e - 4 * jf]);
      }
      i += j1 - j0;
    }
  });
}

void philox_normal_cpu(at::Tensor& out, int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                       int64_t sample) {
  const int64_t feat = check_philox_normal_args(out, key0, key1, offset, iteration, sample);
  if (out.numel() == 0) return;
  const int64_t rows = out.size(0);
  const auto k0 = static_cast<uint32_t>(key0), k1 = static_cast<uint32_t>(key1);
  const auto it = static_cast<uint32_t>(iteration), smp = static_cast<uint32_t>(sample);
  if (out.scalar_type() == at::kFloat)
    fill(out.data_ptr<float>(), rows, feat, k0, k1, offset, it, smp);
  else
    fill(out.data_ptr<double>(), rows, feat, k0, k1, offset, it, smp);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) { m.impl("philox_normal_", &philox_normal_cpu); }

}  // namespace dtp_fast
