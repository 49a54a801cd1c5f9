// CUDA binding of the dh family: dtp_fast::pool_unpool_diff,
// dtp_fast::noisy_unpool_diff and dtp_fast::noisy_unpool_diff_philox (argument
// checks, output allocation, stream and device; the kernels are in dh_cuda.cu).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../dh_args.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

cuda::Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

bool walks_channels_last(const at::Tensor& out) {
  return out.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// ------------------------------------------------------------------ pool_unpool_diff
at::Tensor pool_unpool_diff_cuda(const at::Tensor& z1, const at::Tensor& h0, int64_t act,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "dtp_fast::pool_unpool_diff";
  const PoolGeometry g = pool_unpool_diff_geometry(op, z1, h0, act, kernel_size, stride, padding);
  check_float_cuda(op, "z1", z1);
  check_same_dtype(op, "z1", z1, "h0", h0);
  TORCH_CHECK(z1.is_cuda(), op, ": expected CUDA tensors, got z1 on ", z1.device());
  check_same_device(op, "h0", h0, z1);
  TORCH_CHECK(h0.size(1) == z1.size(1) && h0.size(2) == z1.size(2) && h0.size(3) == z1.size(3), op,
              ": h0 must be (B, C, H, W) with the C, H, W of z1, got h0 of shape ", h0.sizes(),
              " and z1 of shape ", z1.sizes());
  const int64_t N = z1.size(0), B = h0.size(0), C = z1.size(1);
  check_copies(op, "z1", N, "h0", B);
  const c10::cuda::CUDAGuard guard(z1.device());
  at::Tensor out = at::empty(z1.sizes(), z1.options().memory_format(z1.suggest_memory_format()));
  if (out.numel() == 0) return out;
  cuda::PoolUnpoolArgs a{N, B, C, g.H, g.W, g.kH, g.kW, g.sH, g.sW, g.pH, g.pW, g.OH, g.OW,
                         strides_of(z1), strides_of(h0), strides_of(out), walks_channels_last(out),
                         static_cast<int>(act)};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(z1.scalar_type(), "dtp_fast_pool_unpool_diff_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_pool_unpool_diff<scalar_t>(
        z1.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), a, stream));
  });
  return out;
}

// ------------------------------------------------------------------ noisy_unpool_diff (+ philox)
struct PhiloxNoise {
  int64_t key0, key1, offset, iteration, samples;
};

// eps (M*B, C, Hp, Wp) or, with `philox`, M = copies blocks of in-kernel noise.
at::Tensor noisy_unpool_diff_impl(const char* op, const at::Tensor& y, const at::Tensor* eps, int64_t copies,
                                  const PhiloxNoise* philox, double sigma, const at::Tensor& indices,
                                  const at::Tensor& h0, int64_t act, at::IntArrayRef output_size) {
  check_act(op, act);
  check_ldrl_4d(op, "y", "(B, C, Hp, Wp)", y);
  check_ldrl_4d(op, "h0", "(B, C, H, W)", h0);
  check_unpool_args(op, y, indices, output_size);
  check_float_cuda(op, "y", y);
  check_same_dtype(op, "y", y, "h0", h0);
  TORCH_CHECK(y.is_cuda(), op, ": expected CUDA tensors, got y on ", y.device());
  check_same_device(op, "indices", indices, y);
  check_same_device(op, "h0", h0, y);
  const int64_t H = output_size[0], W = output_size[1];
  TORCH_CHECK(h0.size(0) == y.size(0) && h0.size(1) == y.size(1) && h0.size(2) == H && h0.size(3) == W, op,
              ": h0 must be (B, C, H, W) = (", y.size(0), ", ", y.size(1), ", ", H, ", ", W,
              ") (the B, C of y and output_size), got ", h0.sizes());
  const int64_t B = y.size(0), C = y.size(1), Hp = y.size(2), Wp = y.size(3);
  TORCH_CHECK(Hp * Wp < (int64_t{1} << 31), op, ": more than 2^31 pooled positions per plane");
  int64_t N;
  if (eps != nullptr) {
    check_ldrl_4d(op, "eps", "(M*B, C, Hp, Wp)", *eps);
    check_same_dtype(op, "y", y, "eps", *eps);
    check_same_device(op, "eps", *eps, y);
    TORCH_CHECK(eps->size(1) == C && eps->size(2) == Hp && eps->size(3) == Wp, op,
                ": eps must be (M*B, C, Hp, Wp) with the C, Hp, Wp of y, got eps of shape ", eps->sizes(),
                " and y of shape ", y.sizes());
    N = eps->size(0);
    check_copies(op, "eps", N, "y", B);
  } else {
    TORCH_CHECK(copies >= 0, op, ": copies must be >= 0, got ", copies);
    TORCH_CHECK(philox->samples >= 1, op, ": samples must be >= 1, got ", philox->samples);
    check_u32(op, "key0", philox->key0);
    check_u32(op, "key1", philox->key1);
    check_u32(op, "iteration", philox->iteration);
    TORCH_CHECK(copies == 0 || philox->iteration + (copies - 1) / philox->samples < k2to32, op,
                ": iterations ", philox->iteration, " .. ", philox->iteration + (copies - 1) / philox->samples,
                " must be in [0, 2^32)");
    TORCH_CHECK(philox->samples < k2to32, op, ": samples must be < 2^32");
    TORCH_CHECK(philox->offset >= 0 && philox->offset + B <= k2to32, op,
                ": sample indices offset .. offset + B must be in [0, 2^32)");
    TORCH_CHECK(C * Hp * Wp < (int64_t{1} << 34), op, ": samples of more than 2^34 elements");
    N = copies * B;
  }
  const c10::cuda::CUDAGuard guard(y.device());
  const at::Tensor& fmt = eps != nullptr ? *eps : y;
  at::Tensor out = at::empty({N, C, H, W}, y.options().memory_format(fmt.suggest_memory_format()));
  if (out.numel() == 0) return out;
  const bool cl = walks_channels_last(out);
  at::Tensor winner = at::empty({B * C * H * W}, y.options().dtype(at::kInt));
  cuda::NoisyArgs a{N, B, C, Hp, Wp, H, W,
                    strides_of(y), eps != nullptr ? strides_of(*eps) : cuda::Strides4{0, 0, 0, 0},
                    strides_of(indices), strides_of(h0), strides_of(out), cl, static_cast<int>(act),
                    0, 0, 0, 0, 1};
  if (philox != nullptr) {
    a.key0 = static_cast<uint32_t>(philox->key0);
    a.key1 = static_cast<uint32_t>(philox->key1);
    a.offset = philox->offset;
    a.iteration0 = static_cast<uint32_t>(philox->iteration);
    a.samples = philox->samples;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dtp_fast_noisy_unpool_diff_cuda", [&] {
    // A Python float times a float32 tensor multiplies by the float32 value.
    const scalar_t s = static_cast<scalar_t>(sigma);
    C10_CUDA_CHECK(cuda::launch_noisy_unpool_diff<scalar_t>(
        y.const_data_ptr<scalar_t>(), eps != nullptr ? eps->const_data_ptr<scalar_t>() : nullptr, s,
        indices.const_data_ptr<int64_t>(), h0.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
        winner.mutable_data_ptr<int32_t>(), a, stream));
  });
  return out;
}

at::Tensor noisy_unpool_diff_cuda(const at::Tensor& y, const at::Tensor& eps, double sigma, const at::Tensor& indices,
                                  const at::Tensor& h0, int64_t act, at::IntArrayRef output_size) {
  return noisy_unpool_diff_impl("dtp_fast::noisy_unpool_diff", y, &eps, 0, nullptr, sigma, indices, h0, act,
                                output_size);
}

at::Tensor noisy_unpool_diff_philox_cuda(const at::Tensor& y, double sigma, const at::Tensor& indices,
                                         const at::Tensor& h0, int64_t act, at::IntArrayRef output_size,
                                         int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                                         int64_t samples, int64_t copies) {
  const PhiloxNoise noise{key0, key1, offset, iteration, samples};
  return noisy_unpool_diff_impl("dtp_fast::noisy_unpool_diff_philox", y, nullptr, copies, &noise, sigma, indices,
                                h0, act, output_size);
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m) {
  m.impl("pool_unpool_diff", &pool_unpool_diff_cuda);
  m.impl("noisy_unpool_diff", &noisy_unpool_diff_cuda);
  m.impl("noisy_unpool_diff_philox", &noisy_unpool_diff_philox_cuda);
}

}  // namespace dtp_fast
