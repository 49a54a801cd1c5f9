"""The L-DRL perturbations dh1 and dh2 as single Triton kernels (the ``dh`` family).

For a block ``F(x) = pool(ACT(op(x)))`` and its feedback ``h(y; I) = ACT(unpool(y, I))``
(ALGORITHM.md section 5), over M noisy copies of a batch of B (copy m of
sample b at row ``m * B + b``):

``pool_unpool_diff(z1, h0, ...)`` = dh1 = ``h(maxpool(ACT(z1))) - h0``
    Output position p of a plane holds ``ACT(ACT(z1[p]))`` when some pooling
    window containing p has its argmax at p, else 0, minus ``h0[p]``. Each output
    element finds the windows that contain it and recomputes their argmax
    (``ceil(k / s)^2`` windows: 1 for 2x2/2 pools, 4 for the LeNet 3/2/1 pool).
``noisy_unpool_diff(y, indices, h0, ...)`` = dh2 = ``h(y + sigma * eps; I0) - h0``
    Output position p holds ``ACT(y[q] + sigma * eps[q])`` for the last pooled
    position q in row-major order (of the windows containing p) whose switch is
    p, else 0, minus ``h0[p]``. ``eps`` is drawn in the kernel from the
    counter-based noise (:mod:`.noise`) and never stored, or read from a tensor.
    Without pooling (Linear blocks, convs without a pool) it is elementwise.

Tie rules are those of :mod:`dtp_fast.ops.pool`: in a window the first maximum of
the activated values in row-major order wins, a NaN always wins (the last NaN
if several), padding never wins, a window of -inf values reports its first
in-bounds position; among pooled positions sharing a switch the last one
wins. Switches are assumed to be pooling switches, i.e. inside their window
(what ``max_pool2d`` returns); the gather formulation needs no atomics and is
deterministic.

The activations use polynomial ``expm1`` on (-0.5, 0] and ``exp(x) - 1`` below
(no libdevice, so the interpreter runs the same code as the GPU): within a few
ulp of ATen's ELU / tanh, not bit-identical.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._common import ACT_CODES, pool_args
from .noise import check_counters, dense_layout, launch_options, normal_at, scalar, signed32

__all__ = ["ACT_CODES", "activate", "pool_unpool_diff", "noisy_unpool_diff"]

_NEG_INF = tl.constexpr(float("-inf"))
# 1 / k! for the expm1 series
_F2, _F3, _F4, _F5, _F6, _F7, _F8, _F9, _F10, _F11, _F12, _F13, _F14, _F15, _F16, _F17 = (
    tl.constexpr(1.0 / math.factorial(k)) for k in range(2, 18))


@triton.jit
def _expm1_nonpos(x):
    """expm1(x) for x <= 0 (NaN gives NaN): the Taylor series on (-0.5, 0] (degree 9 in
    float32, 17 in float64: below half an ulp of truncation error), exp(x) - 1 below.
    Horner's rule unrolled, term by term (deliberately: the rounding order is part of the result)."""
    if x.dtype == tl.float64:
        acc = x * _F17 + _F16
        acc = acc * x + _F15
        acc = acc * x + _F14
        acc = acc * x + _F13
        acc = acc * x + _F12
        acc = acc * x + _F11
        acc = acc * x + _F10
        acc = acc * x + _F9
        acc = acc * x + _F8
    else:
        acc = x * _F9 + _F8
    acc = acc * x + _F7
    acc = acc * x + _F6
    acc = acc * x + _F5
    acc = acc * x + _F4
    acc = acc * x + _F3
    acc = acc * x + _F2
    acc = acc * x + 1.0
    series = acc * x
    return tl.where(x > -0.5, series, tl.exp(x) - 1.0)


@triton.jit
def activate(x, ACT: tl.constexpr):
    """ACT(x) for the codes of :data:`ACT_CODES`."""
    out = x
    if ACT == 1:  # ELU, alpha 1
        out = tl.where(x > 0, x, _expm1_nonpos(tl.where(x > 0, 0.0, x)))
    if ACT == 2:  # ReLU, NaN propagates
        out = tl.where(x < 0, 0.0, x)
    if ACT == 3:  # tanh(|x|) = -t / (t + 2), t = expm1(-2|x|)
        t = _expm1_nonpos(-2.0 * tl.abs(x))
        th = -t / (t + 2.0)
        out = tl.where(x < 0, -th, th)
    return out


@triton.jit
def _decode(i, C, H, W, CL: tl.constexpr):
    """(n, c, h, w) of physical index i of a dense (N, C, H, W) tensor, NCHW or channels_last."""
    if CL:
        c = i % C
        t = i // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = i % W
        t = i // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C
    return n, c, h, w


@triton.jit
def _dh1_kernel(OUT, Z, H0, total, B, C, H, W, Hp, Wp,
                zs0, zs1, zs2, zs3, hs0, hs1, hs2, hs3,
                KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                PH: tl.constexpr, PW: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                ACT: tl.constexpr, CL: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, oh, ow = _decode(i, C, H, W, CL)
    b = n % B
    zbase = Z + n * zs0 + c * zs1
    p = oh * W + ow
    hit = i < 0
    ph_hi = (oh + PH) // SH
    pw_hi = (ow + PW) // SW
    for th in tl.static_range(NH):
        ph = ph_hi - (NH - 1) + th
        h_start = ph * SH - PH
        for tw in tl.static_range(NW):
            pw = pw_hi - (NW - 1) + tw
            w_start = pw * SW - PW
            valid = (mask & (ph >= 0) & (ph < Hp) & (pw >= 0) & (pw < Wp)
                     & (oh >= h_start) & (oh < h_start + KH) & (ow >= w_start) & (ow < w_start + KW))
            best = tl.full([BLOCK], _NEG_INF, Z.dtype.element_ty)
            best_idx = tl.maximum(h_start, 0) * W + tl.maximum(w_start, 0)
            for dh in tl.static_range(KH):
                ih = h_start + dh
                for dw in tl.static_range(KW):
                    iw = w_start + dw
                    inb = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                    v = activate(tl.load(zbase + ih * zs2 + iw * zs3, mask=inb, other=0.0), ACT)
                    upd = inb & ((v > best) | (v != v))
                    best = tl.where(upd, v, best)
                    best_idx = tl.where(upd, ih * W + iw, best_idx)
            hit = hit | (valid & (best_idx == p))
    z = tl.load(zbase + oh * zs2 + ow * zs3, mask=mask, other=0.0)
    h0 = tl.load(H0 + b * hs0 + c * hs1 + oh * hs2 + ow * hs3, mask=mask, other=0.0)
    val = tl.where(hit, activate(activate(z, ACT), ACT), 0.0)
    tl.store(OUT + i, val - h0, mask=mask)


@triton.jit(do_not_specialize=["it0", "offset", "k0s", "k1s"])
def _dh2_kernel(OUT, Y, I, H0, EPS, P, total, B, C, H, W, Hp, Wp,
                ys0, ys1, ys2, ys3, is0, is1, is2, is3, hs0, hs1, hs2, hs3, es0, es1, es2, es3,
                it0, S, offset, k0s, k1s,
                KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                PH: tl.constexpr, PW: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr,
                POOL: tl.constexpr, ACT: tl.constexpr, CL: tl.constexpr, HAS_EPS: tl.constexpr,
                BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    n, c, oh, ow = _decode(i, C, H, W, CL)
    b = n % B
    m = n // B
    if POOL:
        p = oh * W + ow
        found = i < 0
        qh = tl.zeros_like(oh)
        qw = tl.zeros_like(ow)
        ph_hi = (oh + PH) // SH
        pw_hi = (ow + PW) // SW
        # the candidate windows of p, enumerated as in _dh1_kernel (each kernel inlines the loop: the
        # bodies differ); row-major: the last hit wins
        for th in tl.static_range(NH):
            ph = ph_hi - (NH - 1) + th
            h_start = ph * SH - PH
            for tw in tl.static_range(NW):
                pw = pw_hi - (NW - 1) + tw
                w_start = pw * SW - PW
                valid = (mask & (ph >= 0) & (ph < Hp) & (pw >= 0) & (pw < Wp)
                         & (oh >= h_start) & (oh < h_start + KH) & (ow >= w_start) & (ow < w_start + KW))
                idx = tl.load(I + b * is0 + c * is1 + ph * is2 + pw * is3, mask=valid, other=-1)
                hit = valid & (idx == p)
                found = found | hit
                qh = tl.where(hit, ph, qh)
                qw = tl.where(hit, pw, qw)
    else:
        found = mask
        qh = oh
        qw = ow
    y = tl.load(Y + b * ys0 + c * ys1 + qh * ys2 + qw * ys3, mask=found, other=0.0)
    if HAS_EPS:
        eps = tl.load(EPS + n * es0 + c * es1 + qh * es2 + qw * es3, mask=found, other=0.0)
    else:
        k0 = k0s.to(tl.uint32, bitcast=True)
        k1 = k1s.to(tl.uint32, bitcast=True)
        e = c * (Hp * Wp) + qh * Wp + qw
        eps = normal_at(e, offset + b, it0 + m // S, m % S, k0, k1).to(Y.dtype.element_ty)
    sigma = tl.load(P)
    val = tl.where(found, activate(y + eps * sigma, ACT), 0.0)
    h0 = tl.load(H0 + b * hs0 + c * hs1 + oh * hs2 + ow * hs3, mask=mask, other=0.0)
    tl.store(OUT + i, val - h0, mask=mask)


def _as4d(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() == 4 else t.reshape(t.shape[0], -1, 1, 1) if t.dim() == 2 else t


def _pool_geometry(pool, H: int, W: int):
    (kh, kw), (sh, sw), (ph, pw) = pool
    hp, wp = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, NH=-(-kh // sh), NW=-(-kw // sw)), hp, wp


def _empty(shape, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def pool_unpool_diff(z1: torch.Tensor, h0: torch.Tensor, act: str, kernel_size, stride=None, padding=0, *,
                     out: torch.Tensor | None = None, block: int = 1024) -> torch.Tensor:
    """dh1 (see the module doc): the Triton twin of :func:`dtp_fast.ops.dh.pool_unpool_diff`.

    z1: (M*B, C, H, W) pre-activations of the noisy copies, any strides; h0: (B, C, H, W),
    same dtype, any strides. Returns (M*B, C, H, W) in z1's memory format (channels_last
    or contiguous), or writes ``out`` (dense, either format).
    """
    if z1.dim() != 4 or h0.dim() != 4 or tuple(h0.shape[1:]) != tuple(z1.shape[1:]) or z1.dtype != h0.dtype:
        raise ValueError(f"pool_unpool_diff: z1 (M*B, C, H, W) and h0 (B, C, H, W) of one dtype expected, got "
                         f"{tuple(z1.shape)} {z1.dtype} and {tuple(h0.shape)} {h0.dtype}")
    N, C, H, W = z1.shape
    B = h0.shape[0]
    if B == 0 or N % B:
        raise ValueError(f"pool_unpool_diff: the {N} rows of z1 are not a multiple of the batch {B} of h0")
    if out is None:
        out = _empty(z1.shape, z1, z1.dim() == 4 and not z1.is_contiguous()
                     and z1.is_contiguous(memory_format=torch.channels_last))
    cl = dense_layout(out, "pool_unpool_diff output")
    geo, hp, wp = _pool_geometry(pool_args(kernel_size, stride, padding), H, W)
    total = out.numel()
    if total:
        _dh1_kernel[(triton.cdiv(total, block),)](
            out, z1, h0, total, B, C, H, W, hp, wp, *z1.stride(), *h0.stride(),
            ACT=ACT_CODES[act], CL=cl, BLOCK=block, **geo)
    return out


def noisy_unpool_diff(y: torch.Tensor, indices: torch.Tensor | None, h0: torch.Tensor, act: str, pool,
                      sigma, copies: int, *, eps: torch.Tensor | None = None, noise=None,
                      out: torch.Tensor | None = None, channels_last: bool = False,
                      block: int = 1024) -> torch.Tensor:
    """dh2 (see the module doc) for ``copies`` noisy copies of the batch.

    Args:
        y: (B, C, Hp, Wp) pooled outputs (or (B, F) / unpooled (B, C, H, W) when ``pool`` is
            None); any strides.
        indices: the switches I0 of y (int64, like y), or None without pooling.
        h0: ``h(y; I0)``: (B, C, H, W) (or (B, F)); same dtype, any strides.
        act: "identity", "elu", "relu" or "tanh".
        pool: ((kh, kw), (sh, sw), (ph, pw)) or None.
        sigma: the noise scale, a float or a one-element tensor of y's dtype.
        copies: M, the noisy copies (iterations x noise samples).
        eps: (M*B, *y.shape[1:]) normals; or None and ``noise`` =
            ``(key, offset, iteration, samples)``: copy m draws the counter-based normals of
            iteration ``iteration + m // samples``, sample ``m % samples``, data rows from
            ``offset``, under ``key`` (:meth:`dtp_fast.noise.CounterNoise.key`).
        out: a dense (M*B, *h0.shape[1:]) tensor to write, else one is made, channels_last if
            ``channels_last`` (4-D only).

    Returns dh2, (M*B, *h0.shape[1:]).
    """
    if (eps is None) == (noise is None):
        raise ValueError("noisy_unpool_diff: give exactly one of eps and noise")
    B = y.shape[0]
    if h0.shape[0] != B or y.dtype != h0.dtype:
        raise ValueError(f"noisy_unpool_diff: y {tuple(y.shape)} {y.dtype} and h0 {tuple(h0.shape)} {h0.dtype} "
                         f"must share the batch and dtype")
    if out is None:
        out = _empty((copies * B, *h0.shape[1:]), y, channels_last)
    if tuple(out.shape) != (copies * B, *h0.shape[1:]):
        raise ValueError(f"noisy_unpool_diff: out must be {(copies * B, *h0.shape[1:])}, got {tuple(out.shape)}")
    cl = dense_layout(out, "noisy_unpool_diff output")
    y4, h4, o4 = _as4d(y), _as4d(h0), _as4d(out)
    _, C, H, W = o4.shape
    if pool is not None:
        if indices is None or indices.shape != y.shape:
            raise ValueError("noisy_unpool_diff: pooling needs the switches, shaped like y")
        geo, hp, wp = _pool_geometry(pool, H, W)
        if (hp, wp) != tuple(y4.shape[2:]):
            raise ValueError(f"noisy_unpool_diff: y's planes {tuple(y4.shape[2:])} do not match the pool "
                             f"{pool} of ({H}, {W}) planes")
        i4 = indices
    else:
        if tuple(y4.shape) != tuple(h4.shape):
            raise ValueError(f"noisy_unpool_diff: without pooling y and h0 must have one shape, got "
                             f"{tuple(y.shape)} and {tuple(h0.shape)}")
        geo, hp, wp = dict(KH=1, KW=1, SH=1, SW=1, PH=0, PW=0, NH=1, NW=1), H, W
        i4 = y4  # unused
    if eps is not None:
        if eps.shape[0] != copies * B or tuple(eps.shape[1:]) != tuple(y.shape[1:]) or eps.dtype != y.dtype:
            raise ValueError(f"noisy_unpool_diff: eps must be {(copies * B, *y.shape[1:])} of {y.dtype}, got "
                             f"{tuple(eps.shape)} of {eps.dtype}")
        e4 = _as4d(eps)
        key, offset, it0, samples = (0, 0), 0, 0, 1
    else:
        e4 = y4  # unused
        key, offset, it0, samples = noise
        check_counters(B, offset, it0, -(-copies // samples), samples)
    p = sigma if isinstance(sigma, torch.Tensor) else scalar(float(sigma), y)
    total = out.numel()
    if total:
        _dh2_kernel[(triton.cdiv(total, block),)](
            out, y4, i4, h4, e4, p, total, B, C, H, W, hp, wp,
            *y4.stride(), *i4.stride(), *h4.stride(), *e4.stride(),
            it0, samples, offset, signed32(key[0]), signed32(key[1]),
            POOL=pool is not None, ACT=ACT_CODES[act], CL=cl, HAS_EPS=eps is not None, BLOCK=block,
            **geo, **launch_options())
    return out
