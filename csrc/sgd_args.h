// Argument checks of the sgd family (momentum_sgd_), shared by its CPU
// (csrc/cpu/sgd_cpu.cpp) and CUDA (csrc/cuda/sgd_cuda_bind.cpp) bindings.
// Dtype and device checks stay with each binding.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstddef>

namespace dtp_fast {

// params, grads, bufs and the hyper-parameters lr, momentum, weight_decay
// hold one entry per tensor: returns their number.
inline size_t check_momentum_sgd_lists(const char* op, at::TensorList params, at::TensorList grads,
                                       at::TensorList bufs, at::ArrayRef<double> lr,
                                       at::ArrayRef<double> momentum, at::ArrayRef<double> weight_decay) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && bufs.size() == n, op, ": params, grads and bufs must have the same length, got ",
              n, ", ", grads.size(), " and ", bufs.size());
  TORCH_CHECK(lr.size() == n && momentum.size() == n && weight_decay.size() == n, op,
              ": lr, momentum and weight_decay need one value per tensor (", n, "), got ", lr.size(), ", ",
              momentum.size(), " and ", weight_decay.size());
  return n;
}

// Tensor i: param p, grad g and buf of one shape, p dense and buf with its
// strides. Returns whether g must first be copied to the layout of p.
inline bool check_sgd_tensor(const char* op, size_t i, const at::Tensor& p, const at::Tensor& g,
                             const at::Tensor& buf) {
  TORCH_CHECK(g.sizes() == p.sizes() && buf.sizes() == p.sizes(), op, ": tensor ", i,
              ": param, grad and buf must have one shape, got ", p.sizes(), ", ", g.sizes(), " and ",
              buf.sizes());
  TORCH_CHECK(p.is_non_overlapping_and_dense() && buf.strides() == p.strides(), op, ": tensor ", i,
              ": param must be dense and buf must have its strides, got strides ", p.strides(), " and ",
              buf.strides());
  return g.strides() != p.strides() || !g.is_non_overlapping_and_dense();
}

}  // namespace dtp_fast
