// CPU kernels of the pool family: dtp_fast::act_pool2d and dtp_fast::unpool_act2d.
//
// Both ops work plane by plane: a plane is one (n, c) slice of H*W values,
// and at::parallel_for splits the N*C planes between threads. Inside a plane
// the loops run in row-major order, which is what gives the exact tie rules
// of PyTorch's single-threaded CPU kernels:
//   act_pool2d   the FIRST maximum of a window wins, a NaN always wins (the
//                last NaN if several: PyTorch's `val > maxval || isnan(val)`),
//                padding never wins;
//   unpool_act2d the value written LAST (in row-major order over the pooled
//                positions of a plane) wins when two windows share an index.
//
// ELU and tanh are not fused: they run first, through ATen's vectorised
// kernels (at::elu / at::tanh). That is faster than scalar std::expm1 /
// std::tanh here, and it gives bit for bit the values of F.elu / torch.tanh
// on the same tensor. Bit equality matters for the switches: near saturation
// (ELU of x < -16 in float32) ATen's vectorised expm1 and a correctly rounded
// one can differ by one ulp, which decides ties between nearly equal values.
// ReLU (exact) and identity are fused into the pooling / unpooling loops.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tanh.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <tuple>
#include <utility>
#include <vector>

#include "../pool.h"

namespace dtp_fast {
namespace {

// The activations fused into the loops (see the note at the top).
template <typename T, int64_t ACT>
inline T activate(T x) {
  static_assert(ACT == kActIdentity || ACT == kActRelu, "not fused");
  if constexpr (ACT == kActRelu) {
    return x < T(0) ? T(0) : x;  // NaN propagates, like torch.relu
  } else {
    return x;
  }
}

// Applies the activations that are not fused (ELU, tanh) with ATen and returns
// the tensor to pool / unpool together with the activation left to fuse.
inline std::pair<at::Tensor, int64_t> split_act(const at::Tensor& x,
                                                int64_t act) {
  if (act == kActElu) {
    return {at::elu(x), kActIdentity};
  }
  if (act == kActTanh) {
    return {at::tanh(x), kActIdentity};
  }
  return {x, act};
}

// Calls f with the fused activation code as a compile-time constant.
template <typename F>
inline void dispatch_fused_act(int64_t act, const F& f) {
  if (act == kActRelu) {
    f(std::integral_constant<int64_t, kActRelu>{});
  } else {
    f(std::integral_constant<int64_t, kActIdentity>{});
  }
}

// Planes per parallel task: about 32768 elements of work (ATen's GRAIN_SIZE).
inline int64_t plane_grain(int64_t work_per_plane) {
  constexpr int64_t kGrainSize = 32768;
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, work_per_plane));
}

// Max-pool of one (already activated) plane `src` into `out` / `idx`.
template <typename scalar_t>
inline void pool_plane(const scalar_t* src, scalar_t* out, int64_t* idx,
                       const PoolGeometry& g) {
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    int64_t ih0 = oh * g.sH - g.pH;
    const int64_t ih1 = std::min(ih0 + g.kH, g.H);
    ih0 = std::max<int64_t>(ih0, 0);
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      int64_t iw0 = ow * g.sW - g.pW;
      const int64_t iw1 = std::min(iw0 + g.kW, g.W);
      iw0 = std::max<int64_t>(iw0, 0);
      // PyTorch starts from -inf at the first in-bounds position, so a window
      // of -inf values reports that position.
      int64_t maxindex = ih0 * g.W + iw0;
      scalar_t maxval = -std::numeric_limits<scalar_t>::infinity();
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        const scalar_t* row = src + ih * g.W;
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const scalar_t val = row[iw];
          if (val > maxval || std::isnan(val)) {
            maxval = val;
            maxindex = ih * g.W + iw;
          }
        }
      }
      out[oh * g.OW + ow] = maxval;
      idx[oh * g.OW + ow] = maxindex;
    }
  }
}

template <typename scalar_t, int64_t ACT>
void act_pool2d_kernel(const scalar_t* in, scalar_t* out, int64_t* idx,
                       int64_t planes, const PoolGeometry& g) {
  const int64_t in_plane = g.H * g.W;
  const int64_t out_plane = g.OH * g.OW;
  at::parallel_for(0, planes, plane_grain(in_plane + out_plane * g.kH * g.kW),
                   [&](int64_t begin, int64_t end) {
    // ReLU is applied once per input element (windows may overlap) into a
    // per-chunk buffer, then the plane is pooled.
    std::vector<scalar_t> buf(ACT == kActIdentity ? 0 : in_plane);
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* src = in + p * in_plane;
      if constexpr (ACT != kActIdentity) {
        for (int64_t i = 0; i < in_plane; ++i) {
          buf[i] = activate<scalar_t, ACT>(src[i]);
        }
        src = buf.data();
      }
      pool_plane(src, out + p * out_plane, idx + p * out_plane, g);
    }
  });
}

template <typename scalar_t, int64_t ACT>
void unpool_act2d_kernel(const scalar_t* y, const int64_t* ind, scalar_t* out,
                         int64_t planes, int64_t in_plane, int64_t out_plane,
                         std::atomic<bool>& bad, std::atomic<int64_t>& bad_value) {
  at::parallel_for(0, planes, plane_grain(in_plane + out_plane),
                   [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* o = out + p * out_plane;
      const scalar_t* yp = y + p * in_plane;
      const int64_t* ip = ind + p * in_plane;
      std::fill(o, o + out_plane, scalar_t(0));  // ACT(0) == 0 for every ACT
      for (int64_t i = 0; i < in_plane; ++i) {
        const int64_t target = ip[i];
        if (target < 0 || target >= out_plane) {
          if (!bad.exchange(true)) {
            bad_value.store(target);
          }
          return;
        }
        o[target] = activate<scalar_t, ACT>(yp[i]);  // last write wins
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> act_pool2d_cpu(const at::Tensor& z,
                                                  int64_t act,
                                                  at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride,
                                                  at::IntArrayRef padding) {
  constexpr const char* op = "dtp_fast::act_pool2d";
  check_act(op, act);
  const PoolGeometry g = pool_geometry(op, z, kernel_size, stride, padding);
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              op, ": the CPU kernel supports float32 and float64, got ",
              z.scalar_type());
  TORCH_CHECK(z.device().is_cpu(), op, ": expected a CPU tensor, got ",
              z.device());

  at::Tensor zc;
  int64_t fused_act;
  // Activate before .contiguous(): ATen then sees the very tensor F.elu(z)
  // would, and produces the very same bits.
  std::tie(zc, fused_act) = split_act(z, act);
  zc = zc.contiguous();
  const int64_t N = zc.size(0), C = zc.size(1);
  at::Tensor values = at::empty({N, C, g.OH, g.OW}, zc.options());
  at::Tensor indices = at::empty({N, C, g.OH, g.OW}, zc.options().dtype(at::kLong));
  if (values.numel() == 0) {
    return std::make_tuple(values, indices);
  }
  AT_DISPATCH_FLOATING_TYPES(zc.scalar_type(), "dtp_fast_act_pool2d_cpu", [&] {
    dispatch_fused_act(fused_act, [&](auto act_c) {
      act_pool2d_kernel<scalar_t, decltype(act_c)::value>(
          zc.const_data_ptr<scalar_t>(), values.mutable_data_ptr<scalar_t>(),
          indices.mutable_data_ptr<int64_t>(), N * C, g);
    });
  });
  return std::make_tuple(values, indices);
}

at::Tensor unpool_act2d_cpu(const at::Tensor& y, const at::Tensor& indices,
                            int64_t act, at::IntArrayRef output_size) {
  constexpr const char* op = "dtp_fast::unpool_act2d";
  check_act(op, act);
  check_unpool_args(op, y, indices, output_size);
  TORCH_CHECK(y.scalar_type() == at::kFloat || y.scalar_type() == at::kDouble,
              op, ": the CPU kernel supports float32 and float64, got ",
              y.scalar_type());
  TORCH_CHECK(y.device().is_cpu(), op, ": expected CPU tensors, got ",
              y.device());

  // ACT(0) == 0, so activating y before scattering it is the same thing.
  at::Tensor yc;
  int64_t fused_act;
  std::tie(yc, fused_act) = split_act(y, act);
  yc = yc.contiguous();
  const at::Tensor ic = indices.contiguous();
  const int64_t N = yc.size(0), C = yc.size(1);
  const int64_t H = output_size[0], W = output_size[1];
  at::Tensor out = at::empty({N, C, H, W}, yc.options());
  if (out.numel() == 0) {
    return out;
  }
  std::atomic<bool> bad{false};
  std::atomic<int64_t> bad_value{0};
  AT_DISPATCH_FLOATING_TYPES(yc.scalar_type(), "dtp_fast_unpool_act2d_cpu", [&] {
    dispatch_fused_act(fused_act, [&](auto act_c) {
      unpool_act2d_kernel<scalar_t, decltype(act_c)::value>(
          yc.const_data_ptr<scalar_t>(), ic.const_data_ptr<int64_t>(),
          out.mutable_data_ptr<scalar_t>(), N * C, yc.size(2) * yc.size(3),
          H * W, bad, bad_value);
    });
  });
  TORCH_CHECK(!bad.load(), op, ": found an invalid max index ",
              bad_value.load(), " (indices must lie in [0, H*W) with output_size ",
              H, "x", W, ")");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) {
  m.impl("act_pool2d", &act_pool2d_cpu);
  m.impl("unpool_act2d", &unpool_act2d_cpu);
}

}  // namespace dtp_fast
