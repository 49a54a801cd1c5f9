// Argument checks of the dh family (pool_unpool_diff, noisy_unpool_diff,
// noisy_unpool_diff_philox), shared by its CPU (csrc/cpu/dh_cpu.cpp) and CUDA
// (csrc/cuda/dh_cuda_bind.cpp) bindings. Dtype and device checks stay with
// each binding.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "checks.h"
#include "pool.h"

namespace dtp_fast {

inline void check_ldrl_4d(const char* op, const char* name, const char* shape,
                          const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D ", shape, ", got ",
              t.dim(), "-D tensor of shape ", t.sizes());
}

// The batch of `copies` (M*B: M noisy copies of a batch) must be a whole
// multiple of the batch B of `batch`.
inline void check_copies(const char* op, const char* copies_name,
                         int64_t copies, const char* batch_name,
                         int64_t batch) {
  TORCH_CHECK(batch > 0 ? copies % batch == 0 : copies == 0, op, ": the batch "
              "size of ", copies_name, " (", copies, ") must be a multiple of "
              "the batch size of ", batch_name, " (", batch, "): ",
              copies_name, " holds M copies of a batch of ", batch_name);
}

// pool_unpool_diff's first checks (act, z1 (M*B, C, H, W), h0 (B, C, H, W))
// and the geometry of its pool over z1.
inline PoolGeometry pool_unpool_diff_geometry(const char* op, const at::Tensor& z1, const at::Tensor& h0,
                                              int64_t act, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                              at::IntArrayRef padding) {
  check_act(op, act);
  check_ldrl_4d(op, "z1", "(M*B, C, H, W)", z1);
  check_ldrl_4d(op, "h0", "(B, C, H, W)", h0);
  return pool_geometry(op, z1, kernel_size, stride, padding);
}

}  // namespace dtp_fast
