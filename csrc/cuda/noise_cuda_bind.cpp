// CUDA binding of the noise family: dtp_fast::philox_normal_ (argument checks,
// stream and device; the kernel is in noise_cuda.cu).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../noise_args.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

void philox_normal_cuda(at::Tensor& out, int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                        int64_t sample) {
  const int64_t feat = check_philox_normal_args(out, key0, key1, offset, iteration, sample);
  if (out.numel() == 0) return;
  const int64_t rows = out.size(0);
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
