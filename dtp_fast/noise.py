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

The generator (csrc/philox.h, mirrored op for op in PyTorch in
:mod:`dtp_fast.ops.noise`): element e of row r is lane e % 4 of the block of
four normals made from the Philox 4x32-10 counter ``(e // 4, offset + r,
iteration, sample)`` under a 64-bit key hashed from ``(seed, step, layer,
which)``, by Box-Muller with polynomial logarithm, sine and cosine in
float32. The compiled CPU kernel and the mirror give the same bits; other
dtypes are the float32 values cast.
"""
from __future__ import annotations

import abc
import hashlib
import struct
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .ops.noise import philox4x32, philox_normal, philox_normal_

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


def _compiled_ok(out: torch.Tensor) -> bool:
    if out.device.type != "cpu" or not out.is_contiguous() or out.dtype not in (torch.float32, torch.float64):
        return False
    from . import _ext

    return _ext.available()


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
        return philox_normal_(out, self.key(step, layer, which), offset, iteration, sample)


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
