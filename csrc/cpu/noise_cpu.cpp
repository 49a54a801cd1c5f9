// CPU kernels of the noise family: dtp_fast::philox_normal_, counter-based standard normals
// (csrc/philox.h) written into a contiguous (rows, features...) tensor, and
// dtp_fast::philox_noisy_input, the noisy inputs of L-DRL drawn from the same stream.
// Row r, element e of the row gets lane e % 4 of the block with counter
// (e / 4, offset + r, iteration, sample) under the key (key0, key1).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../noise_args.h"
#include "philox_cpu.h"

namespace dtp_fast {
namespace {

// Blocks of four normals per task.
constexpr int64_t kGrain = 4096;

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

// ------------------------------------------------------------------ philox_noisy_input
// dx = sigma * eps and x + dx for `copies` copies of a batch x, eps drawn here (the values of
// philox_normal_ for row offset + b, iteration iteration + m / samples, sample m % samples), in x's
// memory format (channels_last or contiguous): the noise never goes through memory on its own.
template <typename scalar_t>
void noisy_rows(const scalar_t* x, scalar_t* dx, scalar_t* xn, int64_t B, int64_t C, int64_t HW, bool channels_last,
                double sigma, uint32_t k0, uint32_t k1, int64_t offset, int64_t iteration, int64_t samples,
                int64_t copies) {
  const int64_t feat = C * HW, blocks = (feat + 3) / 4;
  const scalar_t s = static_cast<scalar_t>(sigma);
  at::parallel_for(0, copies * B, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> eps(static_cast<size_t>(4 * blocks)), tmp(channels_last ? static_cast<size_t>(4 * blocks) : 0);
    for (int64_t r = r0; r < r1; ++r) {
      // the noise in the outputs' memory order
      block_row_normals(eps.data(), tmp.data(), r, B, C, HW, channels_last, offset, iteration, samples, k0, k1);
      const scalar_t* xr = x + (r % B) * feat;
      scalar_t* d = dx + r * feat;
      scalar_t* o = xn + r * feat;
      for (int64_t e = 0; e < feat; ++e) {
        const scalar_t v = s * static_cast<scalar_t>(eps[e]);
        d[e] = v;
        o[e] = xr[e] + v;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> philox_noisy_input_cpu(const at::Tensor& x, double sigma, int64_t key0,
                                                          int64_t key1, int64_t offset, int64_t iteration,
                                                          int64_t samples, int64_t copies) {
  constexpr const char* op = "dtp_fast::philox_noisy_input";
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 1, op, ": x needs a batch dimension");
  TORCH_CHECK(samples >= 1 && copies >= 0, op, ": samples must be >= 1 and copies >= 0");
  for (const int64_t v : {key0, key1, iteration, iteration + (copies + samples - 1) / samples})
    check_u32(op, "key words and iterations", v);
  const int64_t B = x.size(0);
  TORCH_CHECK(offset >= 0 && offset + B <= k2to32, op, ": sample indices offset .. offset + B must be in [0, 2^32)");
  const bool cl = x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor xc = cl ? x : x.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[0] = copies * B;
  auto opts = x.options().memory_format(cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor dx = at::empty(shape, opts), xn = at::empty(shape, opts);
  if (dx.numel() == 0) return {dx, xn};
  const int64_t C = x.dim() >= 2 ? x.size(1) : 1, HW = B ? x.numel() / B / C : 0;
  TORCH_CHECK(C * HW < (int64_t{1} << 34), op, ": rows of more than 2^34 elements");
  const auto k0 = static_cast<uint32_t>(key0), k1 = static_cast<uint32_t>(key1);
  if (x.scalar_type() == at::kFloat)
    noisy_rows(xc.const_data_ptr<float>(), dx.mutable_data_ptr<float>(), xn.mutable_data_ptr<float>(), B, C, HW, cl,
               sigma, k0, k1, offset, iteration, samples, copies);
  else
    noisy_rows(xc.const_data_ptr<double>(), dx.mutable_data_ptr<double>(), xn.mutable_data_ptr<double>(), B, C, HW,
               cl, sigma, k0, k1, offset, iteration, samples, copies);
  return {dx, xn};
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) {
  m.impl("philox_normal_", &philox_normal_cpu);
  m.impl("philox_noisy_input", &philox_noisy_input_cpu);
}

}  // namespace dtp_fast
