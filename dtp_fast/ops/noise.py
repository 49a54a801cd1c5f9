"""The ``noise`` family: counter-based standard normals (``philox_normal_``) and their PyTorch mirror, and
the noisy inputs of L-DRL drawn from the same stream inside the kernel that writes them
(``philox_noisy_input``: dx = sigma * eps and x + dx, CPU).

The generator (csrc/philox.h, mirrored here op for op in PyTorch): element
e of row r is lane e % 4 of the block of four normals made from the Philox
4x32-10 counter ``(e // 4, offset + r, iteration, sample)`` under a 64-bit
key (two 32-bit words), by Box-Muller with polynomial logarithm, sine and
cosine in float32. The compiled kernels (CPU, CUDA) and the mirror
:func:`philox_normal` (the reference) give the same bits; other dtypes are
the float32 values cast. :mod:`dtp_fast.noise` keys the stream by
``(seed, step, layer, which)``; the Triton twin is :mod:`dtp_fast.ops.triton.noise`.
"""
from __future__ import annotations

import math
import struct

import torch

from ._common import COMPILED_DTYPES, require_compiled

__all__ = ["philox4x32", "philox_normal", "philox_normal_", "philox_noisy_input", "philox_noisy_input_ref"]

_MASK = 0xFFFFFFFF

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * m for 32-bit a (int64 tensor) and m, without overflow."""
    p_hi, p_lo = a * (m >> 16), a * (m & 0xFFFF)          # each < 2^48
    return (p_hi + (p_lo >> 16)) >> 16, (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of the counter words (int64 tensors holding 32-bit values) under key (k0, k1)."""
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & _MASK, (k1 + _W1) & _MASK
    return c0, c1, c2, c3


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


# The float32 constants of csrc/philox.h.
_LN2 = _f32(math.log(2))
_L = [_f32(1 / k) for k in (3, 5, 7, 9, 11)]
_S = [_f32((-1) ** (k // 2) / math.factorial(k)) for k in (3, 5, 7, 9, 11, 13)]
_C = [_f32((-1) ** (k // 2) / math.factorial(k)) for k in (2, 4, 6, 8, 10, 12, 14)]
_QUARTER_STEP = _f32(math.pi / 2) / 2**24
_SQRT2_MANTISSA = 0x3504F3


def _horner(x: torch.Tensor, coefs) -> torch.Tensor:
    """1 + x (c0 + x (c1 + ... x c_last)), in the order of csrc/philox.h."""
    acc = x * coefs[-1]
    for c in reversed(coefs[:-1]):
        acc = x * (acc + c)
    return acc + 1.0


def _radius(a: torch.Tensor) -> torch.Tensor:
    v = ((a >> 8) + 1).to(torch.int32).to(torch.float32)
    bits = v.view(torch.int32)
    mant = bits & 0x007FFFFF
    big = mant > _SQRT2_MANTISSA
    f = (mant | torch.where(big, 0x3F000000, 0x3F800000).to(torch.int32)).view(torch.float32)
    e = (bits >> 23) - 127 + big.to(torch.int32)
    t = f - 1.0
    s = t / (t + 2.0)
    poly = _horner(s * s, _L)
    ln_u = (e - 24).to(torch.float32) * _LN2 + (s + s) * poly
    # correctly rounded, as IEEE sqrtf (ATen's float32 sqrt on CPUs is not, for ~15% of inputs;
    # float64 sqrt rounded to float32 is)
    return torch.sqrt((ln_u * -2.0).double()).float()


def _cos_sin(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = b >> 30
    phi = (((b >> 6) & 0x00FFFFFF).to(torch.int32).to(torch.float32) + 0.5) * _QUARTER_STEP
    p2 = phi * phi
    sn = phi * _horner(p2, _S)
    cs = _horner(p2, _C)
    odd, neg = (q & 1).bool(), (q & 2).bool()
    c1, s1 = torch.where(odd, -sn, cs), torch.where(odd, cs, sn)
    return torch.where(neg, -c1, c1), torch.where(neg, -s1, s1)


def philox_normal(shape, key: tuple[int, int], offset: int, iteration: int, sample: int,
                  device="cpu") -> torch.Tensor:
    """The float32 normals of ``dtp_fast::philox_normal_``, in plain PyTorch (any device)."""
    shape = tuple(shape)
    rows = shape[0]
    feat = math.prod(shape[1:])
    blocks = -(-feat // 4)
    i64 = dict(dtype=torch.int64, device=device)
    c0 = torch.arange(blocks, **i64).expand(rows, blocks)
    c1 = (offset + torch.arange(rows, **i64)).unsqueeze(1).expand(rows, blocks)
    c2 = torch.full((rows, blocks), iteration, **i64)
    c3 = torch.full((rows, blocks), sample, **i64)
    a, b, c, d = philox4x32(c0, c1, c2, c3, *key)
    r1, r2 = _radius(a), _radius(c)
    cos1, sin1 = _cos_sin(b)
    cos2, sin2 = _cos_sin(d)
    out = torch.stack([r1 * cos1, r1 * sin1, r2 * cos2, r2 * sin2], dim=-1).reshape(rows, 4 * blocks)
    return out[:, :feat].reshape(shape)


def philox_normal_(out: torch.Tensor, key: tuple[int, int], offset: int, iteration: int,
                   sample: int) -> torch.Tensor:
    """Fill ``out`` (contiguous, (rows, ...), float32 or float64) with the normals of
    :func:`philox_normal` (the float32 values cast) with the compiled kernel (CPU or CUDA)."""
    require_compiled("philox_normal_")
    torch.ops.dtp_fast.philox_normal_(out, int(key[0]), int(key[1]), int(offset), int(iteration), int(sample))
    return out


def philox_noisy_input(x: torch.Tensor, sigma: float, key: tuple[int, int], offset: int, iteration: int,
                       samples: int, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dx, x + dx)`` with ``dx = sigma * eps`` for ``copies`` copies of the batch ``x`` (B, ...), the
    noise drawn in the kernel: copy m of row b is what :func:`philox_normal` gives row ``offset + b`` at
    iteration ``iteration + m // samples``, sample ``m % samples`` (cast to x's dtype). Both (copies * B,
    ...) in x's memory format (channels_last or contiguous); CPU, float32 or float64."""
    require_compiled("philox_noisy_input")
    return torch.ops.dtp_fast.philox_noisy_input(x, float(sigma), int(key[0]), int(key[1]), int(offset),
                                                 int(iteration), int(samples), int(copies))


def philox_noisy_input_ref(x, sigma, key, offset, iteration, samples, copies):
    """Reference of :func:`philox_noisy_input`: the normals of :func:`philox_normal`, scaled, added."""
    eps = torch.cat([philox_normal(x.shape, key, offset, iteration + m // samples, m % samples, x.device)
                     for m in range(copies)]).to(x.dtype)
    dx = eps * sigma
    return dx, (dx.unflatten(0, (copies, -1)) + x).flatten(0, 1)


def _philox_noisy_input_fake(x, sigma, key0, key1, offset, iteration, samples, copies):
    fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    shape = (copies * x.shape[0], *x.shape[1:])
    return (torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt),
            torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt))


def _philox_normal_fake(out, key0, key1, offset, iteration, sample):
    torch._check(out.dtype in COMPILED_DTYPES, lambda: "dtp_fast::philox_normal_: float32/float64 only")


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::philox_normal_": _philox_normal_fake,
    "dtp_fast::philox_noisy_input": _philox_noisy_input_fake,
}
AUTOGRAD: dict = {}
