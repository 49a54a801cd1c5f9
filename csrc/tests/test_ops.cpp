// The CPU kernels of libdtp_fast_ops through the dispatcher (as any libtorch
// program calls them), on small tensors, against compositions of ATen ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../philox.h"
#include "check.h"

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using PoolUnpoolDiff = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, at::IntArrayRef, at::IntArrayRef,
                                  at::IntArrayRef);
using NoisyUnpoolDiff = at::Tensor(const at::Tensor&, const at::Tensor&, double, const at::Tensor&,
                                   const at::Tensor&, int64_t, at::IntArrayRef);
using NoisyPhilox = at::Tensor(const at::Tensor&, double, const at::Tensor&, const at::Tensor&, int64_t,
                               at::IntArrayRef, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
using PhiloxNormal = void(at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t);
using MomentumSgd = void(at::TensorList, at::TensorList, at::TensorList, at::ArrayRef<double>,
                         at::ArrayRef<double>, at::ArrayRef<double>);

constexpr int64_t kIdentity = 0, kElu = 1;

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.dtype() == b.dtype() && at::equal(a, b);
}

void build_info_lists_the_ops() {
  auto info = op<std::string()>("dtp_fast::build_info").call();
  for (const char* name : {"dtp_fast::pool_unpool_diff", "dtp_fast::noisy_unpool_diff", "dtp_fast::philox_normal_",
                           "dtp_fast::noisy_unpool_diff_philox", "dtp_fast::momentum_sgd_"}) {
    DTP_CHECK(info.find(name) != std::string::npos);
  }
}

void philox_normal_matches_the_header() {
  at::Tensor out = at::empty({3, 2, 5});  // 10 per row: two whole blocks and a partial one
  op<PhiloxNormal>("dtp_fast::philox_normal_").call(out, 11, 22, 4, 5, 6);
  auto a = out.accessor<float, 3>();
  bool ok = true;
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t e = 0; e < 10; ++e) {
      float v[4];
      dtp_fast::philox::normal4(static_cast<uint32_t>(e / 4), static_cast<uint32_t>(4 + r), 5, 6, 11, 22, v);
      ok = ok && a[r][e / 5][e % 5] == v[e % 4];
    }
  }
  DTP_CHECK(ok);
}

void pool_unpool_diff_matches_aten() {
  const int64_t M = 3, B = 2, C = 3, H = 6, W = 8;
  at::manual_seed(0);
  at::Tensor z1 = at::randn({M * B, C, H, W}, at::kDouble);
  at::Tensor h0 = at::randn({B, C, H, W}, at::kDouble);
  for (const int64_t act : {kIdentity, kElu}) {
    const at::Tensor a = act == kElu ? at::elu(z1) : z1;
    at::Tensor pooled, idx;
    std::tie(pooled, idx) = at::max_pool2d_with_indices(a, {2, 2}, {2, 2});
    at::Tensor u = at::max_unpool2d(pooled, idx, {H, W});
    at::Tensor expect = (act == kElu ? at::elu(u) : u) - h0.repeat({M, 1, 1, 1});
    at::Tensor out = op<PoolUnpoolDiff>("dtp_fast::pool_unpool_diff").call(z1, h0, act, {2, 2}, {2, 2}, {0, 0});
    DTP_CHECK(at::allclose(out, expect, 1e-15, 1e-15));
    if (act == kIdentity) DTP_CHECK(same(out, expect));
    // channels_last in, channels_last out, same values
    at::Tensor cl = op<PoolUnpoolDiff>("dtp_fast::pool_unpool_diff")
                        .call(z1.contiguous(at::MemoryFormat::ChannelsLast), h0, act, {2, 2}, {2, 2}, {0, 0});
    DTP_CHECK(cl.is_contiguous(at::MemoryFormat::ChannelsLast) && same(cl, out));
  }
}

void noisy_unpool_diff_matches_aten() {
  const int64_t M = 2, B = 2, C = 4, H = 6, W = 6;
  at::manual_seed(1);
  at::Tensor pooled, idx;
  std::tie(pooled, idx) = at::max_pool2d_with_indices(at::randn({B, C, H, W}), {2, 2}, {2, 2});
  at::Tensor h0 = at::max_unpool2d(pooled, idx, {H, W});
  at::Tensor eps = at::randn({M * B, C, H / 2, W / 2});
  at::Tensor out =
      op<NoisyUnpoolDiff>("dtp_fast::noisy_unpool_diff").call(pooled, eps, 0.5, idx, h0, kIdentity, {H, W});
  at::Tensor noisy = pooled.repeat({M, 1, 1, 1}) + 0.5 * eps;
  at::Tensor expect = at::max_unpool2d(noisy, idx.repeat({M, 1, 1, 1}), {H, W}) - h0.repeat({M, 1, 1, 1});
  DTP_CHECK(same(out, expect));
}

void noisy_unpool_diff_philox_draws_philox_normal() {
  // copies M = 4 blocks of B rows, samples 2: block m is iteration 7 + m / 2, sample m % 2
  const int64_t B = 3, C = 2, H = 4, W = 6, M = 4;
  at::manual_seed(2);
  at::Tensor pooled, idx;
  std::tie(pooled, idx) = at::max_pool2d_with_indices(at::randn({B, C, H, W}), {2, 2}, {2, 2});
  at::Tensor h0 = at::elu(at::max_unpool2d(pooled, idx, {H, W}));
  at::Tensor eps = at::empty({M, B, C, H / 2, W / 2});
  for (int64_t m = 0; m < M; ++m) {
    at::Tensor block = eps[m];
    op<PhiloxNormal>("dtp_fast::philox_normal_").call(block, 5, 6, 10, 7 + m / 2, m % 2);
  }
  at::Tensor expect = op<NoisyUnpoolDiff>("dtp_fast::noisy_unpool_diff")
                          .call(pooled, eps.flatten(0, 1), 0.3, idx, h0, kElu, {H, W});
  at::Tensor out = op<NoisyPhilox>("dtp_fast::noisy_unpool_diff_philox")
                       .call(pooled, 0.3, idx, h0, kElu, {H, W}, 5, 6, 10, 7, 2, M);
  DTP_CHECK(same(out, expect));
}

void momentum_sgd_matches_aten() {
  at::manual_seed(3);
  std::vector<at::Tensor> p = {at::randn({4, 3}, at::kDouble), at::randn({5}, at::kDouble)};
  std::vector<at::Tensor> g = {at::randn({4, 3}, at::kDouble), at::randn({5}, at::kDouble)};
  std::vector<at::Tensor> buf = {at::randn({4, 3}, at::kDouble), at::randn({5}, at::kDouble)};
  const std::vector<double> lr = {0.1, 0.2}, mom = {0.9, 0.5}, wd = {0.0, 0.01};
  std::vector<at::Tensor> p2, b2;
  for (size_t i = 0; i < p.size(); ++i) {
    at::Tensor gi = g[i] + wd[i] * p[i];
    b2.push_back(buf[i] * mom[i] + gi);
    p2.push_back(p[i] - lr[i] * b2.back());
  }
  op<MomentumSgd>("dtp_fast::momentum_sgd_").call(p, g, buf, lr, mom, wd);
  for (size_t i = 0; i < p.size(); ++i) {
    DTP_CHECK(at::allclose(p[i], p2[i], 1e-15, 1e-15));
    DTP_CHECK(at::allclose(buf[i], b2[i], 1e-15, 1e-15));
  }
}

void bad_arguments_throw() {
  bool threw = false;
  try {
    op<PoolUnpoolDiff>("dtp_fast::pool_unpool_diff").call(at::zeros({2, 1, 4, 4}), at::zeros({1, 1, 4, 4}), 9,
                                                          {2, 2}, {2, 2}, {0, 0});
  } catch (const c10::Error& e) {
    threw = std::string(e.what()).find("act must be") != std::string::npos;
  }
  DTP_CHECK(threw);
}

}  // namespace

int main() {
  DTP_RUN(build_info_lists_the_ops);
  DTP_RUN(philox_normal_matches_the_header);
  DTP_RUN(pool_unpool_diff_matches_aten);
  DTP_RUN(noisy_unpool_diff_matches_aten);
  DTP_RUN(noisy_unpool_diff_philox_draws_philox_normal);
  DTP_RUN(momentum_sgd_matches_aten);
  DTP_RUN(bad_arguments_throw);
  return dtp_fast_test::failures() == 0 ? 0 : 1;
}
