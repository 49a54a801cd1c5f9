// CUDA kernels of dtp_fast: the plain C++ interface between the kernels
// (csrc/cuda/*.cu, raw pointers, no torch headers: they compile in seconds)
// and their torch binding (csrc/cuda/bind_cuda.cpp, argument checks and
// TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m)).
//
// Every launcher enqueues its kernels on `stream` and returns the launch
// status (cudaGetLastError()); none synchronises. Tensors are described by
// their data pointer and four element strides (N, C, H, W), so NCHW,
// channels_last and strided views all work; `channels_last` only picks the
// order in which threads walk the output (channels innermost for coalescing).
//
// Floating point: the .cu files are compiled with -fmad=false (setup.py,
// CMakeLists.txt), so no multiply and add is contracted into an FMA. The
// noise (csrc/philox.h) then performs exactly the float32 operations of the
// CPU kernel and the PyTorch mirror (dtp_fast/noise.py), and `y + sigma * eps`
// rounds the product and the sum separately, as PyTorch's expression does.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dtp_fast {
namespace cuda {

struct Strides4 {
  int64_t n, c, h, w;
};

// Activation codes: as csrc/pool_act.h (0 identity, 1 ELU, 2 ReLU, 3 tanh).

// philox_normal_: out is a contiguous (rows, feat) array; row r, element e
// gets lane e % 4 of the Philox block (e / 4, offset + r, iteration, sample).
template <typename T>
cudaError_t launch_philox_normal(T* out, int64_t rows, int64_t feat, uint32_t key0, uint32_t key1,
                                 int64_t offset, uint32_t iteration, uint32_t sample, cudaStream_t stream);

// pool_unpool_diff: out[n] = ACT(unpool(maxpool(ACT(z1[n])))) - h0[n % B].
struct PoolUnpoolArgs {
  int64_t N, B, C, H, W;     // z1 / out (N, C, H, W), h0 (B, C, H, W)
  int64_t kH, kW, sH, sW, pH, pW, OH, OW;
  Strides4 z, h0, out;
  bool channels_last;        // walk the output with the channels innermost
  int act;
};
template <typename T>
cudaError_t launch_pool_unpool_diff(const T* z1, const T* h0, T* out, const PoolUnpoolArgs& a,
                                    cudaStream_t stream);

// noisy_unpool_diff: out[n] = ACT(unpool(y[b] + sigma * eps[n], ind[b])) - h0[b],
// b = n % B, where several pooled positions of a plane hold the same index the
// last one (row-major) wins. The noise is read from `eps` (strides a.eps), or,
// when eps is null, drawn in the kernel: eps[n][e] (e = (c * Hp + hp) * Wp + wp)
// is lane e % 4 of the Philox block (e / 4, offset + b, iteration0 + m / samples,
// m % samples) with m = n / B, key (key0, key1), as float32 cast to T.
// `winner` is scratch of B * C * H * W int32 (overwritten). Indices outside
// [0, H * W) are skipped (no device-to-host check, so the op can be captured
// in a CUDA graph): their pooled values are dropped.
struct NoisyArgs {
  int64_t N, B, C, Hp, Wp, H, W;
  Strides4 y, eps, ind, h0, out;
  bool channels_last;
  int act;
  uint32_t key0, key1;       // in-kernel noise only
  int64_t offset;
  uint32_t iteration0;
  int64_t samples;
};
template <typename T>
cudaError_t launch_noisy_unpool_diff(const T* y, const T* eps, T sigma, const int64_t* ind, const T* h0, T* out,
                                     int32_t* winner, const NoisyArgs& a, cudaStream_t stream);

// Multi-tensor momentum SGD (torch.optim.SGD, dampening 0, no Nesterov), for
// each tensor i over its numel elements (dense, p, g, buf with one layout):
//   g' = g + weight_decay * p (if weight_decay != 0); buf = momentum * buf + g';
//   p = p - lr * buf.
struct SgdTensor {
  void* param;
  const void* grad;
  void* buf;
  int64_t numel;
  double lr, momentum, weight_decay;
};
constexpr int kSgdMaxTensors = 24;  // per launch (kernel-argument space)
template <typename T>
cudaError_t launch_momentum_sgd(const SgdTensor* tensors, int count, cudaStream_t stream);

}  // namespace cuda
}  // namespace dtp_fast
