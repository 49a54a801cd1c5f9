// CPU kernels of the ops that exist for the CUDA backend (csrc/cuda/): simple
// versions that define their results and serve as the oracle of the CUDA ones
// (tests/test_cuda.py), together with the PyTorch references.
//
// noisy_unpool_diff_philox: the noise block materialised with the generator of
// csrc/philox.h (the values of philox_normal_), then noisy_unpool_diff_cpu.
// momentum_sgd_: torch.optim.SGD's single-tensor momentum step, per tensor.
// ldrl_loss: both sums in double, serially in memory order.
// linear_chain_: the iterations of a Linear feedback block, as simple loops in
// the order and roundings of the CUDA kernel (csrc/cuda/chain.cu).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <initializer_list>
#include <cstdint>
#include <vector>

#include "../chain_args.h"
#include "../philox.h"
#include "../pool_act.h"

namespace dtp_fast {
namespace {

constexpr int64_t k2to32 = int64_t{1} << 32;

// eps[m * B + b] (shape (copies * B, C, Hp, Wp), contiguous): row b of noise
// block m, i.e. philox_normal_ with offset + b, iteration + m / samples,
// sample m % samples.
template <typename scalar_t>
void fill_noise_block(scalar_t* eps, int64_t copies, int64_t B, int64_t feat, uint32_t k0, uint32_t k1,
                      int64_t offset, int64_t iteration, int64_t samples) {
  at::parallel_for(0, copies * B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t m = n / B, b = n % B;
      const auto row = static_cast<uint32_t>(offset + b);
      const auto it = static_cast<uint32_t>(iteration + m / samples), smp = static_cast<uint32_t>(m % samples);
      scalar_t* dst = eps + n * feat;
      for (int64_t j = 0; 4 * j < feat; ++j) {
        float v[4];
        philox::normal4(static_cast<uint32_t>(j), row, it, smp, k0, k1, v);
        for (int64_t e = 4 * j; e < std::min(feat, 4 * j + 4); ++e) dst[e] = static_cast<scalar_t>(v[e - 4 * j]);
      }
    }
  });
}

at::Tensor noisy_unpool_diff_philox_cpu(const at::Tensor& y, double sigma, const at::Tensor& indices,
                                        const at::Tensor& h0, int64_t act, at::IntArrayRef output_size,
                                        int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                                        int64_t samples, int64_t copies) {
  constexpr const char* op = "dtp_fast::noisy_unpool_diff_philox";
  check_ldrl_4d(op, "y", "(B, C, Hp, Wp)", y);
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got y of dtype ", y.scalar_type());
  TORCH_CHECK(y.device().is_cpu(), op, ": expected CPU tensors, got y on ", y.device());
  TORCH_CHECK(copies >= 0, op, ": copies must be >= 0, got ", copies);
  TORCH_CHECK(samples >= 1 && samples < k2to32, op, ": samples must be in [1, 2^32), got ", samples);
  for (const int64_t v : {key0, key1, iteration})
    TORCH_CHECK(v >= 0 && v < k2to32, op, ": key words and iteration must be in [0, 2^32), got ", v);
  TORCH_CHECK(copies == 0 || iteration + (copies - 1) / samples < k2to32, op, ": iterations ", iteration, " .. ",
              iteration + (copies - 1) / samples, " must be in [0, 2^32)");
  const int64_t B = y.size(0), feat = y.size(1) * y.size(2) * y.size(3);
  TORCH_CHECK(offset >= 0 && offset + B <= k2to32, op, ": sample indices offset .. offset + B must be in [0, 2^32)");
  TORCH_CHECK(feat < (int64_t{1} << 34), op, ": samples of more than 2^34 elements");
  at::Tensor eps = at::empty({copies * B, y.size(1), y.size(2), y.size(3)}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dtp_fast_noisy_unpool_diff_philox_cpu", [&] {
    fill_noise_block(eps.mutable_data_ptr<scalar_t>(), copies, B, feat, static_cast<uint32_t>(key0),
                     static_cast<uint32_t>(key1), offset, iteration, samples);
  });
  // the output takes the memory format of eps: make it that of y
  eps = eps.contiguous(y.suggest_memory_format());
  return noisy_unpool_diff_cpu(y, eps, sigma, indices, h0, act, output_size);
}

template <typename scalar_t>
void sgd_step(scalar_t* p, const scalar_t* g, scalar_t* buf, int64_t numel, double lr, double momentum,
              double weight_decay) {
  const scalar_t nlr = static_cast<scalar_t>(-lr), mom = static_cast<scalar_t>(momentum),
                 wd = static_cast<scalar_t>(weight_decay);
  at::parallel_for(0, numel, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t gi = g[i];
      const scalar_t pi = p[i];
      if (wd != scalar_t(0)) {
        const scalar_t decay = wd * pi;
        gi = gi + decay;
      }
      const scalar_t scaled = buf[i] * mom;
      const scalar_t bi = scaled + gi;
      buf[i] = bi;
      const scalar_t step = nlr * bi;
      p[i] = pi + step;
    }
  });
}

void momentum_sgd_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, at::ArrayRef<double> lr,
                      at::ArrayRef<double> momentum, at::ArrayRef<double> weight_decay) {
  constexpr const char* op = "dtp_fast::momentum_sgd_";
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && bufs.size() == n, op, ": params, grads and bufs must have the same length, got ",
              n, ", ", grads.size(), " and ", bufs.size());
  TORCH_CHECK(lr.size() == n && momentum.size() == n && weight_decay.size() == n, op,
              ": lr, momentum and weight_decay need one value per tensor (", n, "), got ", lr.size(), ", ",
              momentum.size(), " and ", weight_decay.size());
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &buf = bufs[i];
    at::Tensor g = grads[i];
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &g, &buf}) {
      TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op,
                  ": float32 or float64 only, got ", t->scalar_type(), " (tensor ", i, ")");
      TORCH_CHECK(t->scalar_type() == params[0].scalar_type(), op, ": all tensors must have one dtype, got ",
                  t->scalar_type(), " and ", params[0].scalar_type(), " (tensor ", i, ")");
      TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got one on ", t->device(), " (tensor ", i, ")");
    }
    TORCH_CHECK(g.sizes() == p.sizes() && buf.sizes() == p.sizes(), op, ": tensor ", i,
                ": param, grad and buf must have one shape, got ", p.sizes(), ", ", g.sizes(), " and ",
                buf.sizes());
    TORCH_CHECK(p.is_non_overlapping_and_dense() && buf.strides() == p.strides(), op, ": tensor ", i,
                ": param must be dense and buf must have its strides, got strides ", p.strides(), " and ",
                buf.strides());
    if (g.strides() != p.strides() || !g.is_non_overlapping_and_dense()) {
      g = at::empty_like(p).copy_(g);
    }
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "dtp_fast_momentum_sgd_cpu", [&] {
      sgd_step(p.mutable_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), buf.mutable_data_ptr<scalar_t>(),
               p.numel(), lr[i], momentum[i], weight_decay[i]);
    });
  }
}

// ------------------------------------------------------------------ ldrl_loss
// dr_y dense (any layout; else made contiguous); A read in V's layout.
at::Tensor ldrl_loss_cpu(const at::Tensor& dr_y, const at::Tensor& A, const at::Tensor& V, double scale) {
  constexpr const char* op = "dtp_fast::ldrl_loss";
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&dr_y, &A, &V}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op,
                ": float32 or float64 only, got ", t->scalar_type());
    TORCH_CHECK(t->scalar_type() == V.scalar_type(), op, ": dr_y, A and V must have one dtype, got ",
                t->scalar_type(), " and ", V.scalar_type());
    TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got one on ", t->device());
  }
  at::Tensor r, a, v;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(r, a, v) = ldrl_loss_operands(dr_y, A, V);
  at::Tensor out = at::empty({}, V.options());
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_ldrl_loss_cpu", [&] {
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    double sq = 0.0, dot = 0.0;
    for (int64_t i = 0; i < r.numel(); ++i) {
      const double x = static_cast<double>(rp[i]);
      sq = sq + x * x;
    }
    for (int64_t i = 0; i < v.numel(); ++i) dot = dot + static_cast<double>(ap[i]) * static_cast<double>(vp[i]);
    *out.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(scale * (sq - 2.0 * dot));
  });
  return out;
}

// ------------------------------------------------------------------ linear_chain_
at::Tensor linear_chain_cpu(at::Tensor& V, at::Tensor& buf, const at::Tensor& A, const at::Tensor& C, double lr,
                            double momentum, double weight_decay, double scale, int64_t loss_from) {
  constexpr const char* op = "dtp_fast::linear_chain_";
  const int64_t n = check_linear_chain_shapes(V, buf, A, C, loss_from);
  const int64_t d_in = V.size(0), d_out = V.size(1);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&V, &buf, &A, &C}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kDouble, op,
                ": float32 or float64 only, got ", t->scalar_type());
    TORCH_CHECK(t->scalar_type() == V.scalar_type(), op, ": V, buf, A and C must have one dtype, got ",
                t->scalar_type(), " and ", V.scalar_type());
    TORCH_CHECK(t->device().is_cpu(), op, ": expected CPU tensors, got one on ", t->device());
  }
  at::Tensor losses = at::empty({n - loss_from}, V.options());
  if (n == 0 || V.numel() == 0) return losses.zero_();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_linear_chain_cpu", [&] {
    scalar_t* vp = V.mutable_data_ptr<scalar_t>();
    scalar_t* bp = buf.mutable_data_ptr<scalar_t>();
    const scalar_t* a0 = A.const_data_ptr<scalar_t>();
    const scalar_t* c0 = C.const_data_ptr<scalar_t>();
    scalar_t* lp = losses.mutable_data_ptr<scalar_t>();
    const scalar_t gs = static_cast<scalar_t>(2.0 * scale), wd = static_cast<scalar_t>(weight_decay);
    const scalar_t mom = static_cast<scalar_t>(momentum), nlr = static_cast<scalar_t>(-lr);
    std::vector<scalar_t> G(static_cast<size_t>(d_in * d_out));
    for (int64_t k = 0; k < n; ++k) {
      const scalar_t* Ak = a0 + k * d_in * d_out;
      const scalar_t* Ck = c0 + k * d_out * d_out;
      double sq = 0.0, dot = 0.0;
      for (int64_t i = 0; i < d_in; ++i) {
        for (int64_t j = 0; j < d_out; ++j) {
          scalar_t q = scalar_t(0);
          for (int64_t r = 0; r < d_out; ++r) {
            const scalar_t prod = vp[i * d_out + r] * Ck[r * d_out + j];
            q = q + prod;
          }
          const int64_t e = i * d_out + j;
          const scalar_t v = vp[e], ak = Ak[e];
          sq = sq + static_cast<double>(q) * static_cast<double>(v);
          dot = dot + static_cast<double>(ak) * static_cast<double>(v);
          scalar_t g = (q - ak) * gs;
          if (wd != scalar_t(0)) {
            const scalar_t decay = wd * v;
            g = g + decay;
          }
          G[static_cast<size_t>(e)] = g;
        }
      }
      for (int64_t e = 0; e < d_in * d_out; ++e) {
        const scalar_t scaled = bp[e] * mom;
        const scalar_t b = scaled + G[static_cast<size_t>(e)];
        bp[e] = b;
        const scalar_t step = nlr * b;
        vp[e] = vp[e] + step;
      }
      if (k >= loss_from) lp[k - loss_from] = static_cast<scalar_t>(scale * (sq - 2.0 * dot));
    }
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) {
  m.impl("noisy_unpool_diff_philox", &noisy_unpool_diff_philox_cpu);
  m.impl("momentum_sgd_", &momentum_sgd_cpu);
  m.impl("ldrl_loss", &ldrl_loss_cpu);
  m.impl("linear_chain_", &linear_chain_cpu);
}

}  // namespace dtp_fast
