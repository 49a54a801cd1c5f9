"""Noise for L-DRL feedback training.

Every standard-normal tensor the feedback phase uses is addressed by a key
``(seed, step, layer, iteration, sample, which)`` where ``which`` is ``"x"``
(eps1, shaped like the block's input) or ``"y"`` (eps2, shaped like its
output), and each row of it (one data sample) by that sample's index in the
global batch. The default :class:`CounterNoise` derives every value from its
key, row index and position alone, so any backend, chunking of iterations,
order of layers or split of the batch over processes that asks for the same
keys gets the same noise. :class:`ExplicitNoise` lets tests hand in the
tensors themselves.

The generator (csrc/philox.h, mirrored here op for op in PyTorch): element
e of row r is lane e % 4 of the block of four normals made from the Philox
4x32-10 counter ``(e // 4, offset + r, iteration, sample)`` under a 64-bit
key hashed from ``(seed, step, layer, which)``, by Box-Muller with
polynomial logarithm, sine and cosine in float32. The compiled CPU kernel and
this mirror give the same bits; other dtypes are the float32 values cast.
"""
from __future__ import annotations

import abc
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

__all__ = ["NoiseSource", "CounterNoise", "ExplicitNoise", "NoiseBlock", "philox4x32", "philox_normal"]

_WHICH = {"x": 0, "y": 1}
_MASK = 0xFFFFFFFF


class NoiseSource(abc.ABC):
    """Interface: ``normal(step, layer, iteration, sample, which, shape, device, dtype, offset=0)``
    returns the tensor of a key for the rows (data samples) ``offset .. offset + shape[0] - 1``
    of the global batch; ``fill_(out, ...)`` writes it into ``out``."""

    @abc.abstractmethod
    def normal(self, *, step: int, layer: int, iteration: int, sample: int, which: str,
               shape, device, dtype, offset: int = 0) -> torch.Tensor:
        """The standard-normal tensor of this key."""

    def fill_(self, out: torch.Tensor, *, step: int, layer: int, iteration: int, sample: int,
              which: str, offset: int = 0) -> torch.Tensor:
        return out.copy_(self.normal(step=step, layer=layer, iteration=iteration, sample=sample, which=which,
                                     shape=out.shape, device=out.device, dtype=out.dtype, offset=offset))


# ---------------------------------------------------------------------------- Philox, in PyTorch
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


def _compiled_ok(out: torch.Tensor) -> bool:
    if out.device.type != "cpu" or not out.is_contiguous() or out.dtype not in (torch.float32, torch.float64):
        return False
    from . import _ext

    return _ext.available() and hasattr(torch.ops.dtp_fast, "philox_normal_")


class CounterNoise(NoiseSource):
    """Standard normals keyed by ``(seed, step, layer, iteration, sample, which)`` and the
    global index of each data sample (Philox 4x32-10 + Box-Muller; see the module doc).

    On CPU tensors the compiled kernel fills them (about 1 ns per value on two
    threads); elsewhere, or without the extension, the PyTorch mirror does,
    with the same values.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def key(self, step: int, layer: int, which: str) -> tuple[int, int]:
        """The Philox key (two 32-bit words) of ``(seed, step, layer, which)``."""
        packed = struct.pack("<4q", self.seed, step, layer, _WHICH[which])
        digest = int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")
        return digest & _MASK, digest >> 32

    @staticmethod
    def _check(shape, offset: int, iteration: int, sample: int) -> None:
        if len(shape) < 1:
            raise ValueError("noise needs a batch dimension: shape (rows, ...)")
        if not (0 <= offset and offset + shape[0] <= 2**32 and 0 <= iteration < 2**32 and 0 <= sample < 2**32):
            raise ValueError(f"noise counters out of range: sample indices {offset}..{offset + shape[0] - 1}, "
                             f"iteration {iteration}, noise sample {sample} must lie in [0, 2^32)")

    def normal(self, *, step, layer, iteration, sample, which, shape, device, dtype, offset=0):
        shape = tuple(shape)
        self._check(shape, offset, iteration, sample)
        device = torch.device(device)
        out = torch.empty(shape, device=device, dtype=dtype)
        if _compiled_ok(out):
            return self.fill_(out, step=step, layer=layer, iteration=iteration, sample=sample, which=which,
                              offset=offset)
        values = philox_normal(shape, self.key(step, layer, which), offset, iteration, sample, device)
        return values.to(dtype)

    def fill_(self, out, *, step, layer, iteration, sample, which, offset=0):
        if not _compiled_ok(out):
            return super().fill_(out, step=step, layer=layer, iteration=iteration, sample=sample, which=which,
                                 offset=offset)
        self._check(out.shape, offset, iteration, sample)
        torch.ops.dtp_fast.philox_normal_(out, *self.key(step, layer, which), offset, iteration, sample)
        return out


class ExplicitNoise(NoiseSource):
    """Noise supplied by the caller.

    ``tensors`` maps ``(step, layer, iteration, sample, which)`` to a tensor
    over the global batch, or is a callable taking those five arguments; a
    request for rows ``offset .. offset + n - 1`` gets those rows. A missing
    key raises KeyError.
    """

    def __init__(self, tensors: Mapping | Callable):
        self.tensors = tensors

    def normal(self, *, step, layer, iteration, sample, which, shape, device, dtype, offset=0):
        key = (step, layer, iteration, sample, which)
        t = self.tensors(*key) if callable(self.tensors) else self.tensors[key]
        shape = tuple(shape)
        if tuple(t.shape[1:]) != shape[1:] or t.shape[0] < offset + shape[0]:
            raise ValueError(f"explicit noise for {key} has shape {tuple(t.shape)}, but rows {offset}.."
                             f"{offset + shape[0] - 1} of shape {shape} were asked for")
        return t[offset:offset + shape[0]].to(device=device, dtype=dtype)


@dataclass(frozen=True)
class NoiseBlock:
    """The noise one layer needs for iterations ``k0 .. k0 + n - 1``, every noise sample and the
    data samples (rows) ``offset .. offset + shape[0] - 1`` of the global batch.

    As a tensor (:meth:`materialize`): ``(n * samples * rows, *shape[1:])``, iteration-major,
    then noise sample, then row. Fused kernels may instead draw it themselves from
    :meth:`CounterNoise.key` when ``source`` is a :class:`CounterNoise`: block ``m`` of rows
    has iteration ``k0 + m // samples`` and noise sample ``m % samples``.
    """
    source: NoiseSource
    step: int
    layer: int
    which: str
    k0: int
    n: int
    samples: int
    offset: int
    shape: tuple

    def materialize(self, device, dtype) -> torch.Tensor:
        out = torch.empty(self.n * self.samples, *self.shape, device=device, dtype=dtype)
        for m in range(self.n * self.samples):
            self.source.fill_(out[m], step=self.step, layer=self.layer, iteration=self.k0 + m // self.samples,
                              sample=m % self.samples, which=self.which, offset=self.offset)
        return out.flatten(0, 1)
