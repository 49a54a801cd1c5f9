// The pool family (act_pool2d, unpool_act2d): activation codes, pool geometry
// and the argument checks of pooling / unpooling, shared by every device and
// by the dh family (csrc/dh_args.h), whose ops pool and unpool too, so that
// all report the same errors for the same mistakes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dtp_fast {

// Activation codes shared with dtp_fast/ops/_common.py (ACT_CODES).
enum ActCode : int64_t {
  kActIdentity = 0,
  kActElu = 1,   // ELU with alpha = 1
  kActRelu = 2,
  kActTanh = 3,
};

inline void check_act(const char* op, int64_t act) {
  TORCH_CHECK(act >= kActIdentity && act <= kActTanh, op,
              ": act must be 0 (identity), 1 (elu), 2 (relu) or 3 (tanh), got ",
              act);
}

// Geometry of one 2-D max-pool over (H, W) planes, floor mode, dilation 1.
struct PoolGeometry {
  int64_t H, W;    // input plane
  int64_t kH, kW;  // kernel
  int64_t sH, sW;  // stride
  int64_t pH, pW;  // padding
  int64_t OH, OW;  // output plane
};

// Output length of a floor-mode pool along one dimension, with PyTorch's
// checks (padding at most half the kernel, a non-empty output).
inline int64_t pool_out_len(const char* op, const char* dim, int64_t in,
                            int64_t k, int64_t s, int64_t p) {
  TORCH_CHECK(k > 0, op, ": kernel_size must be positive, got ", k,
              " along ", dim);
  TORCH_CHECK(s > 0, op, ": stride must be positive, got ", s, " along ",
              dim);
  TORCH_CHECK(p >= 0, op, ": padding must be non-negative, got ", p,
              " along ", dim);
  TORCH_CHECK(p <= k / 2, op, ": padding should be at most half of the kernel"
              " size, got padding ", p, " and kernel_size ", k, " along ", dim);
  const int64_t span = in + 2 * p - k;
  TORCH_CHECK(in > 0 && span >= 0, op, ": the input is too small for the pool"
              " along ", dim, ": size ", in, ", kernel_size ", k, ", padding ",
              p);
  return span / s + 1;
}

inline PoolGeometry pool_geometry(const char* op, const at::Tensor& z,
                                  at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
  TORCH_CHECK(z.dim() == 4, op, ": z must be 4-D (N, C, H, W), got ", z.dim(),
              "-D tensor of shape ", z.sizes());
  TORCH_CHECK(kernel_size.size() == 2, op,
              ": kernel_size must have 2 elements, got ", kernel_size.size());
  TORCH_CHECK(stride.size() == 2, op, ": stride must have 2 elements, got ",
              stride.size());
  TORCH_CHECK(padding.size() == 2, op, ": padding must have 2 elements, got ",
              padding.size());
  PoolGeometry g;
  g.H = z.size(2);
  g.W = z.size(3);
  g.kH = kernel_size[0];
  g.kW = kernel_size[1];
  g.sH = stride[0];
  g.sW = stride[1];
  g.pH = padding[0];
  g.pW = padding[1];
  g.OH = pool_out_len(op, "H", g.H, g.kH, g.sH, g.pH);
  g.OW = pool_out_len(op, "W", g.W, g.kW, g.sW, g.pW);
  return g;
}

inline void check_unpool_args(const char* op, const at::Tensor& y,
                              const at::Tensor& indices,
                              at::IntArrayRef output_size) {
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D (N, C, Hp, Wp), got ",
              y.dim(), "-D tensor of shape ", y.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op,
              ": indices must be int64 (as returned by max_pool2d), got ",
              indices.scalar_type());
  TORCH_CHECK(indices.sizes() == y.sizes(), op,
              ": indices must have the shape of y, got ", indices.sizes(),
              " and ", y.sizes());
  TORCH_CHECK(indices.device() == y.device(), op,
              ": y and indices must be on the same device, got ", y.device(),
              " and ", indices.device());
  TORCH_CHECK(output_size.size() == 2, op,
              ": output_size must have 2 elements (H, W), got ",
              output_size.size());
  TORCH_CHECK(output_size[0] > 0 && output_size[1] > 0, op,
              ": output_size must be positive, got ", output_size);
}

}  // namespace dtp_fast
