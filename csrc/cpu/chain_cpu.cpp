// CPU kernels of the chain family: dtp_fast::ldrl_loss (both sums in double,
// serially in memory order) and dtp_fast::linear_chain_ (the iterations of a
// Linear feedback block, as simple loops in the order and roundings of the
// CUDA kernel, csrc/cuda/chain_cuda.cu). They define the results and serve as
// the oracle of the CUDA kernels (tests/test_cuda.py).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>
#include <vector>

#include "../chain_args.h"

namespace dtp_fast {
namespace {

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
  m.impl("ldrl_loss", &ldrl_loss_cpu);
  m.impl("linear_chain_", &linear_chain_cpu);
}

}  // namespace dtp_fast
