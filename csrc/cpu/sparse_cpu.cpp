// CPU kernels of the sparse family: the chain of a pooled conv feedback layer
// (ALGORITHM.md section 5) computed from dh2 held at pooled resolution.
//
// Behind a max-pool, dh2 = unpool(d2, I0) with the clean switches I0 (fixed for
// the whole feedback phase of a batch) and d2 = ACT(y + dy) - ACT(y) pooled:
// one position in four (2x2 pools) of dh2 is non-zero. The transposed
// convolution dr_y = V * dh2 and the weight gradient wgrad(dh2, dr_y) then only
// need the non-zeros, found through index lists built once per batch:
//
// dtp_fast::switch_lists(indices, ...) -> (pix_ptr, pix_ent, ch_ptr, ch_ent)
//   pix: for every output pixel o of dr_y (rows x Hx x Wx, CSR pix_ptr), the
//     pairs (value index, weight offset) of every non-zero of dh2 and tap of V
//     that reach it (tap by tap): dr_y[o] = sum d2[value] * V[offset .. + Cxp).
//   ch: for every channel c of dh2 (CSR ch_ptr), the pairs (value index, offset
//     of the non-zero's pixel in the padded dr_y buffer), so that
//     wgrad[c, tap] = sum d2[value] * dr_pad[offset + tap offset .. + Cxp).
//   With overlapping pools two windows can hold the same switch; unpooling
//   keeps the value of the last window in row-major order (as unpool_act2d),
//   so the lists hold only that window.
// dtp_fast::pooled_conv_t(values, pix_ptr, pix_ent, weight, ...) -> dr_pad
// dtp_fast::pooled_wgrad(values, ch_ptr, ch_ent, dr_pad, ...) -> wgrad
//
// Layouts (the Python wrappers in dtp_fast/ops/sparse.py make them):
// - values: one iteration's d2, (rows, C, Hp, Wp) contiguous; value index
//   (r * C + c) * Hp * Wp + q.
// - weight: V as [c][kh][kw][co] with co padded to Cxp (a multiple of the
//   vector width, zeros beyond Cx).
// - dr_pad: (rows, Hb, Wb, Cxp): dr_y at rows/cols [ph, ph + Hx) x [pw, pw + Wx),
//   zeros elsewhere, so that every tap of every non-zero lands inside it.
// - wgrad: (C, KH * KW, Cxp), i.e. V's [c][kh][kw][co] layout.
// Only stride-1 transposed convolutions with one group (what a stride-1
// Conv2d's feedback block is); the engine falls back to dense kernels
// otherwise. Sums run in the order of the lists (not the dense kernels'
// order): equal to them up to rounding.
//
// Speed: accumulators live in registers (GCC vector extensions, one function
// clone per ISA); this file contracts a * b + c into FMAs (the pragma below),
// unlike the rest of the library, whose noise must round as its references.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=fast")
// 64-byte vectors pass between always-inlined helpers only: no ABI crosses a call
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace dtp_fast {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(_WIN32)
#define DTP_FAST_SPARSE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DTP_FAST_SPARSE_CLONES
#endif
#define DTP_FAST_INLINE __attribute__((always_inline)) inline

// 64 bytes of scalar_t: one AVX-512 register (two AVX2, four SSE ones).
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(64)));
  static constexpr int lanes = 64 / sizeof(T);
};

template <typename T>
DTP_FAST_INLINE typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
DTP_FAST_INLINE void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

// ------------------------------------------------------------------ the lists
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> switch_lists_cpu(
    const at::Tensor& indices, at::IntArrayRef input_size, at::IntArrayRef kernel_size, at::IntArrayRef padding,
    at::IntArrayRef dilation, at::IntArrayRef output_size, int64_t copies, int64_t cx_padded) {
  constexpr const char* op = "dtp_fast::switch_lists";
  TORCH_CHECK(indices.dim() == 4 && indices.scalar_type() == at::kLong && indices.device().is_cpu(), op,
              ": indices must be a 4-D int64 CPU tensor (the switches of max_pool2d), got ", indices.sizes(), " ",
              indices.scalar_type(), " on ", indices.device());
  TORCH_CHECK(input_size.size() == 2 && kernel_size.size() == 2 && padding.size() == 2 && dilation.size() == 2 &&
                  output_size.size() == 2, op, ": sizes must be pairs");
  TORCH_CHECK(copies >= 1 && cx_padded >= 1, op, ": copies and cx_padded must be >= 1");
  const int64_t B = indices.size(0), C = indices.size(1), Q = indices.size(2) * indices.size(3);
  const int64_t H = input_size[0], W = input_size[1], KH = kernel_size[0], KW = kernel_size[1];
  const int64_t ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  const int64_t Hx = output_size[0], Wx = output_size[1];
  TORCH_CHECK(H > 0 && W > 0 && KH > 0 && KW > 0 && ph >= 0 && pw >= 0 && dh > 0 && dw > 0 && Hx > 0 && Wx > 0, op,
              ": sizes must be positive and padding non-negative");
  const int64_t Hb = std::max(H + (KH - 1) * dh, ph + Hx), Wb = std::max(W + (KW - 1) * dw, pw + Wx);
  const int64_t R = copies * B, KK = KH * KW;
  TORCH_CHECK(R * C * Q <= kInt32Max && R * Hb * Wb * cx_padded <= kInt32Max && C * KK * cx_padded <= kInt32Max,
              op, ": too large for 32-bit list offsets (", R, " rows); lower the batch size");
  const at::Tensor idx = indices.contiguous();
  const int64_t* ip = idx.const_data_ptr<int64_t>();
  // winner[(b * C + c) * H * W + pixel]: the last window (row-major) whose switch is that pixel
  std::vector<int32_t> winner(static_cast<size_t>(B * C * H * W), -1);
  for (int64_t bc = 0; bc < B * C; ++bc) {
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t s = ip[bc * Q + q];
      TORCH_CHECK(s >= 0 && s < H * W, op, ": switch ", s, " out of range for a ", H, "x", W,
                  " input plane (indices must come from max_pool2d of that plane)");
      winner[bc * H * W + s] = static_cast<int32_t>(q);
    }
  }
  auto live = [&](int64_t bc, int64_t q) { return winner[bc * H * W + ip[bc * Q + q]] == q; };
  auto opt = at::TensorOptions().dtype(at::kInt);

  // ch lists: channel c, then row r, then window q
  at::Tensor ch_ptr = at::empty({C + 1}, opt);
  int32_t* cp = ch_ptr.mutable_data_ptr<int32_t>();
  int64_t total = 0;
  for (int64_t c = 0; c < C; ++c) {
    cp[c] = static_cast<int32_t>(total);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t q = 0; q < Q; ++q) total += live(b * C + c, q) ? copies : 0;
  }
  cp[C] = static_cast<int32_t>(total);
  TORCH_CHECK(total * KK <= kInt32Max, op, ": too many non-zeros for 32-bit lists; lower the batch size");
  at::Tensor ch_ent = at::empty({total, 2}, opt);
  int32_t* ce = ch_ent.mutable_data_ptr<int32_t>();
  at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int32_t* e = ce + 2 * static_cast<int64_t>(cp[c]);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = r % B;
        for (int64_t q = 0; q < Q; ++q) {
          if (!live(b * C + c, q)) continue;
          const int64_t s = ip[(b * C + c) * Q + q];
          *e++ = static_cast<int32_t>((r * C + c) * Q + q);
          *e++ = static_cast<int32_t>(((r * Hb + s / W) * Wb + s % W) * cx_padded);
        }
      }
    }
  });

  // pix lists: output pixel (r, oh, ow); within it tap, channel c. First the non-zeros of every input
  // pixel of a sample (channel order), then each output pixel's list as the lists of the input pixels
  // its taps reach, one after another.
  const int64_t P = Hx * Wx, HW = H * W;
  std::vector<int32_t> in_ptr(static_cast<size_t>(B * HW + 1), 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t q = 0; q < Q; ++q)
        if (live(b * C + c, q)) ++in_ptr[b * HW + ip[(b * C + c) * Q + q] + 1];
  for (int64_t i = 0; i < B * HW; ++i) in_ptr[i + 1] += in_ptr[i];
  std::vector<int32_t> in_val(static_cast<size_t>(in_ptr[B * HW])), in_w(in_val.size());
  {
    std::vector<int32_t> fill(in_ptr.begin(), in_ptr.end() - 1);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t q = 0; q < Q; ++q)
          if (live(b * C + c, q)) {
            const int32_t slot = fill[b * HW + ip[(b * C + c) * Q + q]]++;
            in_val[slot] = static_cast<int32_t>(c * Q + q);
            in_w[slot] = static_cast<int32_t>(c * KK * cx_padded);
          }
  }
  auto for_inputs = [&](int64_t b, int64_t o, auto&& visit) {  // visit(tap, first, last entry of an input pixel)
    const int64_t oh = o / Wx, ow = o % Wx;
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = oh + ph - kh * dh;
      if (ih < 0 || ih >= H) continue;
      for (int64_t kw = 0; kw < KW; ++kw) {
        const int64_t iw = ow + pw - kw * dw;
        if (iw < 0 || iw >= W) continue;
        const int64_t i = b * HW + ih * W + iw;
        visit(kh * KW + kw, in_ptr[i], in_ptr[i + 1]);
      }
    }
  };
  at::Tensor pix_ptr = at::empty({R * P + 1}, opt);
  int32_t* pp = pix_ptr.mutable_data_ptr<int32_t>();
  std::vector<int64_t> count(static_cast<size_t>(B * P), 0);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t o = 0; o < P; ++o)
        for_inputs(b, o, [&](int64_t, int64_t e0, int64_t e1) { count[b * P + o] += e1 - e0; });
  });
  int64_t acc = 0;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t o = 0; o < P; ++o) {
      pp[r * P + o] = static_cast<int32_t>(acc);
      acc += count[(r % B) * P + o];
      TORCH_CHECK(acc <= kInt32Max, op, ": too many non-zeros for 32-bit lists; lower the batch size");
    }
  pp[R * P] = static_cast<int32_t>(acc);
  at::Tensor pix_ent = at::empty({acc, 2}, opt);
  int32_t* pe = pix_ent.mutable_data_ptr<int32_t>();
  at::parallel_for(0, R, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t base = static_cast<int32_t>(r * C * Q);
      int32_t* e = pe + 2 * static_cast<int64_t>(pp[r * P]);
      for (int64_t o = 0; o < P; ++o)
        for_inputs(r % B, o, [&](int64_t tap, int64_t e0, int64_t e1) {
          const int32_t t = static_cast<int32_t>(tap * cx_padded);
          for (int64_t k = e0; k < e1; ++k) {
            *e++ = base + in_val[k];
            *e++ = in_w[k] + t;
          }
        });
    }
  });
  return {pix_ptr, pix_ent, ch_ptr, ch_ent};
}

// ------------------------------------------------------------------ the transposed convolution
// Output pixels o0 .. o1 - 1 (flat over rows x Hx x Wx) into out (dr_pad), pixel by pixel, NB vectors of co
// at a time (a pixel's entries stay in cache for its other vectors of co).
template <typename T, int NB>
DTP_FAST_INLINE void conv_t_block(const T* val, const int32_t* ent, int64_t e, int64_t end, const T* w, T* dst,
                                  int64_t co) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  // up to 4 vectors two accumulator sets, so that consecutive entries do not wait on each other; 8: one
  V a[NB], b[NB];
  for (int j = 0; j < NB; ++j) a[j] = b[j] = V{};
  for (; NB <= 4 && e + 1 < end; e += 2) {
    const T u = val[ent[2 * e]], v = val[ent[2 * e + 2]];
    const T* wu = w + ent[2 * e + 1] + co;
    const T* wv = w + ent[2 * e + 3] + co;
    for (int j = 0; j < NB; ++j) {
      a[j] += u * load<T>(wu + j * L);
      b[j] += v * load<T>(wv + j * L);
    }
  }
  for (; e < end; ++e) {
    const T u = val[ent[2 * e]];
    const T* wu = w + ent[2 * e + 1] + co;
    for (int j = 0; j < NB; ++j) a[j] += u * load<T>(wu + j * L);
  }
  for (int j = 0; j < NB; ++j) store<T>(dst + co + j * L, a[j] + b[j]);
}

template <typename T>
DTP_FAST_INLINE void conv_t_range(const T* val, const int32_t* ptr, const int32_t* ent, const T* w, T* out,
                                  int64_t o0, int64_t o1, int64_t Hx, int64_t Wx, int64_t Hb, int64_t Wb,
                                  int64_t ph, int64_t pw, int64_t cxp) {
  constexpr int L = Vec<T>::lanes;
  for (int64_t o = o0; o < o1; ++o) {
    const int64_t r = o / (Hx * Wx), oh = o / Wx % Hx, ow = o % Wx, e0 = ptr[o], e1 = ptr[o + 1];
    T* dst = out + ((r * Hb + oh + ph) * Wb + ow + pw) * cxp;
    int64_t co = 0;  // up to 8 vectors of co per pass over the entries (16 accumulators)
    for (; co + 8 * L <= cxp; co += 8 * L) conv_t_block<T, 8>(val, ent, e0, e1, w, dst, co);
    if (co + 4 * L <= cxp) {
      conv_t_block<T, 4>(val, ent, e0, e1, w, dst, co);
      co += 4 * L;
    }
    if (co + 2 * L <= cxp) {
      conv_t_block<T, 2>(val, ent, e0, e1, w, dst, co);
      co += 2 * L;
    }
    if (co < cxp) conv_t_block<T, 1>(val, ent, e0, e1, w, dst, co);
  }
}

DTP_FAST_SPARSE_CLONES void conv_t_f32(const float* val, const int32_t* ptr, const int32_t* ent, const float* w,
                                       float* out, int64_t o0, int64_t o1, int64_t Hx, int64_t Wx, int64_t Hb,
                                       int64_t Wb, int64_t ph, int64_t pw, int64_t cxp) {
  conv_t_range<float>(val, ptr, ent, w, out, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
}

DTP_FAST_SPARSE_CLONES void conv_t_f64(const double* val, const int32_t* ptr, const int32_t* ent, const double* w,
                                       double* out, int64_t o0, int64_t o1, int64_t Hx, int64_t Wx, int64_t Hb,
                                       int64_t Wb, int64_t ph, int64_t pw, int64_t cxp) {
  conv_t_range<double>(val, ptr, ent, w, out, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
}

void check_common(const char* op, const at::Tensor& values, const at::Tensor& ptr, const at::Tensor& ent,
                  const at::Tensor& dense, int64_t cxp) {
  TORCH_CHECK(values.device().is_cpu() && dense.device().is_cpu() && ptr.device().is_cpu() && ent.device().is_cpu(),
              op, ": expected CPU tensors");
  TORCH_CHECK(values.scalar_type() == at::kFloat || values.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", values.scalar_type());
  TORCH_CHECK(dense.scalar_type() == values.scalar_type(), op, ": values and the dense operand must have one dtype");
  TORCH_CHECK(values.is_contiguous() && dense.is_contiguous() && ptr.is_contiguous() && ent.is_contiguous(), op,
              ": operands must be contiguous (use dtp_fast.ops.pooled_conv_t / pooled_wgrad)");
  TORCH_CHECK(ptr.scalar_type() == at::kInt && ent.scalar_type() == at::kInt && ent.dim() == 2 && ent.size(1) == 2,
              op, ": lists must come from dtp_fast::switch_lists");
  TORCH_CHECK(cxp % (64 / static_cast<int64_t>(values.element_size())) == 0, op,
              ": the channel count must be padded to a multiple of ", 64 / values.element_size());
}

at::Tensor pooled_conv_t_cpu(const at::Tensor& values, const at::Tensor& pix_ptr, const at::Tensor& pix_ent,
                             const at::Tensor& weight, int64_t rows, at::IntArrayRef output_size,
                             at::IntArrayRef padded_size, at::IntArrayRef padding) {
  constexpr const char* op = "dtp_fast::pooled_conv_t";
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be (C, KH, KW, Cxp)");
  const int64_t cxp = weight.size(3);
  check_common(op, values, pix_ptr, pix_ent, weight, cxp);
  const int64_t Hx = output_size[0], Wx = output_size[1], Hb = padded_size[0], Wb = padded_size[1];
  const int64_t ph = padding[0], pw = padding[1];
  TORCH_CHECK(pix_ptr.numel() == rows * Hx * Wx + 1, op, ": pix_ptr does not match rows x output size");
  TORCH_CHECK(Hb >= ph + Hx && Wb >= pw + Wx, op, ": padded size too small for the output");
  at::Tensor out = at::empty({rows, Hb, Wb, cxp}, values.options());
  // the border (everything outside the output window) is zero
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "dtp_fast_pooled_conv_t_cpu", [&] {
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t i = 0; i < Hb; ++i)
          for (int64_t j = 0; j < Wb; ++j)
            if (i < ph || i >= ph + Hx || j < pw || j >= pw + Wx)
              std::fill_n(op_ + ((r * Hb + i) * Wb + j) * cxp, cxp, scalar_t(0));
    });
  });
  const int32_t* pp = pix_ptr.const_data_ptr<int32_t>();
  const int32_t* pe = pix_ent.const_data_ptr<int32_t>();
  const int64_t pixels = rows * Hx * Wx;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, cxp));
  if (values.scalar_type() == at::kFloat) {
    const float* v = values.const_data_ptr<float>();
    const float* w = weight.const_data_ptr<float>();
    float* o = out.mutable_data_ptr<float>();
    at::parallel_for(0, pixels, grain, [&](int64_t o0, int64_t o1) {
      conv_t_f32(v, pp, pe, w, o, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
    });
  } else {
    const double* v = values.const_data_ptr<double>();
    const double* w = weight.const_data_ptr<double>();
    double* o = out.mutable_data_ptr<double>();
    at::parallel_for(0, pixels, grain, [&](int64_t o0, int64_t o1) {
      conv_t_f64(v, pp, pe, w, o, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
    });
  }
  return out;
}

// ------------------------------------------------------------------ the weight gradient
// Channels c0 .. c1 - 1, span by span: kSpan (row, window) pairs of the rows' pooled planes, in order, and
// within a span channel by channel, each channel's entries of the span (the span's part of dr_pad stays in
// cache for all the channels: channel by channel over all the rows, a dr_pad larger than the L2 cache, as
// at the paper's width, streamed from memory once per channel). Taps in groups of kTaps (accumulators in
// registers), NB vectors of co at a time, added to out (zeroed first).
constexpr int kTaps = 9;
constexpr int64_t kSpan = 64;

template <typename T, int NB>
DTP_FAST_INLINE void wgrad_block(const T* val, const int32_t* ent, int64_t e0, int64_t e1, const T* dr, T* out,
                                 const int64_t* tofs, int nt, int64_t co, int64_t cxp) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V a[kTaps][NB];
  for (int t = 0; t < kTaps; ++t)
    for (int j = 0; j < NB; ++j) a[t][j] = V{};
  for (int64_t e = e0; e < e1; ++e) {
    const T u = val[ent[2 * e]];
    const T* src = dr + ent[2 * e + 1] + co;
    for (int t = 0; t < kTaps; ++t)
      for (int j = 0; j < NB; ++j) a[t][j] += u * load<T>(src + tofs[t] + j * L);
  }
  for (int t = 0; t < nt; ++t)
    for (int j = 0; j < NB; ++j) {
      T* o = out + t * cxp + co + j * L;
      store<T>(o, load<T>(o) + a[t][j]);
    }
}

// rows x Q: the (row, window) pairs of the values (rows, C, Hp, Wp), Q = Hp * Wp.
template <typename T>
DTP_FAST_INLINE void wgrad_range(const T* val, const int32_t* ptr, const int32_t* ent, const T* dr, T* out,
                                 int64_t c0, int64_t c1, const int64_t* tap_offsets, int64_t KK, int64_t cxp,
                                 int64_t rows, int64_t C, int64_t Q) {
  constexpr int L = Vec<T>::lanes;
  std::fill(out + c0 * KK * cxp, out + c1 * KK * cxp, T(0));
  std::vector<int64_t> next(ptr + c0, ptr + c1);  // each channel's first entry not yet done
  for (int64_t f0 = 0; f0 < rows * Q; f0 += kSpan) {
    const int64_t f1 = std::min(rows * Q, f0 + kSpan), re = f1 / Q, qe = f1 % Q;
    for (int64_t c = c0; c < c1; ++c) {
      // the channel's entries of the span (ordered by row, then window): value indices below (re * C + c) * Q + qe
      const int64_t e0 = next[c - c0], bound = (re * C + c) * Q + qe;
      int64_t e1 = e0;
      while (e1 < ptr[c + 1] && ent[2 * e1] < bound) ++e1;
      next[c - c0] = e1;
      if (e1 == e0) continue;
      for (int64_t t0 = 0; t0 < KK; t0 += kTaps) {
        const int nt = static_cast<int>(std::min<int64_t>(kTaps, KK - t0));
        int64_t tofs[kTaps];
        for (int t = 0; t < kTaps; ++t) tofs[t] = t < nt ? tap_offsets[t0 + t] : 0;  // spare slots: discarded
        T* o = out + (c * KK + t0) * cxp;
        int64_t co = 0;
        for (; co + 2 * L <= cxp; co += 2 * L) wgrad_block<T, 2>(val, ent, e0, e1, dr, o, tofs, nt, co, cxp);
        if (co < cxp) wgrad_block<T, 1>(val, ent, e0, e1, dr, o, tofs, nt, co, cxp);
      }
    }
  }
}

DTP_FAST_SPARSE_CLONES void wgrad_f32(const float* val, const int32_t* ptr, const int32_t* ent, const float* dr,
                                      float* out, int64_t c0, int64_t c1, const int64_t* tofs, int64_t KK,
                                      int64_t cxp, int64_t rows, int64_t C, int64_t Q) {
  wgrad_range<float>(val, ptr, ent, dr, out, c0, c1, tofs, KK, cxp, rows, C, Q);
}

DTP_FAST_SPARSE_CLONES void wgrad_f64(const double* val, const int32_t* ptr, const int32_t* ent, const double* dr,
                                      double* out, int64_t c0, int64_t c1, const int64_t* tofs, int64_t KK,
                                      int64_t cxp, int64_t rows, int64_t C, int64_t Q) {
  wgrad_range<double>(val, ptr, ent, dr, out, c0, c1, tofs, KK, cxp, rows, C, Q);
}

at::Tensor pooled_wgrad_cpu(const at::Tensor& values, const at::Tensor& ch_ptr, const at::Tensor& ch_ent,
                            const at::Tensor& dr_pad, at::IntArrayRef kernel_size, at::IntArrayRef dilation) {
  constexpr const char* op = "dtp_fast::pooled_wgrad";
  TORCH_CHECK(dr_pad.dim() == 4, op, ": dr_pad must be (rows, Hb, Wb, Cxp)");
  const int64_t cxp = dr_pad.size(3), Wb = dr_pad.size(2);
  check_common(op, values, ch_ptr, ch_ent, dr_pad, cxp);
  const int64_t C = ch_ptr.numel() - 1, KH = kernel_size[0], KW = kernel_size[1], KK = KH * KW;
  const int64_t rows = dr_pad.size(0), Q = rows * C > 0 ? values.numel() / (rows * C) : 0;
  TORCH_CHECK(values.numel() == rows * C * Q, op, ": values must hold rows x C x Hp x Wp (", rows, " rows of ", C,
              " channels: the rows of dr_pad, the channels of the lists), got ", values.numel(), " values");
  std::vector<int64_t> tofs(static_cast<size_t>(KK));
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) tofs[kh * KW + kw] = (kh * dilation[0] * Wb + kw * dilation[1]) * cxp;
  at::Tensor out = at::empty({C, KK, cxp}, values.options());
  const int32_t* cp = ch_ptr.const_data_ptr<int32_t>();
  const int32_t* ce = ch_ent.const_data_ptr<int32_t>();
  if (values.scalar_type() == at::kFloat) {
    const float* v = values.const_data_ptr<float>();
    const float* d = dr_pad.const_data_ptr<float>();
    float* o = out.mutable_data_ptr<float>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) { wgrad_f32(v, cp, ce, d, o, c0, c1, tofs.data(), KK, cxp, rows, C, Q); });
  } else {
    const double* v = values.const_data_ptr<double>();
    const double* d = dr_pad.const_data_ptr<double>();
    double* o = out.mutable_data_ptr<double>();
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) { wgrad_f64(v, cp, ce, d, o, c0, c1, tofs.data(), KK, cxp, rows, C, Q); });
  }
  return out;
}

// ------------------------------------------------------------------ a whole chunk
// Every iteration j of a precomputed chunk in one call, in order: dr_y = V * unpool(values[j]) (into one
// zero-bordered buffer), wgrad (one buffer), the loss (from loss_from on, V before its step, sums in double),
// then grad = 2 scale (wgrad - A[j]) (+ weight_decay V) and the momentum step of V and its buffer. V and the
// buffer are worked on in the kernels' packed layout [c][kh][kw][co] (co padded) and written back at the end.
template <typename T>
void chain_steps(const T* values, int64_t n, int64_t per_iter, const int32_t* pp, const int32_t* pe,
                 const int32_t* cp, const int32_t* ce, const T* A, T* V, T* buf, T* dr, T* wg, double* losses,
                 int64_t loss_from, int64_t rows, int64_t C, int64_t KK, int64_t Cx, int64_t cxp, int64_t Hx,
                 int64_t Wx, int64_t Hb, int64_t Wb, int64_t ph, int64_t pw, const int64_t* tofs, double scale,
                 double lr, double momentum, double weight_decay) {
  const int64_t pixels = rows * Hx * Wx, dr_size = rows * Hb * Wb * cxp;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, cxp));
  const T two_s = static_cast<T>(2 * scale), mu = static_cast<T>(momentum), wd = static_cast<T>(weight_decay);
  const T neg_lr = static_cast<T>(-lr);
  for (int64_t j = 0; j < n; ++j) {
    const T* val = values + j * per_iter;
    const T* Aj = A + j * C * KK * Cx;
    at::parallel_for(0, pixels, grain, [&](int64_t o0, int64_t o1) {
      if constexpr (std::is_same_v<T, float>) {
        conv_t_f32(val, pp, pe, V, dr, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
      } else {
        conv_t_f64(val, pp, pe, V, dr, o0, o1, Hx, Wx, Hb, Wb, ph, pw, cxp);
      }
    });
    at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
      if constexpr (std::is_same_v<T, float>) {
        wgrad_f32(val, cp, ce, dr, wg, c0, c1, tofs, KK, cxp, rows, C, per_iter / (rows * C));
      } else {
        wgrad_f64(val, cp, ce, dr, wg, c0, c1, tofs, KK, cxp, rows, C, per_iter / (rows * C));
      }
    });
    if (j >= loss_from) {
      double sq = 0, av = 0;
      for (int64_t i = 0; i < dr_size; ++i) sq += static_cast<double>(dr[i]) * static_cast<double>(dr[i]);
      for (int64_t ct = 0; ct < C * KK; ++ct)
        for (int64_t co = 0; co < Cx; ++co)
          av += static_cast<double>(Aj[ct * Cx + co]) * static_cast<double>(V[ct * cxp + co]);
      losses[j - loss_from] = scale * (sq - 2 * av);
    }
    for (int64_t ct = 0; ct < C * KK; ++ct) {
      for (int64_t co = 0; co < Cx; ++co) {
        const int64_t i = ct * cxp + co;
        T g = (wg[i] - Aj[ct * Cx + co]) * two_s;
        if (weight_decay != 0) g = g + wd * V[i];
        buf[i] = buf[i] * mu + g;
        V[i] = V[i] + neg_lr * buf[i];
      }
    }
  }
}

at::Tensor pooled_chain_cpu(const at::Tensor& values, const at::Tensor& pix_ptr, const at::Tensor& pix_ent,
                            const at::Tensor& ch_ptr, const at::Tensor& ch_ent, const at::Tensor& A,
                            at::Tensor& weight, at::Tensor& momentum_buffer, at::IntArrayRef output_size,
                            at::IntArrayRef padded_size, at::IntArrayRef padding, at::IntArrayRef dilation,
                            double scale, double lr, double momentum, double weight_decay, int64_t loss_from) {
  constexpr const char* op = "dtp_fast::pooled_chain_";
  TORCH_CHECK(values.dim() == 5, op, ": values must be (n, rows, C, Hp, Wp): a chunk of d2");
  TORCH_CHECK(weight.dim() == 4 && momentum_buffer.sizes() == weight.sizes(), op,
              ": weight and momentum_buffer must be (C, Cx, KH, KW) of one shape");
  const int64_t n = values.size(0), rows = values.size(1), C = weight.size(0), Cx = weight.size(1);
  const int64_t KH = weight.size(2), KW = weight.size(3), KK = KH * KW;
  TORCH_CHECK(values.size(2) == C, op, ": values have ", values.size(2), " channels, the weight ", C);
  TORCH_CHECK(A.dim() == 5 && A.size(0) == n && A.sizes().slice(1) == weight.sizes(), op,
              ": A must be (n, *weight.shape) = (", n, ", ", weight.sizes(), "), got ", A.sizes());
  TORCH_CHECK(weight.scalar_type() == values.scalar_type() && momentum_buffer.scalar_type() == values.scalar_type() &&
                  A.scalar_type() == values.scalar_type(), op, ": values, A, weight and momentum_buffer must have one dtype");
  TORCH_CHECK(weight.device().is_cpu() && momentum_buffer.device().is_cpu() && A.device().is_cpu(), op,
              ": expected CPU tensors");
  const int64_t lanes = 64 / static_cast<int64_t>(values.element_size());
  const int64_t cxp = (Cx + lanes - 1) / lanes * lanes;
  const at::Tensor vals = values.contiguous();
  check_common(op, vals, pix_ptr, pix_ent, vals, cxp);
  TORCH_CHECK(ch_ptr.numel() == C + 1 && ch_ptr.scalar_type() == at::kInt && ch_ent.scalar_type() == at::kInt, op,
              ": lists must come from dtp_fast::switch_lists for this weight");
  const int64_t Hx = output_size[0], Wx = output_size[1], Hb = padded_size[0], Wb = padded_size[1];
  const int64_t ph = padding[0], pw = padding[1];
  TORCH_CHECK(pix_ptr.numel() == rows * Hx * Wx + 1, op, ": pix_ptr does not match rows x output size");
  TORCH_CHECK(Hb >= ph + Hx && Wb >= pw + Wx, op, ": padded size too small for the output");
  TORCH_CHECK(loss_from >= 0, op, ": loss_from must be >= 0");
  std::vector<int64_t> tofs(static_cast<size_t>(KK));
  for (int64_t kh = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw) tofs[kh * KW + kw] = (kh * dilation[0] * Wb + kw * dilation[1]) * cxp;
  // packed [c][kh][kw][co] working copies (co padded with zeros), A as [j][c][kh][kw][co] unpadded
  auto packed = [&](const at::Tensor& t) {
    at::Tensor p = at::zeros({C, KH, KW, cxp}, values.options());
    p.narrow(3, 0, Cx).copy_(t.permute({0, 2, 3, 1}));
    return p;
  };
  at::Tensor Vp = packed(weight), Bp = packed(momentum_buffer);
  const at::Tensor Ap = A.permute({0, 1, 3, 4, 2}).contiguous();
  at::Tensor dr = at::zeros({rows, Hb, Wb, cxp}, values.options()), wg = at::empty({C, KK, cxp}, values.options());
  const int64_t nloss = std::max<int64_t>(0, n - loss_from);
  std::vector<double> losses(static_cast<size_t>(nloss));
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "dtp_fast_pooled_chain_cpu", [&] {
    chain_steps<scalar_t>(vals.const_data_ptr<scalar_t>(), n, rows * C * values.size(3) * values.size(4),
                          pix_ptr.const_data_ptr<int32_t>(), pix_ent.const_data_ptr<int32_t>(),
                          ch_ptr.const_data_ptr<int32_t>(), ch_ent.const_data_ptr<int32_t>(),
                          Ap.const_data_ptr<scalar_t>(), Vp.mutable_data_ptr<scalar_t>(),
                          Bp.mutable_data_ptr<scalar_t>(), dr.mutable_data_ptr<scalar_t>(),
                          wg.mutable_data_ptr<scalar_t>(), losses.data(), loss_from, rows, C, KK, Cx, cxp, Hx, Wx,
                          Hb, Wb, ph, pw, tofs.data(), scale, lr, momentum, weight_decay);
  });
  weight.copy_(Vp.narrow(3, 0, Cx).permute({0, 3, 1, 2}));
  momentum_buffer.copy_(Bp.narrow(3, 0, Cx).permute({0, 3, 1, 2}));
  return at::from_blob(losses.data(), {nloss}, at::TensorOptions().dtype(at::kDouble)).clone().to(values.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) {
  m.impl("switch_lists", &switch_lists_cpu);
  m.impl("pooled_conv_t", &pooled_conv_t_cpu);
  m.impl("pooled_wgrad", &pooled_wgrad_cpu);
  m.impl("pooled_chain_", &pooled_chain_cpu);
}

}  // namespace dtp_fast
