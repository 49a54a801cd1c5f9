// CUDA kernels of the chain family, the sequential chain of L-DRL feedback
// training (ALGORITHM.md section 5): dtp_fast::ldrl_loss (both terms of a conv
// layer's loss in one reduction) and dtp_fast::linear_chain_ (every iteration
// of a Linear feedback block in one persistent launch). Semantics: kernels.h,
// csrc/ops.cpp; CPU oracles: csrc/cpu/chain_cpu.cpp; binding:
// chain_cuda_bind.cpp.
//
// Deterministic: no atomics. Sums are accumulated in double per thread, then
// combined by a fixed shared-memory tree per block, then per-block partials
// are added in block order by a second kernel; the grids depend on the sizes
// only (not on the device). Compiled with -fmad=false, so V C_k rounds every
// product and sum separately, in the order of the CPU oracle.
#include "common.cuh"

namespace dtp_fast {
namespace cuda {
namespace {

constexpr int kLossMaxBlocks = 1024;

// Sum of (x, y) over the threads of a kThreads block, in a fixed tree order;
// the result in thread 0. Must be reached by every thread of the block.
__device__ __forceinline__ void block_sum2(double& x, double& y) {
  __shared__ double sx[kThreads], sy[kThreads];
  const int t = threadIdx.x;
  sx[t] = x;
  sy[t] = y;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (t < s) {
      sx[t] = sx[t] + sx[t + s];
      sy[t] = sy[t] + sy[t + s];
    }
    __syncthreads();
  }
  x = sx[0];
  y = sy[0];
  __syncthreads();  // sx / sy may be reused by the next call
}

// ---------------------------------------------------------------- ldrl_loss
template <typename T>
__global__ void loss_partial_kernel(const T* r, int64_t n_r, const T* a, const T* v, int64_t n_v,
                                    double* partials) {
  double sq = 0.0, dot = 0.0;
  const int64_t n = n_r > n_v ? n_r : n_v;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    if (i < n_r) {
      const double x = static_cast<double>(r[i]);
      sq = sq + x * x;
    }
    if (i < n_v) dot = dot + static_cast<double>(a[i]) * static_cast<double>(v[i]);
  }
  block_sum2(sq, dot);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = sq;
    partials[2 * blockIdx.x + 1] = dot;
  }
}

template <typename T>
__global__ void loss_final_kernel(const double* partials, int blocks, double scale, T* out) {
  double sq = 0.0, dot = 0.0;
  for (int b = threadIdx.x; b < blocks; b += blockDim.x) {
    sq = sq + partials[2 * b];
    dot = dot + partials[2 * b + 1];
  }
  block_sum2(sq, dot);
  if (threadIdx.x == 0) out[0] = static_cast<T>(scale * (sq - 2.0 * dot));
}

// ---------------------------------------------------------------- linear_chain_
template <typename T>
__global__ void linear_chain_kernel(T* V, T* buf, const T* A, const T* C, T* G, double* partials, LinearChainArgs a,
                                    int64_t rows) {
  const int64_t d_out = a.d_out, vsize = a.d_in * a.d_out;
  const int64_t r0 = blockIdx.x * rows;
  const int64_t r1 = r0 + rows < a.d_in ? r0 + rows : a.d_in;
  const int64_t e0 = r0 * d_out, e1 = r1 * d_out;
  const T gs = static_cast<T>(a.grad_scale), wd = static_cast<T>(a.weight_decay);
  const T mom = static_cast<T>(a.momentum), nlr = static_cast<T>(-a.lr);
  for (int64_t k = 0; k < a.n; ++k) {
    const T* Ak = A + k * vsize;
    const T* Ck = C + k * d_out * d_out;
    const bool want = k >= a.loss_from;
    double sq = 0.0, dot = 0.0;
    // G = (V C_k - A_k) * gs + wd * V on this block's rows; the loss terms with the V before the step
    for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
      const int64_t i = e / d_out, j = e - i * d_out;
      const T* vrow = V + i * d_out;
      T q = T(0);
      for (int64_t r = 0; r < d_out; ++r) q = q + vrow[r] * Ck[r * d_out + j];
      const T v = V[e], ak = Ak[e];
      if (want) {
        sq = sq + static_cast<double>(q) * static_cast<double>(v);
        dot = dot + static_cast<double>(ak) * static_cast<double>(v);
      }
      T g = (q - ak) * gs;
      if (wd != T(0)) g = g + wd * v;
      G[e] = g;
    }
    __syncthreads();  // every thread has read the rows of V it needs
    for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
      const T b = buf[e] * mom + G[e];
      buf[e] = b;
      V[e] = V[e] + nlr * b;
    }
    if (want) {
      block_sum2(sq, dot);  // synchronises the block
      if (threadIdx.x == 0) {
        double* p = partials + 2 * ((k - a.loss_from) * gridDim.x + blockIdx.x);
        p[0] = sq;
        p[1] = dot;
      }
    } else {
      __syncthreads();  // V written before the next iteration reads it
    }
  }
}

template <typename T>
__global__ void linear_chain_loss_kernel(const double* partials, int64_t n_loss, int blocks, double scale,
                                         T* losses) {
  const int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (k >= n_loss) return;
  double sq = 0.0, dot = 0.0;
  for (int b = 0; b < blocks; ++b) {
    sq = sq + partials[2 * (k * blocks + b)];
    dot = dot + partials[2 * (k * blocks + b) + 1];
  }
  losses[k] = static_cast<T>(scale * (sq - 2.0 * dot));
}

// Rows of V each block of linear_chain_kernel owns, for all iterations.
int64_t linear_chain_rows(int64_t d_in, int64_t d_out) {
  // about 4 elements per thread, whole rows
  const int64_t rows = d_out > 0 ? (4 * kThreads + d_out - 1) / d_out : 1;
  return std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(d_in, 1)));
}

}  // namespace

int ldrl_loss_blocks(int64_t n_r, int64_t n_v) {
  const int64_t n = n_r > n_v ? n_r : n_v;
  const int64_t blocks = (n + 4 * kThreads - 1) / (4 * kThreads);
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), kLossMaxBlocks));
}

template <typename T>
cudaError_t launch_ldrl_loss(const T* r, int64_t n_r, const T* a, const T* v, int64_t n_v, double scale, T* out,
                             double* partials, cudaStream_t stream) {
  const int blocks = ldrl_loss_blocks(n_r, n_v);
  loss_partial_kernel<T><<<blocks, kThreads, 0, stream>>>(r, n_r, a, v, n_v, partials);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  loss_final_kernel<T><<<1, kThreads, 0, stream>>>(partials, blocks, scale, out);
  return cudaGetLastError();
}

int linear_chain_blocks(int64_t d_in, int64_t d_out) {
  const int64_t rows = linear_chain_rows(d_in, d_out);
  return static_cast<int>(std::max<int64_t>(1, (d_in + rows - 1) / rows));
}

template <typename T>
cudaError_t launch_linear_chain(T* V, T* buf, const T* A, const T* C, T* G, T* losses, double* partials,
                                const LinearChainArgs& a, cudaStream_t stream) {
  if (a.n <= 0 || a.d_in <= 0 || a.d_out <= 0) return cudaSuccess;
  const int64_t rows = linear_chain_rows(a.d_in, a.d_out);
  const int blocks = linear_chain_blocks(a.d_in, a.d_out);
  linear_chain_kernel<T><<<blocks, kThreads, 0, stream>>>(V, buf, A, C, G, partials, a, rows);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t n_loss = a.n - a.loss_from;
  if (n_loss > 0) {
    const unsigned grid = static_cast<unsigned>((n_loss + kThreads - 1) / kThreads);
    linear_chain_loss_kernel<T><<<grid, kThreads, 0, stream>>>(partials, n_loss, blocks, a.loss_scale, losses);
    err = cudaGetLastError();
  }
  return err;
}

template cudaError_t launch_ldrl_loss<float>(const float*, int64_t, const float*, const float*, int64_t, double,
                                             float*, double*, cudaStream_t);
template cudaError_t launch_ldrl_loss<double>(const double*, int64_t, const double*, const double*, int64_t, double,
                                              double*, double*, cudaStream_t);
template cudaError_t launch_linear_chain<float>(float*, float*, const float*, const float*, float*, float*, double*,
                                                const LinearChainArgs&, cudaStream_t);
template cudaError_t launch_linear_chain<double>(double*, double*, const double*, const double*, double*, double*,
                                                 double*, const LinearChainArgs&, cudaStream_t);

}  // namespace cuda
}  // namespace dtp_fast
