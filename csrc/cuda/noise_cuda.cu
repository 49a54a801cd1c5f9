// CUDA kernel of the noise family: dtp_fast::philox_normal_ (csrc/philox.h), one
// thread per block of four normals of a row, the same values as the CPU kernel.
// Binding: noise_cuda_bind.cpp.
#include "../philox.h"
#include "common.cuh"

namespace dtp_fast {
namespace cuda {
namespace {

template <typename T>
__global__ void philox_normal_kernel(T* out, int64_t rows, int64_t feat, uint32_t k0, uint32_t k1, int64_t offset,
                                     uint32_t it, uint32_t smp, bool vec4) {
  const int64_t blocks = (feat + 3) / 4;
  const int64_t total = rows * blocks;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / blocks, j = i % blocks;
    float v[4];
    philox::normal4(static_cast<uint32_t>(j), static_cast<uint32_t>(offset + r), it, smp, k0, k1, v);
    T* dst = out + r * feat + 4 * j;
    if constexpr (sizeof(T) == sizeof(float)) {
      if (vec4) {  // rows of whole blocks and a 16-byte aligned base
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
        continue;
      }
    }
    const int64_t n = feat - 4 * j < 4 ? feat - 4 * j : 4;
    for (int64_t e = 0; e < n; ++e) dst[e] = static_cast<T>(v[e]);
  }
}

}  // namespace

template <typename T>
cudaError_t launch_philox_normal(T* out, int64_t rows, int64_t feat, uint32_t key0, uint32_t key1, int64_t offset,
                                 uint32_t iteration, uint32_t sample, cudaStream_t stream) {
  const int64_t total = rows * ((feat + 3) / 4);
  if (total == 0) return cudaSuccess;
  const bool vec4 = feat % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  philox_normal_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(out, rows, feat, key0, key1, offset, iteration,
                                                                     sample, vec4);
  return cudaGetLastError();
}

template cudaError_t launch_philox_normal<float>(float*, int64_t, int64_t, uint32_t, uint32_t, int64_t, uint32_t,
                                                 uint32_t, cudaStream_t);
template cudaError_t launch_philox_normal<double>(double*, int64_t, int64_t, uint32_t, uint32_t, int64_t, uint32_t,
                                                  uint32_t, cudaStream_t);

}  // namespace cuda
}  // namespace dtp_fast
