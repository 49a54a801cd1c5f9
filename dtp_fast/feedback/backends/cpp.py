"""The ``cpp`` backend: the ``torch`` engine with its elementwise work fused into
OpenMP kernels of ``dtp_fast._C``.

For a pooled block, the precomputation of dh1 (max-pool of the noisy
activations with switches, unpool, activation, difference to the clean pass)
and of dh2 (noisy output, unpool with the clean switches, activation,
difference) each becomes one pass over memory, with no switches or pooled
tensors materialised. Everything else (convolutions, the sequential chain)
is the ``torch`` engine's.
"""
from __future__ import annotations

import torch

from ... import _ext, ops
from ..engine import register_backend
from .torch import TorchBackend

__all__ = ["CppBackend", "FusedCPUBackend"]


class CppBackend(TorchBackend):
    name = "cpp"

    def availability(self, device):
        if device.type != "cpu":
            return False, f"fused kernels for CPU tensors only (not {device.type}); use 'torch' there"
        if not _ext.available():
            return False, _ext.load_error()
        return True, "autograd-free analytic gradient with fused OpenMP kernels from dtp_fast._C"

    def dh1(self, block, x_noisy, h0):
        if block.pool is None:
            return super().dh1(block, x_noisy, h0)
        z1 = block.f_op(x_noisy)
        return ops.pool_unpool_diff(z1, h0, block.act, *block.pool, impl="compiled")

    def dh2(self, block, y, eps, sigma, switches, h0):
        if block.pool is None:
            return super().dh2(block, y, eps, sigma, switches, h0)
        eps = eps.materialize(y.device, y.dtype).contiguous(memory_format=torch.channels_last)
        return ops.noisy_unpool_diff(y, eps, sigma, switches, h0, block.act, block.pre_pool_shape[1:],
                                     impl="compiled")


register_backend(CppBackend(), priority=20)

#: The name this class had before 0.2 (still importable).
FusedCPUBackend = CppBackend
