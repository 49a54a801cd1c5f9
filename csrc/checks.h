// Argument checks shared by the ops of several families (torch side, CPU and
// CUDA bindings): one dtype for two operands, 32-bit counter words, and the
// dtype and device checks of the CUDA bindings (csrc/cuda/*_bind.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

namespace dtp_fast {

constexpr int64_t k2to32 = int64_t{1} << 32;

inline void check_same_dtype(const char* op, const char* name_a,
                             const at::Tensor& a, const char* name_b,
                             const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", name_a, " and ",
              name_b, " must have the same dtype, got ", a.scalar_type(),
              " and ", b.scalar_type());
}

inline void check_u32(const char* op, const char* what, int64_t v) {
  TORCH_CHECK(v >= 0 && v < k2to32, op, ": ", what, " must be in [0, 2^32), got ", v);
}

inline void check_float_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CUDA kernel supports float32 and float64, got ", name, " of dtype ", t.scalar_type());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& main) {
  TORCH_CHECK(t.is_cuda() && t.device() == main.device(), op, ": all tensors must be on the same CUDA device, got ",
              name, " on ", t.device(), " and the others on ", main.device());
}

}  // namespace dtp_fast
