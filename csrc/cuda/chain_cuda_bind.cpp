// CUDA binding of the chain family: dtp_fast::ldrl_loss and
// dtp_fast::linear_chain_ (argument checks, output and scratch allocation,
// stream and device; the kernels are in chain_cuda.cu).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "../chain_args.h"
#include "../checks.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

// ------------------------------------------------------------------ ldrl_loss
at::Tensor ldrl_loss_cuda(const at::Tensor& dr_y, const at::Tensor& A, const at::Tensor& V, double scale) {
  constexpr const char* op = "dtp_fast::ldrl_loss";
  TORCH_CHECK(V.is_cuda(), op, ": expected CUDA tensors, got V on ", V.device());
  check_float_cuda(op, "V", V);
  check_same_device(op, "dr_y", dr_y, V);
  check_same_device(op, "A", A, V);
  check_same_dtype(op, "dr_y", dr_y, "V", V);
  check_same_dtype(op, "A", A, "V", V);
  const c10::cuda::CUDAGuard guard(V.device());
  at::Tensor r, a, v;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(r, a, v) = ldrl_loss_operands(dr_y, A, V);
  at::Tensor out = at::empty({}, V.options());
  const int blocks = cuda::ldrl_loss_blocks(r.numel(), v.numel());
  at::Tensor partials = at::empty({2 * int64_t{blocks}}, V.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_ldrl_loss_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_ldrl_loss<scalar_t>(r.const_data_ptr<scalar_t>(), r.numel(),
                                                    a.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                                                    v.numel(), scale, out.mutable_data_ptr<scalar_t>(),
                                                    partials.mutable_data_ptr<double>(), stream));
  });
  return out;
}

// ------------------------------------------------------------------ linear_chain_
at::Tensor linear_chain_cuda(at::Tensor& V, at::Tensor& buf, const at::Tensor& A, const at::Tensor& C, double lr,
                             double momentum, double weight_decay, double scale, int64_t loss_from) {
  constexpr const char* op = "dtp_fast::linear_chain_";
  const int64_t n = check_linear_chain_shapes(V, buf, A, C, loss_from);
  const int64_t d_in = V.size(0), d_out = V.size(1);
  TORCH_CHECK(V.is_cuda(), op, ": expected CUDA tensors, got V on ", V.device());
  check_float_cuda(op, "V", V);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&V, &buf, &A, &C}) {
    check_same_device(op, "a tensor", *t, V);
    check_same_dtype(op, "a tensor", *t, "V", V);
  }
  TORCH_CHECK(d_in * d_out < (int64_t{1} << 40), op, ": V too large");
  const c10::cuda::CUDAGuard guard(V.device());
  at::Tensor losses = at::empty({n - loss_from}, V.options());
  if (n == 0 || V.numel() == 0) return losses.zero_();
  const int blocks = cuda::linear_chain_blocks(d_in, d_out);
  at::Tensor partials =
      at::empty({std::max<int64_t>(1, 2 * (n - loss_from) * int64_t{blocks})}, V.options().dtype(at::kDouble));
  at::Tensor G = at::empty_like(V);
  const cuda::LinearChainArgs args{n, d_in, d_out, loss_from, lr, momentum, weight_decay, 2.0 * scale, scale};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_linear_chain_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_linear_chain<scalar_t>(
        V.mutable_data_ptr<scalar_t>(), buf.mutable_data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(),
        C.const_data_ptr<scalar_t>(), G.mutable_data_ptr<scalar_t>(), losses.mutable_data_ptr<scalar_t>(),
        partials.mutable_data_ptr<double>(), args, stream));
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m) {
  m.impl("ldrl_loss", &ldrl_loss_cuda);
  m.impl("linear_chain_", &linear_chain_cuda);
}

}  // namespace dtp_fast
