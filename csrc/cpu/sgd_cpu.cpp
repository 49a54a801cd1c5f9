// CPU kernel of the sgd family: dtp_fast::momentum_sgd_, torch.optim.SGD's
// single-tensor momentum step, tensor by tensor; the oracle of the CUDA kernel
// (csrc/cuda/sgd_cuda.cu, tests/test_cuda.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>

#include "../sgd_args.h"

namespace dtp_fast {
namespace {

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
  const size_t n = check_momentum_sgd_lists(op, params, grads, bufs, lr, momentum, weight_decay);
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
    if (check_sgd_tensor(op, i, p, g, buf)) {
      g = at::empty_like(p).copy_(g);
    }
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "dtp_fast_momentum_sgd_cpu", [&] {
      sgd_step(p.mutable_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), buf.mutable_data_ptr<scalar_t>(),
               p.numel(), lr[i], momentum[i], weight_decay[i]);
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) { m.impl("momentum_sgd_", &momentum_sgd_cpu); }

}  // namespace dtp_fast
