"""The chain of a pooled conv feedback layer from dh2 at pooled resolution, as Triton kernels (the ``sparse``
family; the CPU's kernels of the family are in ``csrc/cpu/sparse_cpu.cpp``).

Behind a max-pool whose windows tile the plane (kernel == stride, no padding: ``MaxPool2d(2, 2)``), dh2 =
``unpool(d2, I0)`` holds one value per window, at the window's clean switch (fixed for a batch's whole
feedback phase). The chain's transposed convolution ``dr_y = V * dh2`` and weight gradient
``wgrad(dh2, dr_y)`` of a stride-1 feedback convolution are implicit matrix products whose dh2 operand is
expanded from d2 and the switches while it is loaded: no unpooled tensor is written or read.

``pooled_conv_t(d2, switches, weight, pool, input_size, padding, dilation, output_size)``
    dr_y (N, Cx, Hx, Wx) in channels_last: rows = the output pixels, columns = Cx, the reduction over the
    weight's (c, kh, kw).
``pooled_wgrad(d2, switches, dr_y, pool, input_size, kernel_size, padding, dilation)``
    (C, Cx, KH, KW) in channels_last strides (the feedback weight's layout): rows = (c, kh, kw), columns =
    Cx, the reduction over the pixels in a fixed number of parts, each written to its own slice and summed
    afterwards in a fixed order (no atomics: the same bits on every run).

``d2`` is (N, C, Hp, Wp); ``switches`` (Ns, C, Hp, Wp) int64 flat indices into the ``input_size`` plane,
from ``max_pool2d``, with Ns dividing N (row n of d2 uses the switches of row n % Ns: noise samples of one
batch share them). The products run in TF32 when ``tf32`` (float32 only), else in IEEE float32 or float64.
:func:`dtp_fast.ops.pooled_chain_ref` (unpool, then the dense ops) defines the results.

Never run on a GPU so far: checked in Triton's interpreter against that reference
(``tests/ops/test_sparse.py``) and compiled for sm_90 by :mod:`.compile_check`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import pair

__all__ = ["pooled_conv_t", "pooled_wgrad"]


@triton.jit
def _unpooled(D2, SW, n, c, ih, iw, valid, NS, C, H, W, Hp, Wp, SH: tl.constexpr, SWW: tl.constexpr):
    """dh2 = unpool(d2, switches) at (n, c, ih, iw) (broadcast index tensors, int64): the value of the
    window holding pixel (ih, iw) where that window's switch is the pixel, else 0."""
    ok = valid & (ih >= 0) & (iw >= 0) & (ih < H) & (iw < W)
    wh = tl.where(ok, ih, 0) // SH
    ww = tl.where(ok, iw, 0) // SWW
    ok = ok & (wh < Hp) & (ww < Wp)
    plane = (c * Hp + wh) * Wp + ww
    s = tl.load(SW + (n % NS) * C * Hp * Wp + plane, mask=ok, other=-1)
    v = tl.load(D2 + n * C * Hp * Wp + plane, mask=ok, other=0.0)
    return tl.where(ok & (s == ih * W + iw), v, 0.0)


@triton.jit
def _pixel(m, HX, WX):
    """(n, oh, ow) of flat output pixels m."""
    t = m // WX
    return t // HX, t % HX, m % WX


@triton.jit
def _tap(k, KH: tl.constexpr, KW: tl.constexpr):
    """(c, kh, kw) of flat weight indices k over (C, KH, KW)."""
    tap = k % (KH * KW)
    return k // (KH * KW), tap // KW, tap % KW


@triton.jit
def _conv_t_kernel(OUT, D2, SW, V, M, NS, C, CX, H, W, Hp, Wp, HX, WX, vs0, vs1, vs2, vs3,
                   KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                   DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr, SWW: tl.constexpr,
                   PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """OUT[m, j] (m = (n, oh, ow) of dr_y in channels_last) = sum over k = (c, kh, kw) of
    dh2[n, c, oh + PH - kh DH, ow + PW - kw DW] * V[c, j, kh, kw]."""
    m = tl.program_id(0).to(tl.int64) * BM + tl.arange(0, BM)
    j = tl.program_id(1) * BN + tl.arange(0, BN)
    n, oh, ow = _pixel(m, HX, WX)
    mvalid = m < M
    jvalid = j < CX
    K = C * (KH * KW)
    acc = tl.zeros([BM, BN], dtype=OUT.dtype.element_ty)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK).to(tl.int64)
        kvalid = k < K
        c, kh, kw = _tap(k, KH, KW)
        a = _unpooled(D2, SW, n[:, None], c[None, :], oh[:, None] + PH - kh[None, :] * DH,
                      ow[:, None] + PW - kw[None, :] * DW, mvalid[:, None] & kvalid[None, :],
                      NS, C, H, W, Hp, Wp, SH, SWW)
        b = tl.load(V + c[:, None] * vs0 + j[None, :] * vs1 + kh[:, None] * vs2 + kw[:, None] * vs3,
                    mask=kvalid[:, None] & jvalid[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PREC)
    tl.store(OUT + m[:, None] * CX + j[None, :], acc, mask=mvalid[:, None] & jvalid[None, :])


@triton.jit
def _wgrad_kernel(PART, D2, SW, DR, P, per_part, NS, C, CX, H, W, Hp, Wp, HX, WX, ds0, ds1, ds2, ds3,
                  KH: tl.constexpr, KW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                  DH: tl.constexpr, DW: tl.constexpr, SH: tl.constexpr, SWW: tl.constexpr,
                  PREC: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr):
    """PART[s, r, j] (r = (c, kh, kw)) = sum over the pixels p = (n, oh, ow) of part s of
    dh2[n, c, oh + PH - kh DH, ow + PW - kw DW] * dr_y[n, j, oh, ow]."""
    r = tl.program_id(0).to(tl.int64) * BR + tl.arange(0, BR)
    j = tl.program_id(1) * BN + tl.arange(0, BN)
    part = tl.program_id(2)
    R = C * (KH * KW)
    rvalid = r < R
    jvalid = j < CX
    c, kh, kw = _tap(r, KH, KW)
    p_end = tl.minimum(part.to(tl.int64) * per_part + per_part, P)
    acc = tl.zeros([BR, BN], dtype=PART.dtype.element_ty)
    for p0 in range(part * per_part, p_end, BP):
        p = p0 + tl.arange(0, BP).to(tl.int64)
        pvalid = p < p_end
        n, oh, ow = _pixel(p, HX, WX)
        a = _unpooled(D2, SW, n[None, :], c[:, None], oh[None, :] + PH - kh[:, None] * DH,
                      ow[None, :] + PW - kw[:, None] * DW, rvalid[:, None] & pvalid[None, :],
                      NS, C, H, W, Hp, Wp, SH, SWW)
        b = tl.load(DR + n[:, None] * ds0 + j[None, :] * ds1 + oh[:, None] * ds2 + ow[:, None] * ds3,
                    mask=pvalid[:, None] & jvalid[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PREC)
    tl.store(PART + (part * R + r[:, None]) * CX + j[None, :], acc, mask=rvalid[:, None] & jvalid[None, :])


def _tile(d: int, most: int) -> int:
    return max(16, min(most, triton.next_power_of_2(d)))


def _check(op, d2, switches, C, pool, input_size):
    """The pool's stride (its kernel), the input plane and Ns, after checking the operands."""
    if d2.dim() != 4 or d2.shape[1] != C or d2.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{op}: d2 must be a float32/float64 (N, {C}, Hp, Wp) tensor, got {d2.dtype} "
                         f"{tuple(d2.shape)}")
    if (switches.dtype != torch.int64 or switches.dim() != 4 or switches.shape[1:] != d2.shape[1:]
            or d2.shape[0] % max(1, switches.shape[0]) or switches.device != d2.device):
        raise ValueError(f"{op}: switches must be int64 (Ns, {C}, {d2.shape[2]}, {d2.shape[3]}) on {d2.device} "
                         f"with Ns dividing {d2.shape[0]}, got {switches.dtype} {tuple(switches.shape)} on "
                         f"{switches.device}")
    (sh, sw), (H, W) = pair(pool, "pool"), pair(input_size, "input_size")
    if H // sh < d2.shape[2] or W // sw < d2.shape[3]:
        raise ValueError(f"{op}: {d2.shape[2]}x{d2.shape[3]} windows of {sh}x{sw} do not fit a {H}x{W} plane")
    return sh, sw, H, W, switches.shape[0]


def pooled_conv_t(d2: torch.Tensor, switches: torch.Tensor, weight: torch.Tensor, pool, input_size, padding,
                  dilation, output_size, *, tf32: bool = False) -> torch.Tensor:
    """``conv_transpose2d(unpool(d2, switches), weight, stride=1, padding, dilation)`` with the output size
    ``output_size`` (see the module doc); (N, Cx, Hx, Wx), channels_last."""
    C, CX, KH, KW = weight.shape
    sh, sw, H, W, ns = _check("pooled_conv_t", d2, switches, C, pool, input_size)
    (ph, pw), (dh, dw), (HX, WX) = pair(padding, "padding"), pair(dilation, "dilation"), pair(output_size, "output_size")
    if weight.dtype != d2.dtype or weight.device != d2.device:
        raise ValueError(f"pooled_conv_t: weight must be {d2.dtype} on {d2.device}, got {weight.dtype} on "
                         f"{weight.device}")
    N = d2.shape[0]
    out = torch.empty((N, CX, HX, WX), dtype=d2.dtype, device=d2.device, memory_format=torch.channels_last)
    M = N * HX * WX
    if M == 0 or CX == 0:
        return out
    wide = d2.dtype == torch.float32
    bm, bk = (64, 32) if wide else (32, 16)
    bn = _tile(CX, 64 if wide else 32)
    grid = (triton.cdiv(M, bm), triton.cdiv(CX, bn))
    _conv_t_kernel[grid](out, d2.contiguous(), switches.contiguous(), weight, M, ns, C, CX, H, W, d2.shape[2],
                         d2.shape[3], HX, WX, *weight.stride(), KH=KH, KW=KW, PH=ph, PW=pw, DH=dh, DW=dw, SH=sh,
                         SWW=sw, PREC="tf32" if tf32 and wide else "ieee", BM=bm, BN=bn, BK=bk)
    return out


def pooled_wgrad(d2: torch.Tensor, switches: torch.Tensor, dr_y: torch.Tensor, pool, input_size, kernel_size,
                 padding, dilation, *, tf32: bool = False, parts: int | None = None) -> torch.Tensor:
    """``wgrad(unpool(d2, switches), dr_y)``: the weight gradient of ``conv_transpose2d(dh2, V, stride=1,
    padding, dilation)`` given the gradient ``dr_y`` (N, Cx, Hx, Wx) of its output (see the module doc);
    (C, Cx, KH, KW) in channels_last strides. ``parts``: how many slices the pixels are summed in (None:
    enough to fill a GPU; a fixed number gives the same bits on every run)."""
    C = d2.shape[1] if d2.dim() == 4 else "C"
    sh, sw, H, W, ns = _check("pooled_wgrad", d2, switches, C, pool, input_size)
    (KH, KW), (ph, pw), (dh, dw) = (pair(kernel_size, "kernel_size"), pair(padding, "padding"),
                                    pair(dilation, "dilation"))
    N, CX, HX, WX = dr_y.shape
    if N != d2.shape[0] or dr_y.dtype != d2.dtype or dr_y.device != d2.device:
        raise ValueError(f"pooled_wgrad: dr_y must be ({d2.shape[0]}, Cx, Hx, Wx) of {d2.dtype} on {d2.device}, "
                         f"got {tuple(dr_y.shape)} of {dr_y.dtype} on {dr_y.device}")
    R, P = C * KH * KW, N * HX * WX
    wide = d2.dtype == torch.float32
    br, bp = (64, 32) if wide else (32, 16)
    bn = _tile(CX, 64 if wide else 32)
    tiles = triton.cdiv(R, br) * triton.cdiv(CX, bn)
    if parts is None:  # about 4 programs per SM of a large GPU, each over at least 8 blocks of pixels
        parts = max(1, min(triton.cdiv(512, tiles), triton.cdiv(P, 8 * bp)))
    per_part = triton.cdiv(max(P, 1), parts)
    part = torch.zeros((parts, R, CX), dtype=d2.dtype, device=d2.device)
    if R and CX and P:
        _wgrad_kernel[(triton.cdiv(R, br), triton.cdiv(CX, bn), parts)](
            part, d2.contiguous(), switches.contiguous(), dr_y, P, per_part, ns, C, CX, H, W, d2.shape[2],
            d2.shape[3], HX, WX, *dr_y.stride(), KH=KH, KW=KW, PH=ph, PW=pw, DH=dh, DW=dw, SH=sh, SWW=sw,
            PREC="tf32" if tf32 and wide else "ieee", BR=br, BN=bn, BP=bp)
    return part.sum(0).view(C, KH, KW, CX).permute(0, 3, 1, 2)
