// Argument checks of the noise family (philox_normal_), shared by its CPU
// (csrc/cpu/noise_cpu.cpp) and CUDA (csrc/cuda/noise_cuda_bind.cpp) bindings.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>

#include "checks.h"

namespace dtp_fast {

// out: contiguous (rows, ...), float32 or float64; the counter words in
// [0, 2^32). Returns the elements per row.
inline int64_t check_philox_normal_args(const at::Tensor& out, int64_t key0, int64_t key1, int64_t offset,
                                        int64_t iteration, int64_t sample) {
  constexpr const char* op = "dtp_fast::philox_normal_";
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  TORCH_CHECK(out.dim() >= 1, op, ": out needs a batch dimension (rows)");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", out.scalar_type());
  for (const int64_t v : {key0, key1, iteration, sample}) check_u32(op, "key words, iteration and sample", v);
  const int64_t rows = out.size(0), feat = rows ? out.numel() / rows : 0;
  TORCH_CHECK(offset >= 0 && offset + rows <= k2to32, op,
              ": sample indices offset .. offset + rows must be in [0, 2^32)");
  TORCH_CHECK(feat < (int64_t{1} << 34), op, ": rows of more than 2^34 elements");
  return feat;
}

}  // namespace dtp_fast
