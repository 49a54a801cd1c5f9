"""Noise for L-DRL feedback training.

Every standard-normal tensor the feedback phase uses is addressed by a key
``(seed, step, layer, iteration, sample, which)`` where ``which`` is ``"x"``
(eps1, shaped like the block's input) or ``"y"`` (eps2, shaped like its
output). The default :class:`CounterNoise` derives each tensor from its key
alone, so any backend, chunking of iterations or order of layers that asks for
the same keys gets the same noise. :class:`ExplicitNoise` lets tests hand in
the tensors themselves.
"""
from __future__ import annotations

import abc
import hashlib
import struct
from typing import Callable, Mapping

import torch

__all__ = ["NoiseSource", "CounterNoise", "ExplicitNoise"]

_WHICH = {"x": 0, "y": 1}


class NoiseSource(abc.ABC):
    """Interface: ``normal(step, layer, iteration, sample, which, shape, device, dtype)``
    returns the tensor of a key; ``fill_(out, ...)`` writes it into ``out``."""

    @abc.abstractmethod
    def normal(self, *, step: int, layer: int, iteration: int, sample: int, which: str,
               shape, device, dtype) -> torch.Tensor:
        """The standard-normal tensor of this key."""

    def fill_(self, out: torch.Tensor, *, step: int, layer: int, iteration: int, sample: int,
              which: str) -> torch.Tensor:
        return out.copy_(self.normal(step=step, layer=layer, iteration=iteration, sample=sample, which=which,
                                     shape=out.shape, device=out.device, dtype=out.dtype))


class CounterNoise(NoiseSource):
    """Standard-normal tensors keyed by ``(seed, step, layer, iteration, sample, which)``.

    Each tensor is drawn on the CPU from a generator seeded with a hash of its
    key, then moved to the device: the values do not depend on the device, the
    call order or how many other tensors were drawn.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def key_seed(self, step: int, layer: int, iteration: int, sample: int, which: str) -> int:
        packed = struct.pack("<6q", self.seed, step, layer, iteration, sample, _WHICH[which])
        digest = hashlib.blake2b(packed, digest_size=8).digest()
        return int.from_bytes(digest, "little") & ((1 << 63) - 1)

    def normal(self, *, step, layer, iteration, sample, which, shape, device, dtype):
        gen = torch.Generator().manual_seed(self.key_seed(step, layer, iteration, sample, which))
        out = torch.randn(tuple(shape), generator=gen, dtype=dtype)
        return out.to(device)

    def fill_(self, out, *, step, layer, iteration, sample, which):
        if out.device.type != "cpu" or not out.is_contiguous():
            return super().fill_(out, step=step, layer=layer, iteration=iteration, sample=sample, which=which)
        gen = torch.Generator().manual_seed(self.key_seed(step, layer, iteration, sample, which))
        return out.normal_(generator=gen)


class ExplicitNoise(NoiseSource):
    """Noise supplied by the caller.

    ``tensors`` maps ``(step, layer, iteration, sample, which)`` to a tensor, or
    is a callable taking those five arguments. A missing key raises KeyError.
    """

    def __init__(self, tensors: Mapping | Callable):
        self.tensors = tensors

    def normal(self, *, step, layer, iteration, sample, which, shape, device, dtype):
        key = (step, layer, iteration, sample, which)
        t = self.tensors(*key) if callable(self.tensors) else self.tensors[key]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"explicit noise for {key} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        return t.to(device=device, dtype=dtype)
