// CUDA binding of the sgd family: dtp_fast::momentum_sgd_ (argument checks,
// stream and device; the kernel is in sgd_cuda.cu).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <initializer_list>
#include <vector>

#include "../checks.h"
#include "../sgd_args.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

void momentum_sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, at::ArrayRef<double> lr,
                       at::ArrayRef<double> momentum, at::ArrayRef<double> weight_decay) {
  constexpr const char* op = "dtp_fast::momentum_sgd_";
  const size_t n = check_momentum_sgd_lists(op, params, grads, bufs, lr, momentum, weight_decay);
  if (n == 0) return;
  const at::Tensor& first = params[0];
  TORCH_CHECK(first.is_cuda(), op, ": expected CUDA tensors, got params[0] on ", first.device());
  check_float_cuda(op, "params", first);
  const c10::cuda::CUDAGuard guard(first.device());
  std::vector<at::Tensor> keep;  // grads copied to the layout of their parameter
  std::vector<cuda::SgdTensor> list(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &buf = bufs[i];
    at::Tensor g = grads[i];
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &g, &buf}) {
      TORCH_CHECK(t->scalar_type() == first.scalar_type(), op, ": all tensors must have one dtype, got ",
                  t->scalar_type(), " and ", first.scalar_type(), " (tensor ", i, ")");
      check_same_device(op, "a tensor", *t, first);
    }
    if (check_sgd_tensor(op, i, p, g, buf)) {
      keep.push_back(at::empty_like(p).copy_(g));
      g = keep.back();
    }
    list[i] = {p.data_ptr(), g.const_data_ptr(), buf.data_ptr(), p.numel(), lr[i], momentum[i], weight_decay[i]};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "dtp_fast_momentum_sgd_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_momentum_sgd<scalar_t>(list.data(), static_cast<int>(n), stream));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m) {
  m.impl("momentum_sgd_", &momentum_sgd_cuda);
}

}  // namespace dtp_fast
