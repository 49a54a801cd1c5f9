// Device helpers shared by the .cu files of csrc/cuda/ (no torch headers).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../philox.h"
#include "kernels.h"

namespace dtp_fast {
namespace cuda {

constexpr int kThreads = 256;

// Blocks of kThreads for `total` work items, for grid-stride loops.
inline unsigned grid_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t{1} << 20));
}

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

}  // namespace cuda
}  // namespace dtp_fast
