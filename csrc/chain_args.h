// Argument checks and operand layouts of the chain family (dtp_fast::ldrl_loss,
// dtp_fast::linear_chain_), shared by its CPU (csrc/cpu/chain_cpu.cpp) and CUDA
// (csrc/cuda/chain_cuda_bind.cpp) bindings. Device and dtype checks stay with
// each binding.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>

namespace dtp_fast {

// ldrl_loss's operands: dr_y dense in any layout (else made contiguous), V
// dense, A in V's layout; checks that A has V's shape.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> ldrl_loss_operands(const at::Tensor& dr_y,
                                                                         const at::Tensor& A,
                                                                         const at::Tensor& V) {
  TORCH_CHECK(A.sizes() == V.sizes(), "dtp_fast::ldrl_loss: A must have the shape of V, got ", A.sizes(), " and ",
              V.sizes());
  at::Tensor r = dr_y.is_non_overlapping_and_dense() ? dr_y : dr_y.contiguous();
  at::Tensor v = V.is_non_overlapping_and_dense() ? V : V.contiguous();
  at::Tensor a = (A.strides() == v.strides() && A.is_non_overlapping_and_dense()) ? A : at::empty_like(v).copy_(A);
  return {r, a, v};
}

// linear_chain_'s shapes: V, buf (d_in, d_out), A (n, d_in, d_out), C (n, d_out, d_out),
// 0 <= loss_from <= n, all contiguous. Returns n.
inline int64_t check_linear_chain_shapes(const at::Tensor& V, const at::Tensor& buf, const at::Tensor& A,
                                         const at::Tensor& C, int64_t loss_from) {
  constexpr const char* op = "dtp_fast::linear_chain_";
  TORCH_CHECK(V.dim() == 2, op, ": V must be (d_in, d_out), got shape ", V.sizes());
  const int64_t d_in = V.size(0), d_out = V.size(1);
  TORCH_CHECK(A.dim() == 3 && A.size(1) == d_in && A.size(2) == d_out, op, ": A must be (n, ", d_in, ", ", d_out,
              "), got shape ", A.sizes());
  const int64_t n = A.size(0);
  TORCH_CHECK(C.dim() == 3 && C.size(0) == n && C.size(1) == d_out && C.size(2) == d_out, op, ": C must be (", n,
              ", ", d_out, ", ", d_out, "), got shape ", C.sizes());
  TORCH_CHECK(buf.sizes() == V.sizes(), op, ": buf must have the shape of V, got ", buf.sizes());
  TORCH_CHECK(V.is_contiguous() && buf.is_contiguous() && A.is_contiguous() && C.is_contiguous(), op,
              ": V, buf, A and C must be contiguous");
  TORCH_CHECK(loss_from >= 0 && loss_from <= n, op, ": loss_from must be in [0, n] = [0, ", n, "], got ", loss_from);
  return n;
}

}  // namespace dtp_fast
