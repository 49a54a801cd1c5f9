"""The ``cpp`` backend: the ``torch`` engine with its elementwise work fused into
OpenMP kernels of ``dtp_fast._C`` and the chain of pooled layers switch-sparse.

The noisy inputs dx and x + dx, and dh2, are each one kernel that draws its own
noise. For a
pooled block, the precomputation of dh1 (max-pool of the noisy
activations with switches, unpool, activation, difference to the clean pass)
becomes one pass over memory, with no switches or pooled tensors
materialised. dh2 is held at pooled resolution (as in the ``torch`` engine)
and, where the feedback is a stride-1 transposed convolution, the chain's
transposed convolution and weight gradient run on its non-zeros only (the
``sparse`` ops: one position in four behind a 2x2 pool), through index lists
of the clean switches built once per batch and layer, a whole precomputed chunk
(the chain, the losses and the momentum steps) in one call (``pooled_chain_``).

The noisy forward convolution, A_k and everything else are the ``torch`` engine's.
"""
from __future__ import annotations

import torch

from ... import _ext, ops
from ...noise import CounterNoise
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

    def noisy_inputs(self, noise, sigma, x, fmt):
        """dx and x + dx in one kernel, the counter-based noise drawn in it (``philox_noisy_input``)."""
        if not isinstance(noise.source, CounterNoise) or x.dtype not in (torch.float32, torch.float64):
            return super().noisy_inputs(noise, sigma, x, fmt)
        key = noise.source.key(noise.step, noise.layer, noise.which)
        return ops.philox_noisy_input(x.contiguous(memory_format=fmt), sigma, key, noise.offset, noise.k0,
                                      noise.samples, noise.n * noise.samples)

    def dh2(self, block, y, eps, sigma, a0):
        """act(y + sigma * eps) - a0 in one pass, the counter-based noise drawn in it; contiguous (what the
        sparse chain reads)."""
        if y.dim() != 4 or not isinstance(eps.source, CounterNoise) or y.dtype not in (torch.float32, torch.float64):
            return super().dh2(block, y, eps, sigma, a0)
        return ops.noisy_act_diff_philox(y.contiguous(), sigma, a0.contiguous(), block.act,
                                         eps.source.key(eps.step, eps.layer, eps.which), eps.offset, eps.k0,
                                         eps.samples, eps.n * eps.samples)

    def dh1(self, block, x_noisy, h0):
        if block.pool is None:
            return super().dh1(block, x_noisy, h0)
        z1 = block.f_op(x_noisy)
        return ops.pool_unpool_diff(z1, h0, block.act, *block.pool, impl="compiled")

    @staticmethod
    def _sparse_chain(layer) -> bool:
        """Whether the layer's chain runs on the sparse ops: a pooled conv block whose feedback is a
        stride-1 transposed convolution of one group, float32 or float64."""
        g = layer.block.g_op
        return (layer.switches is not None and not layer.linear and tuple(g.stride) == (1, 1) and g.groups == 1
                and tuple(g.output_padding) == (0, 0) and layer.weight.dtype in (torch.float32, torch.float64))

    def conv_precompute(self, layer, dx, eps_y, n: int):
        if layer.plan is None and self._sparse_chain(layer):  # once per batch and layer
            g, V = layer.block.g_op, layer.weight
            layer.plan = ops.switch_lists(layer.switches, layer.block.pre_pool_shape[1:], V.shape, g.padding,
                                          g.dilation, layer.x.shape[2:], layer.hp.samples, V.dtype)
        return super().conv_precompute(layer, dx, eps_y, n)

    def conv_chain(self, layer, d2):
        if layer.plan is None:
            return super().conv_chain(layer, d2)
        dr_pad = ops.pooled_conv_t(d2, layer.plan, layer.weight)
        return ops.interior(dr_pad, layer.plan), ops.pooled_wgrad(d2, layer.plan, dr_pad)

    def run_chunk(self, layer, report):
        """A pooled conv layer's whole chunk in one ``pooled_chain_`` call (the chain, the losses and the
        momentum steps); other layers iteration by iteration."""
        if layer.plan is None:
            return super().run_chunk(layer, report)
        hp = layer.hp
        losses = ops.pooled_chain_(layer.stored, layer.plan, layer.A, layer.weight, layer.momentum_buffer,
                                   layer.scale, hp.lr, hp.momentum, hp.weight_decay, layer.loss_from(report))
        layer.losses.extend(losses.unbind(0))
        layer.next_k = layer.start + layer.held

    def run_interleaved(self, layers, report, reduce=None):
        """Without a data-parallel ``reduce`` (whose collectives need every layer's iteration k before
        k + 1) the layers are independent: one after another, chunk by chunk (``run_chunk``)."""
        if reduce is not None:
            return super().run_interleaved(layers, report, reduce)
        for layer in layers:
            while layer.next_k < layer.hp.iterations:
                layer.run_chunk(report)


register_backend(CppBackend(), priority=20)

#: The name this class had before 0.2 (still importable).
FusedCPUBackend = CppBackend
