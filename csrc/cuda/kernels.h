// CUDA kernels of dtp_fast: the plain C++ interface between the kernels of
// each family (csrc/cuda/<family>_cuda.cu, raw pointers, no torch headers: they
// compile in seconds) and their torch bindings (csrc/cuda/<family>_cuda_bind.cpp,
// argument checks and TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m)), one section per
// family. One header for all families: it is the whole contract between nvcc's
// side and torch's side, small, and its sections share Strides4.
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

// Activation codes: as csrc/pool.h (0 identity, 1 ELU, 2 ReLU, 3 tanh).

// ------------------------------------------------------------------ noise
// philox_normal_: out is a contiguous (rows, feat) array; row r, element e
// gets lane e % 4 of the Philox block (e / 4, offset + r, iteration, sample).
template <typename T>
cudaError_t launch_philox_normal(T* out, int64_t rows, int64_t feat, uint32_t key0, uint32_t key1,
                                 int64_t offset, uint32_t iteration, uint32_t sample, cudaStream_t stream);

// ------------------------------------------------------------------ dh
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

// ------------------------------------------------------------------ sgd
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

// ------------------------------------------------------------------ chain
// L-DRL loss of a conv layer (dtp_fast::ldrl_loss): out[0] = scale * (sum(r^2)
// - 2 * sum(a * v)), r with n_r elements, a and v with n_v (read in one
// layout), both sums accumulated in double, in two passes: a fixed grid of
// blocks (a function of the sizes only) writes per-block partial sums to
// `partials` (2 * ldrl_loss_blocks(...) doubles, overwritten), then one block
// adds them in a fixed order. No atomics: the result is deterministic.
int ldrl_loss_blocks(int64_t n_r, int64_t n_v);
template <typename T>
cudaError_t launch_ldrl_loss(const T* r, int64_t n_r, const T* a, const T* v, int64_t n_v, double scale, T* out,
                             double* partials, cudaStream_t stream);

// Every iteration of a chunk of a Linear feedback block in one launch
// (dtp_fast::linear_chain_). V, buf: (d_in, d_out); A: (n, d_in, d_out);
// C: (n, d_out, d_out); all contiguous. For k = 0 .. n - 1:
//   G = V C_k (each element sum_r V[i, r] C_k[r, j] accumulated in T, r in order);
//   loss_k = scale * (<G, V> - 2 <A_k, V>) (V before the step; double sums) for k >= loss_from;
//   g = (G - A_k) * grad_scale (+ weight_decay * V); buf = momentum * buf + g; V = V - lr * buf.
// Rows of V are independent (row i of V C_k needs row i of V only): each block
// owns a fixed number of rows for all iterations; the loss partials of
// every (iteration, block) go to `partials` (2 * (n - loss_from) * blocks
// doubles) and a second kernel adds them in block order into losses[k - loss_from].
// `G` is scratch of d_in * d_out elements.
struct LinearChainArgs {
  int64_t n, d_in, d_out, loss_from;
  double lr, momentum, weight_decay, grad_scale, loss_scale;
};
int linear_chain_blocks(int64_t d_in, int64_t d_out);
template <typename T>
cudaError_t launch_linear_chain(T* V, T* buf, const T* A, const T* C, T* G, T* losses, double* partials,
                                const LinearChainArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace dtp_fast
