// CPU kernels of the dh family, the L-DRL feedback-engine ops (ALGORITHM.md
// section 5: dh1 and dh2): dtp_fast::pool_unpool_diff, dtp_fast::noisy_unpool_diff
// and dtp_fast::noisy_unpool_diff_philox (noisy_unpool_diff with its noise
// block drawn from csrc/philox.h first). Over 500 lines: one family's kernels,
// whose many specialised scans (layout x tiling x fused activation) share the
// buffers and helpers of this file.
//
// The first two produce, for N = M*B noisy copies of a batch of B samples,
//   out[n] = ACT(unpool(values, switches)) - h0[n % B]
// with ACT(0) == 0 (so 0 - h0 wherever no switch points). at::parallel_for
// splits the N samples; each task works through groups of consecutive
// samples (about kGroupPooled pooled values) in three passes whose buffers
// stay in cache: (1) the pooled values (and, for op 1, the switches), (2) the
// ACT of those values, (3) the output.
// pool_unpool_diff finds the switches itself (max-pool of ACT(z1) with the tie
// rules of act_pool2d: first maximum of a window in row-major order, a NaN
// always wins, padding never does) and keeps them only as the position of the
// maximum within its window; a window's value is the value of ACT(z1) AT its
// switch, so two windows sharing a switch write the same number.
// noisy_unpool_diff takes the switches and values y + sigma * eps: there the
// LAST write in row-major order over the pooled positions of a plane wins,
// like unpool_act2d, so its writes are kept in that order.
//
// Activations, bit for bit:
// - ACT applied to z1 before pooling (op 1): tanh runs first through ATen on
//   the whole z1 (at::tanh(z1), the very call of the reference). ELU only
//   where it can change the pooling: the scan runs on z1 and the windows whose
//   maximum is not > 0 are pooled again on ATen's vectorised ELU of their
//   members (pool_elu_windows), with the ties of ELU's saturation at -1 bit
//   for bit. ReLU and identity are exact and fused into the scan.
// - ACT applied to the unpooled values (both ops), and ELU of the members of
//   the windows pooled again (op 1): ELU and tanh are computed
//   by ATen's vectorised kernel on small buffers of pending writes, padded to
//   a multiple of kVecPad so that no value falls into ATen's scalar remainder
//   loop. ATen's CPU ELU is not a pure function of its input: the SIMD lanes
//   use Sleef's expm1 and the remainder loop (the last n % (2 * vector width)
//   elements of each thread's chunk) std::expm1, which differ by one ulp on
//   about 0.5% (float32) / 8% (float64) of negative inputs. These kernels use
//   the vectorised result for every element, i.e. what F.elu returns
//   everywhere except in its remainder positions. (ATen's tanh uses the
//   vectorised Sleef kernel for every element, remainders included.)
// Memory layout: every input may be NCHW-contiguous, channels_last or any
// strided tensor (index arithmetic with the four strides, each input its
// own). The loops run with the channels innermost when the main input (z1 /
// eps) is channels_last, vectorised across C, and in memory order when the
// windows tile the plane (MaxPool2d(2, 2)). The output takes the memory format
// of z1 (op 1) / eps (op 2).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/elu.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/tanh.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../dh_args.h"
#include "philox_cpu.h"

namespace dtp_fast {
namespace {

// Values per ATen activation call: below ATen's GRAIN_SIZE (32768), so the
// call runs serially in one vectorised loop, and a multiple of kVecPad.
constexpr int64_t kActChunk = 8192;
// Calls are zero-padded to a multiple of this many elements: at least twice
// the widest vector of ATen's CPU kernels (AVX-512 float: 16 lanes, unrolled
// twice), so the scalar remainder loop never runs on a real value.
constexpr int64_t kVecPad = 64;
static_assert(kActChunk % kVecPad == 0, "kActChunk must be a multiple of kVecPad");
// Pooled values per group of samples processed together (buffers of a few
// hundred KiB, in cache between the passes).
constexpr int64_t kGroupPooled = 16384;

struct Strides4 {
  int64_t n, c, h, w;
};

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Offset of flat plane index t = h * W + w, with a fast path for rows laid
// out one after the other (NCHW and channels_last tensors).
inline int64_t plane_offset(int64_t t, int64_t W, int64_t sh, int64_t sw) {
  return sh == W * sw ? t * sw : (t / W) * sh + (t % W) * sw;
}

// Samples per parallel task: about 32768 elements of work (ATen's GRAIN_SIZE).
inline int64_t sample_grain(int64_t work_per_sample) {
  constexpr int64_t kGrainSize = 32768;
  return std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, work_per_sample));
}

// Window-position type: as wide as scalar_t, so that selects on it vectorise
// together with the comparisons of the values.
template <typename scalar_t>
using WinPos = std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t>;

// ReLU fused into the pooling scans: the window's max is taken on z itself and
// fixed afterwards. ReLU maps every z <= 0 to 0, so when no z of the window is
// > 0 (and none is NaN), the ReLU values all tie at 0 and the first position
// (k = 0) wins with 0; otherwise the winner and its value are those of z.
template <typename T, typename K>
inline void relu_fixup(T& mv, K& mk) {
  const bool all_zero = !(mv > T(0)) & (mv == mv);
  mv = all_zero ? T(0) : mv;
  mk = all_zero ? K(0) : mk;
}

template <typename T, int64_t ACT>
inline T fused_act(T x) {
  if constexpr (ACT == kActRelu) {
    return x < T(0) ? T(0) : x;  // NaN propagates, like torch.relu
  } else {
    return x;
  }
}

#ifdef DTP_FAST_PHILOX_AVX512
// The lanes m of x, in order, to dst (compressed in a register and stored
// whole: up to a vector past the last lane is overwritten; compressing to
// memory is several times slower on some CPUs), and back: dst's next lanes
// into the lanes m of x (a whole vector read).
__attribute__((target("avx512f"))) inline void compress_store(float* dst, __mmask16 m, __m512 x) {
  _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(m, x));
}
__attribute__((target("avx512f"))) inline void compress_store(double* dst, __mmask8 m, __m512d x) {
  _mm512_storeu_pd(dst, _mm512_maskz_compress_pd(m, x));
}
__attribute__((target("avx512f"))) inline __m512 expand_load(__m512 x, __mmask16 m, const float* src) {
  return _mm512_mask_expand_ps(x, m, _mm512_loadu_ps(src));
}
__attribute__((target("avx512f"))) inline __m512d expand_load(__m512d x, __mmask8 m, const double* src) {
  return _mm512_mask_expand_pd(x, m, _mm512_loadu_pd(src));
}

// ELU's compaction with AVX-512 (see apply_act_aten): the values of v[0, n)
// that are not >= 0 (negative or NaN), in order, into buf (GATHER; returns
// their count; buf has a vector of room past n), or from buf back into their
// places (!GATHER).
template <bool GATHER, typename T>
__attribute__((target("avx512f"))) int64_t compact_not_ge0(T* v, int64_t n, T* buf) {
  constexpr int64_t L = 64 / sizeof(T);
  int64_t len = 0, i = 0;
  for (; i + L <= n; i += L) {
    if constexpr (sizeof(T) == 4) {
      const __m512 x = _mm512_loadu_ps(v + i);
      const __mmask16 m = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NGE_UQ);
      if constexpr (GATHER) compress_store(buf + len, m, x);
      else _mm512_storeu_ps(v + i, expand_load(x, m, buf + len));
      len += __builtin_popcount(m);
    } else {
      const __m512d x = _mm512_loadu_pd(v + i);
      const __mmask8 m = _mm512_cmp_pd_mask(x, _mm512_setzero_pd(), _CMP_NGE_UQ);
      if constexpr (GATHER) compress_store(buf + len, m, x);
      else _mm512_storeu_pd(v + i, expand_load(x, m, buf + len));
      len += __builtin_popcount(m);
    }
  }
  for (; i < n; ++i) {
    if (!(v[i] >= T(0))) {
      if constexpr (GATHER) buf[len] = v[i];
      else v[i] = buf[len];
      ++len;
    }
  }
  return len;
}
#endif

// ELU or tanh in place on v[0, count) through ATen's vectorised CPU kernel,
// in calls of at most kActChunk values zero-padded to a multiple of kVecPad
// (v has room for the padding).
template <typename scalar_t>
void act_aten_padded(scalar_t* v, int64_t count, int64_t act) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  for (int64_t i0 = 0; i0 < count; i0 += kActChunk) {
    const int64_t len = std::min(kActChunk, count - i0);
    const int64_t padded = (len + kVecPad - 1) / kVecPad * kVecPad;
    std::fill(v + i0 + len, v + i0 + padded, scalar_t(0));
    at::Tensor t = at::from_blob(v + i0, {padded}, options);
    if (act == kActElu) {
      at::elu_(t);
    } else {
      at::tanh_(t);
    }
  }
}

// Applies ELU or tanh in place to v[0, count) through ATen's vectorised CPU
// kernel (see the note at the top). ELU only touches the values that are not
// >= 0 (ELU(v) == v exactly there), gathered into `scratch` (kActChunk
// values; with AVX-512 by compress / expand, segment by segment, else with
// `where`, kActChunk positions).
template <typename scalar_t>
void apply_act_aten(scalar_t* v, int64_t count, int64_t act, scalar_t* scratch,
                    int64_t* where) {
  auto run = [&](int64_t len) { act_aten_padded(scratch, len, act); };
#ifdef DTP_FAST_PHILOX_AVX512
  if (act == kActElu && have_avx512()) {
    for (int64_t i0 = 0; i0 < count; i0 += kActChunk) {
      const int64_t n = std::min(kActChunk, count - i0);
      const int64_t len = compact_not_ge0<true>(v + i0, n, scratch);
      if (len > 0) {
        run(len);
        compact_not_ge0<false>(v + i0, n, scratch);
      }
    }
    return;
  }
#endif
  if (act == kActElu) {
    int64_t len = 0;
    auto flush = [&] {
      run(len);
      for (int64_t j = 0; j < len; ++j) {
        v[where[j]] = scratch[j];
      }
      len = 0;
    };
    for (int64_t i = 0; i < count; ++i) {  // branch-free compaction
      scratch[len] = v[i];
      where[len] = i;
      len += !(v[i] >= scalar_t(0));  // negative or NaN
      if (len == kActChunk) {
        flush();
      }
    }
    if (len > 0) {
      flush();
    }
  } else {
    for (int64_t i0 = 0; i0 < count; i0 += kActChunk) {
      const int64_t len = std::min(kActChunk, count - i0);
      std::copy(v + i0, v + i0 + len, scratch);
      run(len);
      std::copy(scratch, scratch + len, v + i0);
    }
  }
}

// An uninitialised array (a std::vector would zero it on every call).
template <typename T>
struct Buffer {
  std::unique_ptr<T[]> p;
  void resize(int64_t n) { p.reset(new T[n]); }
  T* data() { return p.get(); }
  T& operator[](int64_t i) { return p[i]; }
};

// Per-thread buffers of a group of samples.
template <typename scalar_t>
struct GroupBuffers {
  Buffer<scalar_t> val;             // pooled (op 1) / noisy (op 2) values
  Buffer<WinPos<scalar_t>> pos;     // op 1: argmax position in its window
  Buffer<scalar_t> scratch;         // ATen activation calls
  Buffer<int64_t> where;
  // op 1 with ELU (pool_elu_windows): the windows pooled again, their members
  // (member k of window j at members[k * stride + j]; the stride leaves room
  // for padding and compress_store) and counts (portable path), new maxima
  Buffer<scalar_t> members, new_val;
  Buffer<WinPos<scalar_t>> count, new_pos;
  Buffer<int64_t> slow;             // their buffer indices (portable path)
  int64_t capacity, stride;
  GroupBuffers(int64_t capacity, bool with_pos, bool with_act, int64_t window = 0)
      : capacity(capacity), stride((capacity + kVecPad - 1) / kVecPad * kVecPad + kVecPad) {
    val.resize(capacity);
    if (with_pos) {
      pos.resize(capacity);
    }
    if (with_act || window > 0) {
      scratch.resize(kActChunk + kVecPad);  // + room for compress_store
      where.resize(kActChunk);
    }
    if (window > 0) {
      members.resize(window * stride);
      new_val.resize(capacity + kVecPad);  // + room for expand_load
      count.resize(capacity);
      new_pos.resize(capacity + kVecPad);
      slow.resize(capacity);
    }
  }
};

// Splits the samples [begin, end) into groups of about kGroupPooled pooled
// values and calls f(n0, n1) for each.
template <typename F>
inline void for_each_group(int64_t begin, int64_t end, int64_t pooled_per_sample,
                           const F& f) {
  const int64_t per_group =
      std::max<int64_t>(1, kGroupPooled / std::max<int64_t>(1, pooled_per_sample));
  for (int64_t n0 = begin; n0 < end; n0 += per_group) {
    f(n0, std::min(end, n0 + per_group));
  }
}

// out = 0 - h0 over one (C, H, W) sample, in the output's memory order.
template <typename scalar_t>
void fill_neg_h0(scalar_t* out, const Strides4& os, const scalar_t* h0,
                 const Strides4& hs, int64_t C, int64_t H, int64_t W) {
  if (os.c < os.w) {  // channels innermost (channels_last output)
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t w = 0; w < W; ++w) {
        scalar_t* o = out + h * os.h + w * os.w;
        const scalar_t* s = h0 + h * hs.h + w * hs.w;
        if (os.c == 1 && hs.c == 1) {
          for (int64_t c = 0; c < C; ++c) {
            o[c] = scalar_t(0) - s[c];
          }
        } else {
          for (int64_t c = 0; c < C; ++c) {
            o[c * os.c] = scalar_t(0) - s[c * hs.c];
          }
        }
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t h = 0; h < H; ++h) {
        scalar_t* o = out + c * os.c + h * os.h;
        const scalar_t* s = h0 + c * hs.c + h * hs.h;
        if (os.w == 1 && hs.w == 1) {
          for (int64_t w = 0; w < W; ++w) {
            o[w] = scalar_t(0) - s[w];
          }
        } else {
          for (int64_t w = 0; w < W; ++w) {
            o[w * os.w] = scalar_t(0) - s[w * hs.w];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// pool_unpool_diff
//
// Per group of samples: (1) scan: the max of every window of ACT(z1) and its
// position k in the window (row-major over the clipped window); (2) ACT of
// the maxima; (3) write out = ACT(max) - h0 at the argmax, 0 - h0 elsewhere.
// With channels_last and windows that tile the plane (kernel == stride, no
// padding: MaxPool2d(2, 2)), (3) writes every output once, vectorised across
// C; otherwise it fills 0 - h0 and scatters the maxima.
// ---------------------------------------------------------------------------

struct PoolUnpoolArgs {
  Strides4 as, os, hs;  // a (ACT(z1) for ELU / tanh, else z1), out, h0
  int64_t N, B, C;
  PoolGeometry g;
  bool channels_inner;  // scan and write with the channels innermost
  bool tiling;          // kernel == stride and no padding
};

// The clipped window of pooled position (oh, ow).
struct Window {
  int64_t ih0, ih1, iw0, iw1;
};

inline Window window_of(const PoolGeometry& g, int64_t oh, int64_t ow) {
  Window w;
  w.ih0 = oh * g.sH - g.pH;
  w.ih1 = std::min(w.ih0 + g.kH, g.H);
  w.ih0 = std::max<int64_t>(w.ih0, 0);
  w.iw0 = ow * g.sW - g.pW;
  w.iw1 = std::min(w.iw0 + g.kW, g.W);
  w.iw0 = std::max<int64_t>(w.iw0, 0);
  return w;
}

// The steps of the vectorised scans below, on n running maxima mv and their
// window positions mk: each scan inlines them into its own loop nest, whose
// innermost axis (windows of a row, or channels) they vectorise.
template <typename T, typename K>
inline void reset_maxima(T* mv, K* mk, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    mv[i] = -std::numeric_limits<T>::infinity();
    mk[i] = 0;
  }
}

// Window position k, of value src[i * stride] in window i.
template <typename T, typename K>
inline void take_maxima(T* mv, K* mk, const T* src, int64_t stride, K k, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T v = src[i * stride];
    const T m = mv[i];
    const K q = mk[i];
    const bool take = (v > m) | (v != v);  // first max wins; NaN wins
    mv[i] = take ? v : m;
    mk[i] = take ? k : q;
  }
}

template <typename T, typename K>
inline void relu_fixup_maxima(T* mv, K* mk, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T m = mv[i];
    K q = mk[i];
    relu_fixup(m, q);
    mv[i] = m;
    mk[i] = q;
  }
}

// (1) Scan of one sample, plane by plane (NCHW-like input). Buffer order:
// (c, oh, ow).
template <typename scalar_t, int64_t ACT>
void scan_planes(const scalar_t* an, const PoolUnpoolArgs& p, scalar_t* val,
                 WinPos<scalar_t>* pos) {
  using K = WinPos<scalar_t>;
  const PoolGeometry& g = p.g;
  int64_t i = 0;
  for (int64_t c = 0; c < p.C; ++c) {
    const scalar_t* ap = an + c * p.as.c;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow, ++i) {
        const Window w = window_of(g, oh, ow);
        // As PyTorch: -inf at the first in-bounds position to start with.
        scalar_t mv = -std::numeric_limits<scalar_t>::infinity();
        K mk = 0, k = 0;
        for (int64_t ih = w.ih0; ih < w.ih1; ++ih) {
          const scalar_t* row = ap + ih * p.as.h;
          for (int64_t iw = w.iw0; iw < w.iw1; ++iw, ++k) {
            const scalar_t v = row[iw * p.as.w];
            const bool take = (v > mv) | (v != v);  // first max wins; NaN wins
            mv = take ? v : mv;
            mk = take ? k : mk;
          }
        }
        if constexpr (ACT == kActRelu) {
          relu_fixup(mv, mk);
        }
        val[i] = mv;
        pos[i] = mk;
      }
    }
  }
}

// (1) Scan of one sample, plane by plane, for windows that tile the plane
// (kernel == stride, no padding): a whole row of windows at once, branch-free
// and vectorised across the windows. Buffer order: (c, oh, ow). STRIDE2: the
// windows' first positions are 2 elements apart (MaxPool2d(2, 2), NCHW).
template <typename scalar_t, int64_t ACT, bool STRIDE2>
void scan_planes_tiling(const scalar_t* an, const PoolUnpoolArgs& p, scalar_t* val,
                        WinPos<scalar_t>* pos) {
  using K = WinPos<scalar_t>;
  const PoolGeometry& g = p.g;
  const int64_t OW = g.OW;
  const int64_t step = STRIDE2 ? 2 : g.kW * p.as.w;
  for (int64_t c = 0; c < p.C; ++c) {
    const scalar_t* ap = an + c * p.as.c;
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      scalar_t* mv = val + (c * g.OH + oh) * OW;
      K* mk = pos + (c * g.OH + oh) * OW;
      reset_maxima(mv, mk, OW);
      K k = 0;
      for (int64_t dh = 0; dh < g.kH; ++dh) {
        for (int64_t dw = 0; dw < g.kW; ++dw, ++k) {
          take_maxima(mv, mk, ap + (oh * g.kH + dh) * p.as.h + dw * p.as.w, step, k, OW);
        }
      }
      if constexpr (ACT == kActRelu) {
        relu_fixup_maxima(mv, mk, OW);
      }
    }
  }
}

// (1) Scan of one sample with the channels innermost (channels_last input),
// vectorised across C. Buffer order: (oh, ow, c).
template <typename scalar_t, int64_t ACT, bool UNIT_C>
void scan_channels_last(const scalar_t* an, const PoolUnpoolArgs& p,
                        scalar_t* val, WinPos<scalar_t>* pos) {
  using K = WinPos<scalar_t>;
  const PoolGeometry& g = p.g;
  const int64_t C = p.C;
  const int64_t asc = UNIT_C ? 1 : p.as.c;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const Window w = window_of(g, oh, ow);
      scalar_t* mv = val + (oh * g.OW + ow) * C;
      K* mk = pos + (oh * g.OW + ow) * C;
      reset_maxima(mv, mk, C);
      K k = 0;
      for (int64_t ih = w.ih0; ih < w.ih1; ++ih) {
        for (int64_t iw = w.iw0; iw < w.iw1; ++iw, ++k) {
          take_maxima(mv, mk, an + ih * p.as.h + iw * p.as.w, asc, k, C);
        }
      }
      if constexpr (ACT == kActRelu) {
        relu_fixup_maxima(mv, mk, C);
      }
    }
  }
}

// (1) Scan of one sample with the channels innermost, for windows that tile
// the plane: the input is read in its memory order, row by row, updating the
// maxima of a whole row of windows. Buffer order: (oh, ow, c).
template <typename scalar_t, int64_t ACT, bool UNIT_C>
void scan_channels_last_tiling(const scalar_t* an, const PoolUnpoolArgs& p,
                               scalar_t* val, WinPos<scalar_t>* pos) {
  using K = WinPos<scalar_t>;
  const PoolGeometry& g = p.g;
  const int64_t C = p.C;
  const int64_t asc = UNIT_C ? 1 : p.as.c;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    scalar_t* row_mv = val + oh * g.OW * C;
    K* row_mk = pos + oh * g.OW * C;
    reset_maxima(row_mv, row_mk, g.OW * C);
    for (int64_t dh = 0; dh < g.kH; ++dh) {
      const int64_t ih = oh * g.kH + dh;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        scalar_t* mv = row_mv + ow * C;
        K* mk = row_mk + ow * C;
        for (int64_t dw = 0; dw < g.kW; ++dw) {
          take_maxima(mv, mk, an + ih * p.as.h + (ow * g.kW + dw) * p.as.w, asc, static_cast<K>(dh * g.kW + dw),
                      C);
        }
      }
    }
    if constexpr (ACT == kActRelu) {
      relu_fixup_maxima(row_mv, row_mk, g.OW * C);
    }
  }
}

// (3) Tiling windows, channels innermost: every output written once.
template <typename scalar_t, bool UNIT_C>
void write_tiles_channels_last(scalar_t* on, const scalar_t* hn,
                               const PoolUnpoolArgs& p, const scalar_t* val,
                               const WinPos<scalar_t>* pos) {
  using K = WinPos<scalar_t>;
  const PoolGeometry& g = p.g;
  const int64_t C = p.C;
  const int64_t osc = UNIT_C ? 1 : p.os.c;
  const int64_t hsc = UNIT_C ? 1 : p.hs.c;
  // In the output's memory order: row by row.
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t dh = 0; dh < g.kH; ++dh) {
      const int64_t ih = oh * g.kH + dh;
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const scalar_t* mv = val + (oh * g.OW + ow) * C;
        const K* mk = pos + (oh * g.OW + ow) * C;
        for (int64_t dw = 0; dw < g.kW; ++dw) {
          const K k = static_cast<K>(dh * g.kW + dw);
          const int64_t iw = ow * g.kW + dw;
          scalar_t* o = on + ih * p.os.h + iw * p.os.w;
          const scalar_t* h = hn + ih * p.hs.h + iw * p.hs.w;
          for (int64_t c = 0; c < C; ++c) {
            const scalar_t v = mv[c];
            const scalar_t hv = h[c * hsc];
            const bool sel = mk[c] == k;
            o[c * osc] = (sel ? v : scalar_t(0)) - hv;
          }
        }
      }
    }
  }
}

// (3) Tiling windows, plane by plane: after out = 0 - h0, every window
// writes ACT(max) - h0 at its argmax. `tile` holds the offsets of the kH * kW
// window positions from the window's corner, in out then in h0.
template <typename scalar_t>
void scatter_tiles_planes(scalar_t* on, const scalar_t* hn, const PoolUnpoolArgs& p,
                          const scalar_t* val, const WinPos<scalar_t>* pos,
                          const int64_t* tile) {
  const PoolGeometry& g = p.g;
  const int64_t* tile_h = tile + g.kH * g.kW;
  const int64_t step_oh = g.kH * p.os.h, step_ow = g.kW * p.os.w;
  const int64_t hstep_oh = g.kH * p.hs.h, hstep_ow = g.kW * p.hs.w;
  int64_t i = 0;
  for (int64_t c = 0; c < p.C; ++c) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      const int64_t o_row = c * p.os.c + oh * step_oh;
      const int64_t h_row = c * p.hs.c + oh * hstep_oh;
      for (int64_t ow = 0; ow < g.OW; ++ow, ++i) {
        const int64_t k = pos[i];
        on[o_row + ow * step_ow + tile[k]] = val[i] - hn[h_row + ow * hstep_ow + tile_h[k]];
      }
    }
  }
}

// (3) Any windows: after out = 0 - h0, every window writes ACT(max) - h0 at
// its argmax (windows sharing an argmax write the same value).
template <typename scalar_t>
void scatter_maxima(scalar_t* on, const scalar_t* hn, const PoolUnpoolArgs& p,
                    const scalar_t* val, const WinPos<scalar_t>* pos) {
  const PoolGeometry& g = p.g;
  auto put = [&](int64_t c, const Window& w, scalar_t v, int64_t k) {
    const int64_t wlen = w.iw1 - w.iw0;
    const int64_t ih = w.ih0 + k / wlen, iw = w.iw0 + k % wlen;
    on[c * p.os.c + ih * p.os.h + iw * p.os.w] =
        v - hn[c * p.hs.c + ih * p.hs.h + iw * p.hs.w];
  };
  int64_t i = 0;
  if (p.channels_inner) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window w = window_of(g, oh, ow);
        for (int64_t c = 0; c < p.C; ++c, ++i) {
          put(c, w, val[i], pos[i]);
        }
      }
    }
  } else {
    for (int64_t c = 0; c < p.C; ++c) {
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow, ++i) {
          put(c, window_of(g, oh, ow), val[i], pos[i]);
        }
      }
    }
  }
}

// ELU before the pool (op 1): the scans run on z1 itself, then the windows
// whose maximum is not > 0 (every member <= 0, or a NaN) are pooled again on
// the ELU of their members. A window whose maximum z is > 0 needs no ELU:
// ELU(z) == z exactly for z > 0 and every other member maps to at most 0, so
// its maximum, the maximum's first position and its value are those of z.
// The others (a tenth to a quarter of the windows behind the conv layers of
// the paper's networks) gather their members, take ATen's vectorised ELU
// (apply_act_aten) and are pooled again with the scans' tie rules: ELU runs on
// their members only, not on all of z1.

// Window j's maximum over its members k < count[j] (members[k * stride + j];
// count null: all `window` of them) and its position, into mv[j], mk[j].
template <typename T, typename K>
void pool_members(const T* members, int64_t stride, const K* count, int64_t window, T* mv, K* mk, int64_t len) {
  reset_maxima(mv, mk, len);
  for (int64_t k = 0; k < window; ++k) {
    const T* src = members + k * stride;
    if (count == nullptr) {
      take_maxima(mv, mk, src, 1, K(k), len);
      continue;
    }
    for (int64_t j = 0; j < len; ++j) {
      const T v = src[j];
      const bool take = (K(k) < count[j]) & ((v > mv[j]) | (v != v));  // first max wins; NaN wins
      mv[j] = take ? v : mv[j];
      mk[j] = take ? K(k) : mk[j];
    }
  }
}

// Channels innermost, windows that tile the plane: every window's members are
// written to slot len, which advances past those whose maximum is not > 0
// (branch-free). K: the members of a window when known (4: 2x2), else 0.
template <int K, typename scalar_t>
int64_t gather_tiles(const scalar_t* an, const PoolUnpoolArgs& p, const scalar_t* val, int64_t base,
                     GroupBuffers<scalar_t>& buf, int64_t len) {
  const PoolGeometry& g = p.g;
  const int64_t window = K ? K : g.kH * g.kW;
  std::vector<int64_t> off(static_cast<size_t>(window));  // the members' offsets from the window's corner
  std::vector<scalar_t*> dst(static_cast<size_t>(window));
  for (int64_t dh = 0, k = 0; dh < g.kH; ++dh) {
    for (int64_t dw = 0; dw < g.kW; ++dw, ++k) {
      off[k] = dh * p.as.h + dw * p.as.w;
      dst[k] = buf.members.data() + k * buf.stride;
    }
  }
  int64_t i = 0;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const scalar_t* corner = an + oh * g.kH * p.as.h + ow * g.kW * p.as.w;
      for (int64_t c = 0; c < p.C; ++c, ++i) {
        const scalar_t* src = corner + c * p.as.c;
        for (int64_t k = 0; k < window; ++k) dst[k][len] = src[off[k]];
        buf.slow[len] = base + i;
        len += !(val[i] > scalar_t(0));
      }
    }
  }
  return len;
}

// Any layout and windows: the members of the windows of one sample (buffer
// index base + i) whose maximum is not > 0, appended from slot len on (their
// counts too unless the windows tile the plane: then all are whole); returns
// the new len.
template <typename scalar_t>
int64_t gather_windows(const scalar_t* an, const PoolUnpoolArgs& p, const scalar_t* val, int64_t base,
                       GroupBuffers<scalar_t>& buf, int64_t len) {
  const PoolGeometry& g = p.g;
  const int64_t stride = buf.stride;
  if (p.channels_inner && p.tiling) {  // whole windows, branch-free (below)
    return g.kH * g.kW == 4 ? gather_tiles<4>(an, p, val, base, buf, len)
                            : gather_tiles<0>(an, p, val, base, buf, len);
  }
  auto visit = [&](int64_t i, int64_t c, const Window& w) {
    if (val[i] > scalar_t(0)) {
      return;
    }
    WinPos<scalar_t> k = 0;
    for (int64_t ih = w.ih0; ih < w.ih1; ++ih) {
      for (int64_t iw = w.iw0; iw < w.iw1; ++iw, ++k) {
        buf.members[k * stride + len] = an[c * p.as.c + ih * p.as.h + iw * p.as.w];
      }
    }
    buf.count[len] = k;
    buf.slow[len++] = base + i;
  };
  int64_t i = 0;
  if (p.channels_inner) {
    for (int64_t oh = 0; oh < g.OH; ++oh) {
      for (int64_t ow = 0; ow < g.OW; ++ow) {
        const Window w = window_of(g, oh, ow);
        for (int64_t c = 0; c < p.C; ++c) visit(i++, c, w);
      }
    }
  } else {
    for (int64_t c = 0; c < p.C; ++c) {
      for (int64_t oh = 0; oh < g.OH; ++oh) {
        for (int64_t ow = 0; ow < g.OW; ++ow) visit(i++, c, window_of(g, oh, ow));
      }
    }
  }
  return len;
}

#ifdef DTP_FAST_PHILOX_AVX512
// Channels innermost with unit stride, windows that tile the plane: one vector
// of channels of a window position at a time, the windows to pool again picked
// by a mask. GATHER: their members compressed into buf.members from slot len
// on (every window has all its members); else their new maxima (buf.new_val /
// new_pos from slot len on) expanded
// into val / pos. Returns the new len.
template <bool GATHER, typename T>
__attribute__((target("avx512f"))) int64_t windows_avx512(const T* an, const PoolUnpoolArgs& p, T* val,
                                                          WinPos<T>* pos, GroupBuffers<T>& buf, int64_t len) {
  constexpr int64_t L = 64 / sizeof(T);
  const PoolGeometry& g = p.g;
  const int64_t C = p.C, stride = buf.stride;
  for (int64_t oh = 0; oh < g.OH; ++oh) {
    for (int64_t ow = 0; ow < g.OW; ++ow) {
      const int64_t i0 = (oh * g.OW + ow) * C;
      for (int64_t c = 0; c < C; c += L) {
        const unsigned tail = C - c >= L ? (1u << L) - 1 : (1u << (C - c)) - 1;
        unsigned m;
        if constexpr (sizeof(T) == 4) {
          m = _mm512_mask_cmp_ps_mask(tail, _mm512_maskz_loadu_ps(tail, val + i0 + c), _mm512_setzero_ps(),
                                      _CMP_NGT_UQ);
        } else {
          m = _mm512_mask_cmp_pd_mask(tail, _mm512_maskz_loadu_pd(tail, val + i0 + c), _mm512_setzero_pd(),
                                      _CMP_NGT_UQ);
        }
        if (m == 0) {
          continue;
        }
        if constexpr (GATHER) {
          for (int64_t dh = 0, k = 0; dh < g.kH; ++dh) {
            for (int64_t dw = 0; dw < g.kW; ++dw, ++k) {
              const T* src = an + (oh * g.kH + dh) * p.as.h + (ow * g.kW + dw) * p.as.w + c;
              if constexpr (sizeof(T) == 4) {
                compress_store(buf.members.data() + k * stride + len, m, _mm512_maskz_loadu_ps(m, src));
              } else {
                compress_store(buf.members.data() + k * stride + len, m, _mm512_maskz_loadu_pd(m, src));
              }
            }
          }
        } else if constexpr (sizeof(T) == 4) {
          _mm512_mask_storeu_ps(val + i0 + c, m, _mm512_maskz_expand_ps(m, _mm512_loadu_ps(buf.new_val.data() + len)));
          _mm512_mask_storeu_epi32(pos + i0 + c, m,
                                   _mm512_maskz_expand_epi32(m, _mm512_loadu_si512(buf.new_pos.data() + len)));
        } else {
          _mm512_mask_storeu_pd(val + i0 + c, m, _mm512_maskz_expand_pd(m, _mm512_loadu_pd(buf.new_val.data() + len)));
          _mm512_mask_storeu_epi64(pos + i0 + c, m,
                                   _mm512_maskz_expand_epi64(m, _mm512_loadu_si512(buf.new_pos.data() + len)));
        }
        len += __builtin_popcount(m);
      }
    }
  }
  return len;
}
#endif

// The group's samples n0 .. n1 - 1, scanned on z1 (val / pos in buffer order,
// `pooled` per sample): their windows whose maximum is not > 0 pooled again on
// ELU(z1), and ELU applied to every maximum (the activation after the
// unpooling, which only changes those).
template <typename scalar_t>
void pool_elu_windows(const scalar_t* a, const PoolUnpoolArgs& p, int64_t n0, int64_t n1, int64_t pooled,
                      GroupBuffers<scalar_t>& buf) {
  const int64_t window = p.g.kH * p.g.kW, stride = buf.stride;
  bool vec = false;
#ifdef DTP_FAST_PHILOX_AVX512
  vec = p.channels_inner && p.tiling && p.as.c == 1 && have_avx512();
#endif
  auto pass = [&](auto gather, int64_t len) {
    for (int64_t n = n0; n < n1; ++n) {
      const int64_t base = (n - n0) * pooled;
#ifdef DTP_FAST_PHILOX_AVX512
      if (vec) {
        len = windows_avx512<decltype(gather)::value>(a + n * p.as.n, p, buf.val.data() + base,
                                                      buf.pos.data() + base, buf, len);
        continue;
      }
#endif
      len = gather_windows(a + n * p.as.n, p, buf.val.data() + base, base, buf, len);
    }
    return len;
  };
  const int64_t len = pass(std::true_type{}, 0);
  if (len == 0) {
    return;
  }
  for (int64_t k = 0; k < window; ++k) {  // members are <= 0 or NaN, or unused: no compaction
    act_aten_padded(buf.members.data() + k * stride, len, kActElu);
  }
  pool_members(buf.members.data(), stride, p.tiling ? nullptr : buf.count.data(), window, buf.new_val.data(),
               buf.new_pos.data(), len);
  // and the ELU after the unpooling: of these maxima only (the others are > 0)
  act_aten_padded(buf.new_val.data(), len, kActElu);
  if (vec) {
    pass(std::false_type{}, 0);
    return;
  }
  for (int64_t j = 0; j < len; ++j) {
    buf.val[buf.slow[j]] = buf.new_val[j];
    buf.pos[buf.slow[j]] = buf.new_pos[j];
  }
}

template <typename scalar_t, int64_t ACT>
void pool_unpool_diff_kernel(const scalar_t* a, scalar_t* out, const scalar_t* h0,
                             const PoolUnpoolArgs& p, int64_t post_act, bool elu_windows) {
  const PoolGeometry& g = p.g;
  const int64_t pooled = p.C * g.OH * g.OW;
  const int64_t work = p.C * g.H * g.W + pooled * g.kH * g.kW;
  const bool post = post_act == kActElu || post_act == kActTanh;
  // Tiles that leave a border (H % kH, W % kW) uncovered need the fill too.
  const bool covered = g.OH * g.kH == g.H && g.OW * g.kW == g.W;
  at::parallel_for(0, p.N, sample_grain(work), [&](int64_t begin, int64_t end) {
    const int64_t per_group =
        std::max<int64_t>(1, kGroupPooled / std::max<int64_t>(1, pooled));
    GroupBuffers<scalar_t> buf(std::min(end - begin, per_group) * pooled, true, post,
                               elu_windows ? g.kH * g.kW : 0);
    std::vector<int64_t> tile(2 * g.kH * g.kW);  // see scatter_tiles_planes
    for (int64_t dh = 0, k = 0; dh < g.kH; ++dh) {
      for (int64_t dw = 0; dw < g.kW; ++dw, ++k) {
        tile[k] = dh * p.os.h + dw * p.os.w;
        tile[g.kH * g.kW + k] = dh * p.hs.h + dw * p.hs.w;
      }
    }
    for_each_group(begin, end, pooled, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        scalar_t* val = buf.val.data() + (n - n0) * pooled;
        WinPos<scalar_t>* pos = buf.pos.data() + (n - n0) * pooled;
        const scalar_t* an = a + n * p.as.n;
        if (!p.channels_inner && p.tiling) {
          if (g.kW == 2 && p.as.w == 1) {
            scan_planes_tiling<scalar_t, ACT, true>(an, p, val, pos);
          } else {
            scan_planes_tiling<scalar_t, ACT, false>(an, p, val, pos);
          }
        } else if (!p.channels_inner) {
          scan_planes<scalar_t, ACT>(an, p, val, pos);
        } else if (p.tiling) {
          if (p.as.c == 1) {
            scan_channels_last_tiling<scalar_t, ACT, true>(an, p, val, pos);
          } else {
            scan_channels_last_tiling<scalar_t, ACT, false>(an, p, val, pos);
          }
        } else if (p.as.c == 1) {
          scan_channels_last<scalar_t, ACT, true>(an, p, val, pos);
        } else {
          scan_channels_last<scalar_t, ACT, false>(an, p, val, pos);
        }
      }
      if (elu_windows) {  // ELU before the pool and after the unpooling
        pool_elu_windows(a, p, n0, n1, pooled, buf);
      } else if (post) {
        apply_act_aten(buf.val.data(), (n1 - n0) * pooled, post_act,
                       buf.scratch.data(), buf.where.data());
      }
      for (int64_t n = n0; n < n1; ++n) {
        const scalar_t* val = buf.val.data() + (n - n0) * pooled;
        const WinPos<scalar_t>* pos = buf.pos.data() + (n - n0) * pooled;
        scalar_t* on = out + n * p.os.n;
        const scalar_t* hn = h0 + (n % p.B) * p.hs.n;
        if (!p.tiling || !covered || !p.channels_inner) {
          fill_neg_h0(on, p.os, hn, p.hs, p.C, g.H, g.W);
        }
        if (!p.tiling) {
          scatter_maxima(on, hn, p, val, pos);
        } else if (!p.channels_inner) {
          scatter_tiles_planes(on, hn, p, val, pos, tile.data());
        } else if (p.os.c == 1 && p.hs.c == 1) {
          write_tiles_channels_last<scalar_t, true>(on, hn, p, val, pos);
        } else {
          write_tiles_channels_last<scalar_t, false>(on, hn, p, val, pos);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------
// noisy_unpool_diff
//
// Per group of samples: (1) the noisy values y + sigma * eps (and the index
// checks); (2) their ACT; (3) out = 0 - h0, then the values scattered to
// their switches in row-major order within each plane (the last write wins).
// ---------------------------------------------------------------------------

struct NoisyArgs {
  Strides4 ys, es, is, hs, os;  // y, eps, indices, h0, out
  int64_t N, B, C, Hp, Wp, H, W;
  bool channels_inner;  // pooled positions visited with the channels innermost
};

// Calls f(c, hp, wp) for the pooled positions of a sample in buffer order;
// stops (returning false) as soon as f returns false.
template <typename F>
inline bool for_each_pooled(const NoisyArgs& p, const F& f) {
  if (p.channels_inner) {
    for (int64_t hp = 0; hp < p.Hp; ++hp) {
      for (int64_t wp = 0; wp < p.Wp; ++wp) {
        for (int64_t c = 0; c < p.C; ++c) {
          if (!f(c, hp, wp)) {
            return false;
          }
        }
      }
    }
  } else {
    for (int64_t c = 0; c < p.C; ++c) {
      for (int64_t hp = 0; hp < p.Hp; ++hp) {
        for (int64_t wp = 0; wp < p.Wp; ++wp) {
          if (!f(c, hp, wp)) {
            return false;
          }
        }
      }
    }
  }
  return true;
}

template <typename scalar_t, int64_t ACT>
void noisy_unpool_diff_kernel(const scalar_t* y, const scalar_t* eps,
                              const int64_t* ind, const scalar_t* h0,
                              scalar_t* out, scalar_t sigma, const NoisyArgs& p,
                              int64_t post_act, std::atomic<bool>& bad,
                              std::atomic<int64_t>& bad_value) {
  const int64_t HW = p.H * p.W;
  const int64_t pooled = p.C * p.Hp * p.Wp;
  const int64_t work = p.C * HW + 2 * pooled;
  const bool post = post_act == kActElu || post_act == kActTanh;
  at::parallel_for(0, p.N, sample_grain(work), [&](int64_t begin, int64_t end) {
    const int64_t per_group =
        std::max<int64_t>(1, kGroupPooled / std::max<int64_t>(1, pooled));
    GroupBuffers<scalar_t> buf(std::min(end - begin, per_group) * pooled, false, post);
    for_each_group(begin, end, pooled, [&](int64_t n0, int64_t n1) {
      if (bad.load(std::memory_order_relaxed)) {
        return;
      }
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t b = n % p.B;
        const scalar_t* yb = y + b * p.ys.n;
        const scalar_t* en = eps + n * p.es.n;
        const int64_t* ib = ind + b * p.is.n;
        scalar_t* val = buf.val.data() + (n - n0) * pooled;
        // One run of positions: y, eps, indices at the given offsets and
        // steps, `len` of them, into val (vectorisable; the index check is an
        // OR reduction).
        bool any_bad = false;
        auto run = [&](const scalar_t* yr, int64_t ys, const scalar_t* er, int64_t es,
                       const int64_t* ir, int64_t is, scalar_t* vr, int64_t len) {
          bool run_bad = false;
          for (int64_t j = 0; j < len; ++j) {
            const int64_t t = ir[j * is];
            run_bad |= (t < 0) | (t >= HW);
            // As `y + sigma * eps` in PyTorch: the product rounded to
            // scalar_t, then the sum (two statements: no fused multiply-add).
            const scalar_t noise = sigma * er[j * es];
            const scalar_t v = yr[j * ys] + noise;
            vr[j] = fused_act<scalar_t, ACT>(v);
          }
          any_bad |= run_bad;
        };
        if (p.channels_inner) {
          for (int64_t hp = 0; hp < p.Hp; ++hp) {
            for (int64_t wp = 0; wp < p.Wp; ++wp) {
              run(yb + hp * p.ys.h + wp * p.ys.w, p.ys.c, en + hp * p.es.h + wp * p.es.w,
                  p.es.c, ib + hp * p.is.h + wp * p.is.w, p.is.c,
                  val + (hp * p.Wp + wp) * p.C, p.C);
            }
          }
        } else {
          for (int64_t c = 0; c < p.C; ++c) {
            for (int64_t hp = 0; hp < p.Hp; ++hp) {
              run(yb + c * p.ys.c + hp * p.ys.h, p.ys.w, en + c * p.es.c + hp * p.es.h,
                  p.es.w, ib + c * p.is.c + hp * p.is.h, p.is.w,
                  val + (c * p.Hp + hp) * p.Wp, p.Wp);
            }
          }
        }
        if (any_bad) {  // report the first invalid index, in visiting order
          for_each_pooled(p, [&](int64_t c, int64_t hp, int64_t wp) {
            const int64_t t = ib[c * p.is.c + hp * p.is.h + wp * p.is.w];
            if (t < 0 || t >= HW) {
              if (!bad.exchange(true)) {
                bad_value.store(t);
              }
              return false;
            }
            return true;
          });
          return;
        }
      }
      if (post) {
        apply_act_aten(buf.val.data(), (n1 - n0) * pooled, post_act,
                       buf.scratch.data(), buf.where.data());
      }
      for (int64_t n = n0; n < n1; ++n) {
        const int64_t b = n % p.B;
        scalar_t* on = out + n * p.os.n;
        const scalar_t* hn = h0 + b * p.hs.n;
        const int64_t* ib = ind + b * p.is.n;
        const scalar_t* val = buf.val.data() + (n - n0) * pooled;
        fill_neg_h0(on, p.os, hn, p.hs, p.C, p.H, p.W);
        int64_t i = 0;
        for_each_pooled(p, [&](int64_t c, int64_t hp, int64_t wp) {
          const int64_t t = ib[c * p.is.c + hp * p.is.h + wp * p.is.w];
          on[c * p.os.c + plane_offset(t, p.W, p.os.h, p.os.w)] =
              val[i++] - hn[c * p.hs.c + plane_offset(t, p.W, p.hs.h, p.hs.w)];
          return true;
        });
      }
    });
  });
}

// Calls f with the fused activation code (ReLU or identity) as a constant.
template <typename F>
inline void dispatch_scan_act(int64_t act, const F& f) {
  if (act == kActRelu) {
    f(std::integral_constant<int64_t, kActRelu>{});
  } else {
    f(std::integral_constant<int64_t, kActIdentity>{});
  }
}

inline void check_float_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              op, ": the CPU kernel supports float32 and float64, got ", name,
              " of dtype ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": expected CPU tensors, got ", name,
              " on ", t.device());
}

at::Tensor pool_unpool_diff_cpu(const at::Tensor& z1, const at::Tensor& h0,
                                int64_t act, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "dtp_fast::pool_unpool_diff";
  const PoolGeometry g = pool_unpool_diff_geometry(op, z1, h0, act, kernel_size, stride, padding);
  check_float_cpu(op, "z1", z1);
  check_float_cpu(op, "h0", h0);
  check_same_dtype(op, "z1", z1, "h0", h0);
  TORCH_CHECK(h0.size(1) == z1.size(1) && h0.size(2) == z1.size(2) &&
                  h0.size(3) == z1.size(3),
              op, ": h0 must be (B, C, H, W) with the C, H, W of z1, got h0 of "
              "shape ", h0.sizes(), " and z1 of shape ", z1.sizes());
  const int64_t N = z1.size(0), B = h0.size(0), C = z1.size(1);
  check_copies(op, "z1", N, "h0", B);

  at::Tensor out = at::empty(
      z1.sizes(), z1.options().memory_format(z1.suggest_memory_format()));
  if (out.numel() == 0) {
    return out;
  }
  // tanh of z1 through ATen, on z1 itself, as the reference's torch.tanh(z1).
  // When out has the strides of z1 (a dense z1), the activation goes straight
  // into out without a temporary (each sample is scanned before it is
  // written). ELU: the scan on z1, then pool_elu_windows.
  at::Tensor a = z1;
  int64_t scan_act = act;
  if (act == kActTanh) {
    a = out.strides() == z1.strides() ? at::tanh_out(out, z1) : at::tanh(z1);
  }
  if (act == kActElu || act == kActTanh) {
    scan_act = kActIdentity;
  }
  PoolUnpoolArgs p{strides_of(a), strides_of(out), strides_of(h0), N, B, C, g,
                   /*channels_inner=*/a.stride(1) < a.stride(3) && C > 1,
                   /*tiling=*/g.kH == g.sH && g.kW == g.sW && g.pH == 0 && g.pW == 0};
  AT_DISPATCH_FLOATING_TYPES(z1.scalar_type(), "dtp_fast_pool_unpool_diff_cpu", [&] {
    dispatch_scan_act(scan_act, [&](auto act_c) {
      pool_unpool_diff_kernel<scalar_t, decltype(act_c)::value>(
          a.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          h0.const_data_ptr<scalar_t>(), p, act, act == kActElu);
    });
  });
  return out;
}

at::Tensor noisy_unpool_diff_cpu(const at::Tensor& y, const at::Tensor& eps,
                                 double sigma, const at::Tensor& indices,
                                 const at::Tensor& h0, int64_t act,
                                 at::IntArrayRef output_size) {
  constexpr const char* op = "dtp_fast::noisy_unpool_diff";
  check_act(op, act);
  check_ldrl_4d(op, "y", "(B, C, Hp, Wp)", y);
  check_ldrl_4d(op, "eps", "(M*B, C, Hp, Wp)", eps);
  check_ldrl_4d(op, "h0", "(B, C, H, W)", h0);
  check_unpool_args(op, y, indices, output_size);
  check_float_cpu(op, "y", y);
  check_float_cpu(op, "eps", eps);
  check_float_cpu(op, "h0", h0);
  TORCH_CHECK(indices.device().is_cpu(), op, ": expected CPU tensors, got "
              "indices on ", indices.device());
  check_same_dtype(op, "y", y, "eps", eps);
  check_same_dtype(op, "y", y, "h0", h0);
  TORCH_CHECK(eps.size(1) == y.size(1) && eps.size(2) == y.size(2) &&
                  eps.size(3) == y.size(3),
              op, ": eps must be (M*B, C, Hp, Wp) with the C, Hp, Wp of y, got "
              "eps of shape ", eps.sizes(), " and y of shape ", y.sizes());
  const int64_t H = output_size[0], W = output_size[1];
  TORCH_CHECK(h0.size(0) == y.size(0) && h0.size(1) == y.size(1) &&
                  h0.size(2) == H && h0.size(3) == W,
              op, ": h0 must be (B, C, H, W) = (", y.size(0), ", ", y.size(1),
              ", ", H, ", ", W, ") (the B, C of y and output_size), got ",
              h0.sizes());
  const int64_t N = eps.size(0), B = y.size(0), C = y.size(1);
  check_copies(op, "eps", N, "y", B);

  at::Tensor out = at::empty(
      {N, C, H, W}, eps.options().memory_format(eps.suggest_memory_format()));
  if (out.numel() == 0) {
    return out;
  }
  NoisyArgs p{strides_of(y), strides_of(eps), strides_of(indices), strides_of(h0),
              strides_of(out), N, B, C, y.size(2), y.size(3), H, W,
              /*channels_inner=*/eps.stride(1) < eps.stride(3) && C > 1};
  std::atomic<bool> bad{false};
  std::atomic<int64_t> bad_value{0};
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dtp_fast_noisy_unpool_diff_cpu", [&] {
    // A Python float times a float32 tensor multiplies by the float32 value.
    const scalar_t s = static_cast<scalar_t>(sigma);
    dispatch_scan_act(act, [&](auto act_c) {
      noisy_unpool_diff_kernel<scalar_t, decltype(act_c)::value>(
          y.const_data_ptr<scalar_t>(), eps.const_data_ptr<scalar_t>(),
          indices.const_data_ptr<int64_t>(), h0.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(), s, p, act, bad, bad_value);
    });
  });
  TORCH_CHECK(!bad.load(), op, ": found an invalid max index ", bad_value.load(),
              " (indices must lie in [0, H*W) with output_size ", H, "x", W, ")");
  return out;
}

// ---------------------------------------------------------------------------
// noisy_unpool_diff_philox: a simple version that defines the result and is
// the oracle of the CUDA kernel (tests/test_cuda.py): the noise block
// materialised with the generator of csrc/philox.h (the values of
// philox_normal_), then noisy_unpool_diff_cpu.
// ---------------------------------------------------------------------------

// eps[m * B + b] (shape (copies * B, C, Hp, Wp), contiguous): row b of noise
// block m, i.e. philox_normal_ with offset + b, iteration + m / samples,
// sample m % samples.
template <typename scalar_t>
void fill_noise_block(scalar_t* eps, int64_t copies, int64_t B, int64_t feat, uint32_t k0, uint32_t k1,
                      int64_t offset, int64_t iteration, int64_t samples) {
  at::parallel_for(0, copies * B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> v(static_cast<size_t>((feat + 3) / 4 * 4));
    for (int64_t n = begin; n < end; ++n) {
      block_row_normals(v.data(), nullptr, n, B, 1, feat, false, offset, iteration, samples, k0, k1);
      std::copy(v.begin(), v.begin() + feat, eps + n * feat);
    }
  });
}

at::Tensor noisy_unpool_diff_philox_cpu(const at::Tensor& y, double sigma, const at::Tensor& indices,
                                        const at::Tensor& h0, int64_t act, at::IntArrayRef output_size,
                                        int64_t key0, int64_t key1, int64_t offset, int64_t iteration,
                                        int64_t samples, int64_t copies) {
  constexpr const char* op = "dtp_fast::noisy_unpool_diff_philox";
  check_ldrl_4d(op, "y", "(B, C, Hp, Wp)", y);
  check_float_cpu(op, "y", y);
  TORCH_CHECK(copies >= 0, op, ": copies must be >= 0, got ", copies);
  TORCH_CHECK(samples >= 1 && samples < k2to32, op, ": samples must be in [1, 2^32), got ", samples);
  for (const int64_t v : {key0, key1, iteration}) check_u32(op, "key words and iteration", v);
  TORCH_CHECK(copies == 0 || iteration + (copies - 1) / samples < k2to32, op, ": iterations ", iteration, " .. ",
              iteration + (copies - 1) / samples, " must be in [0, 2^32)");
  const int64_t B = y.size(0), feat = y.size(1) * y.size(2) * y.size(3);
  TORCH_CHECK(offset >= 0 && offset + B <= k2to32, op, ": sample indices offset .. offset + B must be in [0, 2^32)");
  TORCH_CHECK(feat < (int64_t{1} << 34), op, ": samples of more than 2^34 elements");
  at::Tensor eps = at::empty({copies * B, y.size(1), y.size(2), y.size(3)}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dtp_fast_noisy_unpool_diff_philox_cpu", [&] {
    fill_noise_block(eps.mutable_data_ptr<scalar_t>(), copies, B, feat, static_cast<uint32_t>(key0),
                     static_cast<uint32_t>(key1), offset, iteration, samples);
  });
  // the output takes the memory format of eps: make it that of y
  eps = eps.contiguous(y.suggest_memory_format());
  return noisy_unpool_diff_cpu(y, eps, sigma, indices, h0, act, output_size);
}

// ---------------------------------------------------------------------------
// noisy_act_diff_philox: dh2 held at the block's output resolution,
//   out[m * B + b] = ACT(y[b] + sigma * eps[m * B + b]) - a0[b],
// the noise block of noisy_unpool_diff_philox drawn row by row into a buffer
// in cache, ELU / tanh through apply_act_aten (the bits of
// noisy_unpool_diff_philox with the identity as switches, without its
// unpooling machinery). Rows go in tiles of about kActChunk values.
// ---------------------------------------------------------------------------
template <typename scalar_t>
void noisy_act_rows(const scalar_t* y, const scalar_t* a0, scalar_t* out, int64_t B, int64_t C, int64_t HW,
                    bool channels_last, double sigma, int64_t act, uint32_t k0, uint32_t k1, int64_t offset,
                    int64_t iteration, int64_t samples, int64_t copies) {
  const int64_t feat = C * HW;
  const int64_t tile = std::max<int64_t>(1, kActChunk / std::max<int64_t>(1, feat));
  const scalar_t s = static_cast<scalar_t>(sigma);
  const bool aten_act = act == kActElu || act == kActTanh;
  at::parallel_for(0, copies * B, tile, [&](int64_t r0, int64_t r1) {
    std::vector<float> eps(static_cast<size_t>((feat + 3) / 4 * 4)), tmp(channels_last ? eps.size() : 0);
    std::vector<scalar_t> scratch(aten_act ? kActChunk : 0);
    std::vector<int64_t> where(aten_act ? kActChunk : 0);
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
      const int64_t t1 = std::min(r1, t0 + tile);
      for (int64_t r = t0; r < t1; ++r) {
        // the noise in y's memory order
        block_row_normals(eps.data(), tmp.data(), r, B, C, HW, channels_last, offset, iteration, samples, k0, k1);
        const scalar_t* yr = y + (r % B) * feat;
        scalar_t* o = out + r * feat;
        for (int64_t e = 0; e < feat; ++e) o[e] = yr[e] + s * static_cast<scalar_t>(eps[e]);
      }
      scalar_t* o = out + t0 * feat;
      const int64_t count = (t1 - t0) * feat;
      if (aten_act) {
        apply_act_aten(o, count, act, scratch.data(), where.data());
      } else if (act == kActRelu) {
        for (int64_t e = 0; e < count; ++e) o[e] = fused_act<scalar_t, kActRelu>(o[e]);
      }
      for (int64_t r = t0; r < t1; ++r) {
        const scalar_t* ar = a0 + (r % B) * feat;
        scalar_t* orow = out + r * feat;
        for (int64_t e = 0; e < feat; ++e) orow[e] -= ar[e];
      }
    }
  });
}

at::Tensor noisy_act_diff_philox_cpu(const at::Tensor& y, double sigma, const at::Tensor& a0, int64_t act,
                                     int64_t key0, int64_t key1, int64_t offset, int64_t iteration, int64_t samples,
                                     int64_t copies) {
  constexpr const char* op = "dtp_fast::noisy_act_diff_philox";
  check_act(op, act);
  check_ldrl_4d(op, "y", "(B, C, H, W)", y);
  check_float_cpu(op, "y", y);
  check_float_cpu(op, "a0", a0);
  check_same_dtype(op, "y", y, "a0", a0);
  TORCH_CHECK(a0.sizes() == y.sizes(), op, ": a0 = act(y) must have the shape of y ", y.sizes(), ", got ",
              a0.sizes());
  TORCH_CHECK(copies >= 0, op, ": copies must be >= 0, got ", copies);
  TORCH_CHECK(samples >= 1 && samples < k2to32, op, ": samples must be in [1, 2^32), got ", samples);
  for (const int64_t v : {key0, key1, iteration}) check_u32(op, "key words and iteration", v);
  TORCH_CHECK(copies == 0 || iteration + (copies - 1) / samples < k2to32, op, ": iterations ", iteration, " .. ",
              iteration + (copies - 1) / samples, " must be in [0, 2^32)");
  const int64_t B = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  TORCH_CHECK(offset >= 0 && offset + B <= k2to32, op, ": sample indices offset .. offset + B must be in [0, 2^32)");
  TORCH_CHECK(C * HW < (int64_t{1} << 34), op, ": samples of more than 2^34 elements");
  const auto fmt = y.suggest_memory_format();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  const at::Tensor yc = y.contiguous(fmt), ac = a0.contiguous(fmt);
  at::Tensor out = at::empty({copies * B, C, y.size(2), y.size(3)}, y.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dtp_fast_noisy_act_diff_philox_cpu", [&] {
    noisy_act_rows(yc.const_data_ptr<scalar_t>(), ac.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B,
                   C, HW, cl, sigma, act, static_cast<uint32_t>(key0), static_cast<uint32_t>(key1), offset, iteration,
                   samples, copies);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dtp_fast, CPU, m) {
  m.impl("pool_unpool_diff", &pool_unpool_diff_cpu);
  m.impl("noisy_unpool_diff", &noisy_unpool_diff_cpu);
  m.impl("noisy_unpool_diff_philox", &noisy_unpool_diff_philox_cpu);
  m.impl("noisy_act_diff_philox", &noisy_act_diff_philox_cpu);
}

}  // namespace dtp_fast
