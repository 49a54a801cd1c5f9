// CUDA kernel of the sgd family: dtp_fast::momentum_sgd_. One launch updates up
// to kSgdMaxTensors tensors (blockIdx.y picks the tensor), each with its own
// learning rate, momentum and weight decay; the operations and roundings of
// torch.optim.SGD's single-tensor path (no FMA: compiled with -fmad=false).
// Binding: sgd_cuda_bind.cpp.
#include "common.cuh"

namespace dtp_fast {
namespace cuda {
namespace {

struct SgdLaunch {
  SgdTensor t[kSgdMaxTensors];
};

template <typename T>
__global__ void momentum_sgd_kernel(SgdLaunch L) {
  const SgdTensor& d = L.t[blockIdx.y];
  T* p = static_cast<T*>(d.param);
  const T* g = static_cast<const T*>(d.grad);
  T* buf = static_cast<T*>(d.buf);
  const T lr = static_cast<T>(-d.lr), mom = static_cast<T>(d.momentum), wd = static_cast<T>(d.weight_decay);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < d.numel;
       i += int64_t{gridDim.x} * blockDim.x) {
    T gi = g[i];
    const T pi = p[i];
    if (wd != T(0)) gi = gi + wd * pi;  // grad.add_(p, alpha=wd)
    const T bi = buf[i] * mom + gi;     // buf.mul_(momentum).add_(grad)
    buf[i] = bi;
    p[i] = pi + lr * bi;                // p.add_(buf, alpha=-lr)
  }
}

}  // namespace

template <typename T>
cudaError_t launch_momentum_sgd(const SgdTensor* tensors, int count, cudaStream_t stream) {
  for (int first = 0; first < count; first += kSgdMaxTensors) {
    const int n = count - first < kSgdMaxTensors ? count - first : kSgdMaxTensors;
    SgdLaunch L{};
    int64_t most = 0;
    for (int i = 0; i < n; ++i) {
      L.t[i] = tensors[first + i];
      most = L.t[i].numel > most ? L.t[i].numel : most;
    }
    if (most == 0) continue;
    const dim3 grid(std::min(grid_for(most), 2048u), static_cast<unsigned>(n));
    momentum_sgd_kernel<T><<<grid, kThreads, 0, stream>>>(L);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template cudaError_t launch_momentum_sgd<float>(const SgdTensor*, int, cudaStream_t);
template cudaError_t launch_momentum_sgd<double>(const SgdTensor*, int, cudaStream_t);

}  // namespace cuda
}  // namespace dtp_fast
