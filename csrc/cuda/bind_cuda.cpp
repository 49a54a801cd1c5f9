// The torch side of the CUDA kernels (csrc/cuda/*.cu): argument checks, output
// allocation, stream and device selection, and the registration for the CUDA
// dispatch key. The only file of csrc/cuda/ that includes torch headers.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "../chain_args.h"
#include "../pool_act.h"
#include "kernels.h"

namespace dtp_fast {
namespace {

constexpr int64_t k2to32 = int64_t{1} << 32;

cuda::Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

void check_float_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CUDA kernel supports float32 and float64, got ", name, " of dtype ", t.scalar_type());
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& main) {
  TORCH_CHECK(t.is_cuda() && t.device() == main.device(), op, ": all tensors must be on the same CUDA device, got ",
              name, " on ", t.device(), " and the others on ", main.device());
}

bool walks_channels_last(const at::Tensor& out) {
  return out.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

void check_u32(const char* op, const char* what, int64_t v) {
  TORCH_CHECK(v >= 0 && v < k2to32, op, ": ", what, " must be in [0, 2^32), got ", v);
}

// ------------------------------------------------------------------ philox_normal_
void philox_normal_cuda(at::Tensor& out, int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                        int64_t sample) {
  constexpr const char* op = "dtp_fast::philox_normal_";
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
  TORCH_CHECK(out.dim() >= 1, op, ": out needs a batch dimension (rows)");
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", out.scalar_type());
  for (const int64_t v : {key0, key1, iteration, sample}) check_u32(op, "key words, iteration and sample", v);
  const int64_t rows = out.size(0), feat = rows ? out.numel() / rows : 0;
  TORCH_CHECK(offset >= 0 && offset + rows <= k2to32, op,
              ": sample indices offset .. offset + rows must be in [0, 2^32)");
  TORCH_CHECK(feat < (int64_t{1} << 34), op, ": rows of more than 2^34 elements");
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(out.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto k0 = static_cast<uint32_t>(key0), k1 = static_cast<uint32_t>(key1);
  const auto it = static_cast<uint32_t>(iteration), smp = static_cast<uint32_t>(sample);
  cudaError_t err;
  if (out.scalar_type() == at::kFloat) {
    err = cuda::launch_philox_normal(out.data_ptr<float>(), rows, feat, k0, k1, offset, it, smp, stream);
  } else {
    err = cuda::launch_philox_normal(out.data_ptr<double>(), rows, feat, k0, k1, offset, it, smp, stream);
  }
  C10_CUDA_CHECK(err);
}

// ------------------------------------------------------------------ pool_unpool_diff
at::Tensor pool_unpool_diff_cuda(const at::Tensor& z1, const at::Tensor& h0, int64_t act,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "dtp_fast::pool_unpool_diff";
  check_act(op, act);
  check_ldrl_4d(op, "z1", "(M*B, C, H, W)", z1);
  check_ldrl_4d(op, "h0", "(B, C, H, W)", h0);
  const PoolGeometry g = pool_geometry(op, z1, kernel_size, stride, padding);
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

// ------------------------------------------------------------------ momentum_sgd_
void momentum_sgd_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, at::ArrayRef<double> lr,
                       at::ArrayRef<double> momentum, at::ArrayRef<double> weight_decay) {
  constexpr const char* op = "dtp_fast::momentum_sgd_";
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && bufs.size() == n, op, ": params, grads and bufs must have the same length, got ",
              n, ", ", grads.size(), " and ", bufs.size());
  TORCH_CHECK(lr.size() == n && momentum.size() == n && weight_decay.size() == n, op,
              ": lr, momentum and weight_decay need one value per tensor (", n, "), got ", lr.size(), ", ",
              momentum.size(), " and ", weight_decay.size());
  if (n == 0) return;
  const at::Tensor& first = params[0];
  TORCH_CHECK(first.is_cuda(), op, ": expected CUDA tensors, got params[0] on ", first.device());
  check_float_cuda(op, "params", first);
  const c10::cuda::CUDAGuard guard(first.device());
  std::vector<at::Tensor> keep;  // grads copied to the layout of their parameter
  std::vector<cuda::SgdTensor> list(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor &p = params[i], &buf = bufs[i];
    at::Tensor g = grads[i];
    for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &g, &buf}) {
      TORCH_CHECK(t->scalar_type() == first.scalar_type(), op, ": all tensors must have one dtype, got ",
                  t->scalar_type(), " and ", first.scalar_type(), " (tensor ", i, ")");
      check_same_device(op, "a tensor", *t, first);
    }
    TORCH_CHECK(g.sizes() == p.sizes() && buf.sizes() == p.sizes(), op, ": tensor ", i,
                ": param, grad and buf must have one shape, got ", p.sizes(), ", ", g.sizes(), " and ",
                buf.sizes());
    TORCH_CHECK(p.is_non_overlapping_and_dense() && buf.strides() == p.strides(), op, ": tensor ", i,
                ": param must be dense and buf must have its strides, got strides ", p.strides(), " and ",
                buf.strides());
    if (g.strides() != p.strides() || !g.is_non_overlapping_and_dense()) {
      keep.push_back(at::empty_like(p).copy_(g));
      g = keep.back();
    }
    list[i] = {p.data_ptr(), g.const_data_ptr(), buf.data_ptr(), p.numel(), lr[i], momentum[i], weight_decay[i]};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "dtp_fast_momentum_sgd_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_momentum_sgd<scalar_t>(list.data(), static_cast<int>(n), stream));
  });
}

// ------------------------------------------------------------------ ldrl_loss
at::Tensor ldrl_loss_cuda(const at::Tensor& dr_y, const at::Tensor& A, const at::Tensor& V, double scale) {
  constexpr const char* op = "dtp_fast::ldrl_loss";
  TORCH_CHECK(V.is_cuda(), op, ": expected CUDA tensors, got V on ", V.device());
  check_float_cuda(op, "V", V);
  check_same_device(op, "dr_y", dr_y, V);
  check_same_device(op, "A", A, V);
  check_same_dtype(op, "dr_y", dr_y, "V", V);
  check_same_dtype(op, "A", A, "V", V);
  const c10::cuda::CUDAGuard guard(V.device());
  at::Tensor r, a, v;  // (not a structured binding: lambdas below capture them, C++17)
  std::tie(r, a, v) = ldrl_loss_operands(dr_y, A, V);
  at::Tensor out = at::empty({}, V.options());
  const int blocks = cuda::ldrl_loss_blocks(r.numel(), v.numel());
  at::Tensor partials = at::empty({2 * int64_t{blocks}}, V.options().dtype(at::kDouble));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_ldrl_loss_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_ldrl_loss<scalar_t>(r.const_data_ptr<scalar_t>(), r.numel(),
                                                    a.const_data_ptr<scalar_t>(), v.const_data_ptr<scalar_t>(),
                                                    v.numel(), scale, out.mutable_data_ptr<scalar_t>(),
                                                    partials.mutable_data_ptr<double>(), stream));
  });
  return out;
}

// ------------------------------------------------------------------ linear_chain_
at::Tensor linear_chain_cuda(at::Tensor& V, at::Tensor& buf, const at::Tensor& A, const at::Tensor& C, double lr,
                             double momentum, double weight_decay, double scale, int64_t loss_from) {
  constexpr const char* op = "dtp_fast::linear_chain_";
  const int64_t n = check_linear_chain_shapes(V, buf, A, C, loss_from);
  const int64_t d_in = V.size(0), d_out = V.size(1);
  TORCH_CHECK(V.is_cuda(), op, ": expected CUDA tensors, got V on ", V.device());
  check_float_cuda(op, "V", V);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&V, &buf, &A, &C}) {
    check_same_device(op, "a tensor", *t, V);
    check_same_dtype(op, "a tensor", *t, "V", V);
  }
  TORCH_CHECK(d_in * d_out < (int64_t{1} << 40), op, ": V too large");
  const c10::cuda::CUDAGuard guard(V.device());
  at::Tensor losses = at::empty({n - loss_from}, V.options());
  if (n == 0 || V.numel() == 0) return losses.zero_();
  const int blocks = cuda::linear_chain_blocks(d_in, d_out);
  at::Tensor partials =
      at::empty({std::max<int64_t>(1, 2 * (n - loss_from) * int64_t{blocks})}, V.options().dtype(at::kDouble));
  at::Tensor G = at::empty_like(V);
  const cuda::LinearChainArgs args{n, d_in, d_out, loss_from, lr, momentum, weight_decay, 2.0 * scale, scale};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(V.scalar_type(), "dtp_fast_linear_chain_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_linear_chain<scalar_t>(
        V.mutable_data_ptr<scalar_t>(), buf.mutable_data_ptr<scalar_t>(), A.const_data_ptr<scalar_t>(),
        C.const_data_ptr<scalar_t>(), G.mutable_data_ptr<scalar_t>(), losses.mutable_data_ptr<scalar_t>(),
        partials.mutable_data_ptr<double>(), args, stream));
  });
  return losses;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CUDA, m) {
  m.impl("philox_normal_", &philox_normal_cuda);
  m.impl("pool_unpool_diff", &pool_unpool_diff_cuda);
  m.impl("noisy_unpool_diff", &noisy_unpool_diff_cuda);
  m.impl("noisy_unpool_diff_philox", &noisy_unpool_diff_philox_cuda);
  m.impl("momentum_sgd_", &momentum_sgd_cuda);
  m.impl("ldrl_loss", &ldrl_loss_cuda);
  m.impl("linear_chain_", &linear_chain_cuda);
}

}  // namespace dtp_fast
