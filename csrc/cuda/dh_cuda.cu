// CUDA kernels of the dh family, the L-DRL feedback-engine ops
// dtp_fast::pool_unpool_diff and dtp_fast::noisy_unpool_diff (+
// noisy_unpool_diff_philox, the same with the noise drawn in the kernel).
// Semantics: csrc/ops.cpp, dtp_fast/ops/dh.py; binding: dh_cuda_bind.cpp.
//
// Deterministic by construction:
// - pool_unpool_diff: windows that tile the plane (kernel == stride, no
//   padding) are handled by one thread per window, which writes every output
//   of its window (and threads of the leftover border cells write -h0): each
//   output is written once. Other pools run in two kernels: out = 0 - h0, then
//   one thread per window writes ACT(its max) - h0 at its switch. Windows that
//   share a switch write the same value (the activation of the same input), so
//   the result does not depend on their order.
// - noisy_unpool_diff: the value at an output position is that of the LAST
//   pooled position (row-major) whose index points at it. A first kernel
//   records that position per (sample b, channel, output position) with
//   atomicMax (order independent); a second walks the output and gathers.
//   The map depends on the indices only, so it serves all M copies.
// Max-pool tie rules as act_pool2d: the first maximum of a window in row-major
// order wins, a NaN always wins (the last NaN), padding never does.
#include <limits>

#include "../philox.h"
#include "common.cuh"

namespace dtp_fast {
namespace cuda {
namespace {

__device__ __forceinline__ float dev_expm1(float x) { return expm1f(x); }
__device__ __forceinline__ double dev_expm1(double x) { return ::expm1(x); }
__device__ __forceinline__ float dev_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dev_tanh(double x) { return ::tanh(x); }

// ACT(x) as ATen's CUDA kernels compute it (ELU: x > 0 ? x : expm1(x) with
// alpha = scale = input_scale = 1; tanh: tanh; ReLU: NaN propagates).
template <typename T>
__device__ __forceinline__ T activate(T x, int act) {
  switch (act) {
    case 1: return x > T(0) ? x : dev_expm1(x);
    case 2: return x < T(0) ? T(0) : x;
    case 3: return dev_tanh(x);
    default: return x;
  }
}

// (n, c, h, w) of the idx-th element of an (N, C, H, W) array walked in NCHW
// order, or with the channels innermost (NHWC order).
struct Coord {
  int64_t n, c, h, w;
};
__device__ __forceinline__ Coord decode(int64_t idx, int64_t C, int64_t H, int64_t W, bool channels_last) {
  Coord k;
  if (channels_last) {
    k.c = idx % C;
    idx /= C;
    k.w = idx % W;
    idx /= W;
    k.h = idx % H;
    k.n = idx / H;
  } else {
    k.w = idx % W;
    idx /= W;
    k.h = idx % H;
    idx /= H;
    k.c = idx % C;
    k.n = idx / C;
  }
  return k;
}

__device__ __forceinline__ int64_t at4(const Strides4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// Lane e % 4 of the four normals of Philox block (e / 4, row, it, smp):
// the very operations of philox::box_muller for that lane.
__device__ __forceinline__ float philox_lane(uint64_t e, uint32_t row, uint32_t it, uint32_t smp, uint32_t k0,
                                             uint32_t k1) {
  uint32_t c[4] = {static_cast<uint32_t>(e >> 2), row, it, smp};
  philox::rounds10(c, k0, k1);
  const unsigned lane = static_cast<unsigned>(e & 3u);
  const float r = philox::radius(lane < 2 ? c[0] : c[2]);
  float cs, sn;
  philox::cos_sin(lane < 2 ? c[1] : c[3], cs, sn);
  return r * ((lane & 1u) ? sn : cs);
}

// Max of ACT(z) over the window (oh, ow) of sample plane `zp`: the flat index
// of the winner into the H*W plane and its value.
template <typename T>
__device__ __forceinline__ void window_max(const T* zp, const PoolUnpoolArgs& a, int64_t oh, int64_t ow,
                                           int64_t& best_t, T& best_v) {
  int64_t h0 = oh * a.sH - a.pH, w0 = ow * a.sW - a.pW;
  const int64_t h1 = h0 + a.kH < a.H ? h0 + a.kH : a.H, w1 = w0 + a.kW < a.W ? w0 + a.kW : a.W;
  h0 = h0 > 0 ? h0 : 0;
  w0 = w0 > 0 ? w0 : 0;
  best_v = -std::numeric_limits<T>::infinity();
  best_t = h0 * a.W + w0;
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = w0; w < w1; ++w) {
      const T v = activate(zp[h * a.z.h + w * a.z.w], a.act);
      if (v > best_v || v != v) {
        best_v = v;
        best_t = h * a.W + w;
      }
    }
  }
}

// Tiling pools: one thread per cell of kH x kW outputs (cells past OH / OW are
// the border rows / columns no window covers).
template <typename T>
__global__ void pool_unpool_tiles_kernel(const T* z1, const T* h0, T* out, PoolUnpoolArgs a) {
  const int64_t CH = (a.H + a.kH - 1) / a.kH, CW = (a.W + a.kW - 1) / a.kW;
  const int64_t total = a.N * a.C * CH * CW;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Coord k = decode(i, a.C, CH, CW, a.channels_last);
    const int64_t b = k.n % a.B;
    int64_t sel = -1;
    T v = T(0);
    if (k.h < a.OH && k.w < a.OW) {
      window_max(z1 + k.n * a.z.n + k.c * a.z.c, a, k.h, k.w, sel, v);
      v = activate(v, a.act);
    }
    const int64_t hh1 = (k.h + 1) * a.kH < a.H ? (k.h + 1) * a.kH : a.H;
    const int64_t ww1 = (k.w + 1) * a.kW < a.W ? (k.w + 1) * a.kW : a.W;
    for (int64_t h = k.h * a.kH; h < hh1; ++h) {
      for (int64_t w = k.w * a.kW; w < ww1; ++w) {
        const T hv = h0[at4(a.h0, b, k.c, h, w)];
        out[at4(a.out, k.n, k.c, h, w)] = (h * a.W + w == sel ? v : T(0)) - hv;
      }
    }
  }
}

template <typename T>
__global__ void neg_h0_kernel(const T* h0, T* out, PoolUnpoolArgs a) {
  const int64_t total = a.N * a.C * a.H * a.W;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Coord k = decode(i, a.C, a.H, a.W, a.channels_last);
    out[at4(a.out, k.n, k.c, k.h, k.w)] = T(0) - h0[at4(a.h0, k.n % a.B, k.c, k.h, k.w)];
  }
}

template <typename T>
__global__ void pool_unpool_scatter_kernel(const T* z1, const T* h0, T* out, PoolUnpoolArgs a) {
  const int64_t total = a.N * a.C * a.OH * a.OW;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Coord k = decode(i, a.C, a.OH, a.OW, a.channels_last);
    int64_t t;
    T v;
    window_max(z1 + k.n * a.z.n + k.c * a.z.c, a, k.h, k.w, t, v);
    const int64_t h = t / a.W, w = t % a.W;
    out[at4(a.out, k.n, k.c, h, w)] = activate(v, a.act) - h0[at4(a.h0, k.n % a.B, k.c, h, w)];
  }
}

// Index of the winner slot of (b, c, t) (laid out like the output walk).
__device__ __forceinline__ int64_t winner_slot(const NoisyArgs& a, int64_t b, int64_t c, int64_t t) {
  const int64_t HW = a.H * a.W;
  return a.channels_last ? (b * HW + t) * a.C + c : (b * a.C + c) * HW + t;
}

__global__ void winner_kernel(const int64_t* ind, int32_t* winner, NoisyArgs a) {
  const int64_t total = a.B * a.C * a.Hp * a.Wp, HW = a.H * a.W;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Coord k = decode(i, a.C, a.Hp, a.Wp, false);
    const int64_t t = ind[at4(a.ind, k.n, k.c, k.h, k.w)];
    if (t >= 0 && t < HW) {
      atomicMax(winner + winner_slot(a, k.n, k.c, t), static_cast<int32_t>(k.h * a.Wp + k.w));
    }
  }
}

template <typename T>
__global__ void noisy_gather_kernel(const T* y, const T* eps, T sigma, const T* h0, T* out, const int32_t* winner,
                                    NoisyArgs a) {
  const int64_t total = a.N * a.C * a.H * a.W, P = a.Hp * a.Wp;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x) {
    const Coord k = decode(i, a.C, a.H, a.W, a.channels_last);
    const int64_t b = k.n % a.B;
    const int32_t p = winner[winner_slot(a, b, k.c, k.h * a.W + k.w)];
    T v = T(0);  // ACT(0) == 0 where nothing is unpooled
    if (p >= 0) {
      const int64_t hp = p / a.Wp, wp = p % a.Wp;
      T e;
      if (eps != nullptr) {
        e = eps[at4(a.eps, k.n, k.c, hp, wp)];
      } else {
        const int64_t m = k.n / a.B;
        e = static_cast<T>(philox_lane(static_cast<uint64_t>(k.c * P + p), static_cast<uint32_t>(a.offset + b),
                                       a.iteration0 + static_cast<uint32_t>(m / a.samples),
                                       static_cast<uint32_t>(m % a.samples), a.key0, a.key1));
      }
      // y + sigma * eps rounded as in PyTorch: the product, then the sum
      const T noise = sigma * e;
      v = activate(y[at4(a.y, b, k.c, hp, wp)] + noise, a.act);
    }
    out[at4(a.out, k.n, k.c, k.h, k.w)] = v - h0[at4(a.h0, b, k.c, k.h, k.w)];
  }
}

}  // namespace

template <typename T>
cudaError_t launch_pool_unpool_diff(const T* z1, const T* h0, T* out, const PoolUnpoolArgs& a, cudaStream_t stream) {
  if (a.N * a.C * a.H * a.W == 0) return cudaSuccess;
  if (a.kH == a.sH && a.kW == a.sW && a.pH == 0 && a.pW == 0) {
    const int64_t cells = a.N * a.C * ((a.H + a.kH - 1) / a.kH) * ((a.W + a.kW - 1) / a.kW);
    pool_unpool_tiles_kernel<T><<<grid_for(cells), kThreads, 0, stream>>>(z1, h0, out, a);
    return cudaGetLastError();
  }
  neg_h0_kernel<T><<<grid_for(a.N * a.C * a.H * a.W), kThreads, 0, stream>>>(h0, out, a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  pool_unpool_scatter_kernel<T><<<grid_for(a.N * a.C * a.OH * a.OW), kThreads, 0, stream>>>(z1, h0, out, a);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_noisy_unpool_diff(const T* y, const T* eps, T sigma, const int64_t* ind, const T* h0, T* out,
                                     int32_t* winner, const NoisyArgs& a, cudaStream_t stream) {
  const int64_t total = a.N * a.C * a.H * a.W;
  if (total == 0) return cudaSuccess;
  cudaError_t err = cudaMemsetAsync(winner, 0xFF, sizeof(int32_t) * a.B * a.C * a.H * a.W, stream);  // -1
  if (err != cudaSuccess) return err;
  if (a.Hp * a.Wp > 0) {
    winner_kernel<<<grid_for(a.B * a.C * a.Hp * a.Wp), kThreads, 0, stream>>>(ind, winner, a);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  noisy_gather_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(y, eps, sigma, h0, out, winner, a);
  return cudaGetLastError();
}

template cudaError_t launch_pool_unpool_diff<float>(const float*, const float*, float*, const PoolUnpoolArgs&,
                                                    cudaStream_t);
template cudaError_t launch_pool_unpool_diff<double>(const double*, const double*, double*, const PoolUnpoolArgs&,
                                                     cudaStream_t);
template cudaError_t launch_noisy_unpool_diff<float>(const float*, const float*, float, const int64_t*, const float*,
                                                     float*, int32_t*, const NoisyArgs&, cudaStream_t);
template cudaError_t launch_noisy_unpool_diff<double>(const double*, const double*, double, const int64_t*,
                                                      const double*, double*, int32_t*, const NoisyArgs&,
                                                      cudaStream_t);

}  // namespace cuda
}  // namespace dtp_fast
