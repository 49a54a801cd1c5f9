"""Counter-based Gaussian noise inside Triton kernels (the ``noise`` family).

The same generator as :mod:`dtp_fast.ops.noise` (and ``csrc/philox.h``): element
``e`` of data row ``r`` in noise block ``m`` is lane ``e % 4`` of the four
normals that Philox4x32-10 and Box-Muller (polynomial log, sin, cos in
float32) make from the counter ``(e // 4, offset + r, k0 + m // S, m % S)``
under the key ``CounterNoise.key(step, layer, which)``.

Every float32 operation is the mirror's, in the same order: the division is
``tl.div_rn`` and the square root ``tl.sqrt_rn`` (both correctly rounded; plain
``/`` and ``tl.sqrt`` are approximate on GPUs), and the kernels that draw
noise are launched with ``enable_fp_fusion=False`` so that no multiply-add is
contracted into an FMA. The normals are therefore bit-identical to
``dtp_fast.ops.noise.philox_normal`` (tests/ops/test_noise.py checks this under the
interpreter). Each element computes its own Philox block (a quarter of it is
used); that costs arithmetic, not memory traffic.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import noise as _mirror

__all__ = ["normal_at", "noise_fill_", "philox_normal", "signed32", "launch_options", "dense_layout", "scalar",
           "check_counters"]

# Philox constants
_M0 = tl.constexpr(0xD2511F53)
_M1 = tl.constexpr(0xCD9E8D57)
_W0 = tl.constexpr(0x9E3779B9)
_W1 = tl.constexpr(0xBB67AE85)
# the float32 constants of the mirror (dtp_fast/ops/noise.py), as Python floats that are exact float32 values
_LN2 = tl.constexpr(_mirror._LN2)
_L3, _L5, _L7, _L9, _L11 = (tl.constexpr(v) for v in _mirror._L)
_S3, _S5, _S7, _S9, _S11, _S13 = (tl.constexpr(v) for v in _mirror._S)
_C2, _C4, _C6, _C8, _C10, _C12, _C14 = (tl.constexpr(v) for v in _mirror._C)
_QUARTER_STEP = tl.constexpr(_mirror._QUARTER_STEP)
_SQRT2_MANTISSA = tl.constexpr(_mirror._SQRT2_MANTISSA)


def signed32(v: int) -> int:
    """A 32-bit word as the int32 with the same bits (kernels take it as int32 and
    bitcast it back to uint32, so the argument type never changes with the value)."""
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def launch_options() -> dict:
    """Launch options of kernels that draw noise: no FMA contraction."""
    return {"enable_fp_fusion": False}


@triton.jit
def _philox10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of uint32 counter words under the uint32 key (k0, k1)."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _radius(a):
    """sqrt(-2 ln u) for u = ((a >> 8) + 1) / 2^24 (the mirror's ``_radius``)."""
    v = ((a >> 8) + 1).to(tl.int32).to(tl.float32)  # exact, in [1, 2^24]
    bits = v.to(tl.int32, bitcast=True)
    mant = bits & 0x007FFFFF
    big = mant > _SQRT2_MANTISSA
    f = (mant | tl.where(big, 0x3F000000, 0x3F800000)).to(tl.float32, bitcast=True)
    e = (bits >> 23) - 127 + big.to(tl.int32)
    t = f - 1.0
    s = tl.div_rn(t, t + 2.0)
    s2 = s * s
    # the polynomials unrolled term by term, as the mirror's _horner (deliberately: the same roundings)
    acc = s2 * _L11
    acc = s2 * (acc + _L9)
    acc = s2 * (acc + _L7)
    acc = s2 * (acc + _L5)
    acc = s2 * (acc + _L3)
    poly = acc + 1.0
    ln_u = (e - 24).to(tl.float32) * _LN2 + (s + s) * poly
    return tl.sqrt_rn(ln_u * -2.0)


@triton.jit
def _cos_sin(b):
    """cos and sin of the angle of b, a fraction of a turn (the mirror's ``_cos_sin``)."""
    q = b >> 30
    phi = (((b >> 6) & 0x00FFFFFF).to(tl.int32).to(tl.float32) + 0.5) * _QUARTER_STEP
    p2 = phi * phi
    acc = p2 * _S13
    acc = p2 * (acc + _S11)
    acc = p2 * (acc + _S9)
    acc = p2 * (acc + _S7)
    acc = p2 * (acc + _S5)
    acc = p2 * (acc + _S3)
    sn = phi * (acc + 1.0)
    acc = p2 * _C14
    acc = p2 * (acc + _C12)
    acc = p2 * (acc + _C10)
    acc = p2 * (acc + _C8)
    acc = p2 * (acc + _C6)
    acc = p2 * (acc + _C4)
    acc = p2 * (acc + _C2)
    cs = acc + 1.0
    odd = (q & 1) != 0
    neg = (q & 2) != 0
    c1 = tl.where(odd, -sn, cs)
    s1 = tl.where(odd, cs, sn)
    return tl.where(neg, -c1, c1), tl.where(neg, -s1, s1)


@triton.jit
def normal_at(e, row, iteration, sample, k0, k1):
    """The float32 normal of element ``e`` (int tensor, index within a row in the noise's
    logical order) for counter row ``row``, ``iteration`` and noise ``sample`` (int tensors or
    scalars, taken modulo 2^32) under the uint32 key (k0, k1)."""
    a, b, c, d = _philox10((e // 4).to(tl.uint32), row.to(tl.uint32), iteration.to(tl.uint32),
                           sample.to(tl.uint32), k0, k1)
    lane = e % 4
    first = lane < 2
    r = _radius(tl.where(first, a, c))
    cs, sn = _cos_sin(tl.where(first, b, d))
    return tl.where((lane % 2) == 0, r * cs, r * sn)


@triton.jit(do_not_specialize=["it0", "offset", "k0s", "k1s"])
def _noise_kernel(OUT, P, total, F, B, C, HW, it0, S, offset, k0s, k1s,
                  CL: tl.constexpr, BLOCK: tl.constexpr):
    """OUT[m * B + b, f] = sigma * eps (cast to OUT's dtype before the product) for a dense
    (N, F) view of OUT; with CL, rows are channels_last (C, H, W) images and physical
    position f holds element (f % C) * HW + f // C."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    r = i // F
    f = i % F
    if CL:
        e = (f % C) * HW + f // C
    else:
        e = f
    b = r % B
    m = r // B
    k0 = k0s.to(tl.uint32, bitcast=True)
    k1 = k1s.to(tl.uint32, bitcast=True)
    eps = normal_at(e, offset + b, it0 + m // S, m % S, k0, k1)
    sigma = tl.load(P)
    tl.store(OUT + i, eps.to(OUT.dtype.element_ty) * sigma, mask=mask)


def dense_layout(t: torch.Tensor, name: str = "tensor") -> bool:
    """True for a channels_last 4-D tensor, False for a contiguous one; raises otherwise."""
    if t.is_contiguous():
        return False
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return True
    raise ValueError(f"{name} must be contiguous or channels_last, got strides {t.stride()} for shape "
                     f"{tuple(t.shape)}")


def check_counters(rows: int, offset: int, it0: int, iterations: int, samples: int) -> None:
    """The counter words must stay below 2^32 (as :class:`dtp_fast.noise.CounterNoise` checks)."""
    if not (0 <= offset and offset + rows <= 2**32 and 0 <= it0 and it0 + iterations <= 2**32
            and 1 <= samples <= 2**32):
        raise ValueError(f"noise counters out of range: rows {offset}..{offset + rows - 1}, iterations "
                         f"{it0}..{it0 + iterations - 1}, {samples} samples must lie in [0, 2^32)")


def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A one-element tensor of ``like``'s dtype and device: kernels read scalars such as sigma
    from memory, so that float64 kernels get float64 values (Triton passes Python floats as
    float32) and CUDA graphs can capture the launch."""
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def noise_fill_(out: torch.Tensor, key, sigma, *, batch: int, offset: int = 0, iteration: int = 0,
                samples: int = 1, block: int = 1024) -> torch.Tensor:
    """Fill ``out`` ((n * samples * batch, ...), contiguous or channels_last) with ``sigma * eps``,
    eps the counter-based normals of noise block m = row // batch (iteration
    ``iteration + m // samples``, sample ``m % samples``), data row ``offset + row % batch``.

    ``sigma``: a float or a one-element tensor of out's dtype (see :func:`scalar`).
    """
    if out.shape[0] % batch:
        raise ValueError(f"noise_fill_: {out.shape[0]} rows are not a multiple of the batch {batch}")
    cl = dense_layout(out, "noise_fill_ output")
    n_blocks = out.shape[0] // batch
    check_counters(batch, offset, iteration, -(-n_blocks // samples), samples)
    total = out.numel()
    if total == 0:
        return out
    F = total // out.shape[0]
    C, HW = (out.shape[1], out.shape[2] * out.shape[3]) if cl else (1, 1)
    p = sigma if isinstance(sigma, torch.Tensor) else scalar(float(sigma), out)
    grid = (triton.cdiv(total, block),)
    _noise_kernel[grid](out, p, total, F, batch, C, HW, iteration, samples, offset, signed32(key[0]),
                        signed32(key[1]), CL=cl, BLOCK=block, **launch_options())
    return out


def philox_normal(shape, key, offset: int, iteration: int, sample: int, device="cuda") -> torch.Tensor:
    """Triton twin of :func:`dtp_fast.ops.noise.philox_normal` (float32, same bits)."""
    shape = tuple(shape)
    out = torch.empty(shape, dtype=torch.float32, device=device)
    if math.prod(shape) == 0:
        return out
    # one noise block with the requested iteration and sample: iteration0 = iteration, samples = 1
    if sample != 0:
        # noise block m has sample m % samples: ask for block `sample` of `sample + 1` samples
        full = torch.empty((sample + 1) * shape[0], *shape[1:], dtype=torch.float32, device=device)
        noise_fill_(full, key, 1.0, batch=shape[0], offset=offset, iteration=iteration, samples=sample + 1)
        return full[sample * shape[0]:].reshape(shape)
    return noise_fill_(out, key, 1.0, batch=shape[0], offset=offset, iteration=iteration, samples=1)
