// CUDA binding of the noise family: dtp_fast::philox_normal_ (argument checks,
// stream and device; the kernel is in noise_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../checks.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

void philox_normal_cuda(at::Tensor& out, int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                        int64_t sample) {
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
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto k0 = static_cast<uint32_t>(key0), k1 = static_cast<uint32_t>(key1);
  const auto it = static_cast<uint32_t>(iteration), smp = static_cast<uint32_t>(sample);
  cudaError_t err;
  if (out.scalar_type() == at::kFloat) {
    err = cuda::launch_philox_normal(out.data_ptr<float>(), rows, feat, k0, k1, offset, it, smp, stream);
  } else {
    err = cuda::launch_philox_normal(out.data_ptr<double>(), rows, feat, k0, k1, offset, it, smp, stream);
  }
  C10_CUDA_CHECK(err);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m) {
  m.impl("philox_normal_", &philox_normal_cuda);
}

}  // namespace dtp_fast
