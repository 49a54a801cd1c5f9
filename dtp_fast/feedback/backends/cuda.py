"""The ``cuda`` backend: the ``torch`` engine with its elementwise work fused into
the CUDA kernels of ``dtp_fast._C`` (csrc/cuda/), for CUDA devices.

Per pooled conv block, the precomputation of a chunk of feedback iterations
fuses dh1 into one kernel (max-pool of the noisy pre-activations with
switches, unpool, activation, difference to the clean pass;
``pool_unpool_diff``). dh2 is held at pooled resolution, act(y + dy) - act(y),
in one kernel with the noise drawn in it (``noisy_unpool_diff_philox`` with the
identity as switches; the chain unpools it one iteration at a time), 4x smaller
than unpooled behind 2x2 pools. dx is drawn by the CUDA ``philox_normal_`` kernel. Both give the values of :class:`~dtp_fast.noise.CounterNoise`
on any device (the same Philox stream), so this backend and ``reference``
see the same noise. Convolutions (cuDNN) are the ``torch`` engine's.

The sequential chain:

- Linear feedback blocks: C_k and A_k of a precomputed chunk by batched matrix
  products (the engine's), then every iteration of the chunk in one persistent
  launch of ``linear_chain_`` (V C_k, momentum SGD, the loss when reported;
  :meth:`CudaBackend.run_interleaved`).
- Conv feedback blocks, layers interleaved by the engine: the transposed
  convolution and weight gradient (cuDNN), the loss when reported as one fused
  two-pass reduction of both terms per layer (``ldrl_loss``,
  :meth:`CudaBackend.conv_loss`), and the momentum steps of all layers stepping
  in an iteration as one launch of the multi-tensor ``momentum_sgd_`` kernel
  (:meth:`CudaBackend.step_layers`).
- The opt-in variants of the GPU policy (:mod:`dtp_fast.feedback.gpu`), off by
  default until a GPU has timed them: ``pooled_chain`` (the chain of a layer
  behind a tiling max-pool on the pooled dh2, through the ``sparse`` family's
  Triton kernels, shared with the ``triton`` backend rather than written twice)
  and ``layer_streams`` (each conv layer's whole chain on its own CUDA stream,
  each layer with its own momentum steps).

With a ``reduce`` hook (data-parallel runs) Linear blocks run iteration by
iteration in the engine's loop, so every process all-reduces one bucket per
iteration in the same order. The reductions use no float atomics: results do
not depend on scheduling.
"""
from __future__ import annotations

import torch

from ... import _ext, ops
from ...noise import CounterNoise, NoiseBlock
from ..engine import register_backend
from ..gpu import GpuPolicy
from .torch import TorchBackend

__all__ = ["CudaBackend", "CUDA_OPS", "cuda_kernels_problem"]

#: The ops with a CUDA kernel in a CUDA build of dtp_fast._C.
CUDA_OPS = ("philox_normal_", "pool_unpool_diff", "noisy_unpool_diff", "noisy_unpool_diff_philox", "momentum_sgd_",
            "ldrl_loss", "linear_chain_")

_DTYPES = (torch.float32, torch.float64)  # of the kernels; other dtypes take the torch engine's path
_HOW = ("rebuild dtp_fast with the CUDA toolkit (nvcc): `CUDA_HOME=/usr/local/cuda pip install "
        "--no-build-isolation -e .` (with DTP_FAST_FORCE_CUDA=1 the build fails with the reason instead of "
        "skipping the CUDA kernels)")


def _has_cuda_kernel(name: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
    except RuntimeError:  # the op itself is missing (a build that predates it)
        return False


def cuda_kernels_problem() -> str | None:
    """Why the loaded dtp_fast._C has no usable CUDA kernels (with the fix), or None."""
    if not _ext.available():
        return _ext.load_error()
    info = _ext.build_info() or {}
    if not info.get("with_cuda"):
        return "dtp_fast._C was built without CUDA kernels (CPU kernels only): with a CUDA build of torch, " + _HOW
    missing = [op for op in CUDA_OPS if not _has_cuda_kernel("dtp_fast::" + op)]
    if missing:
        return "dtp_fast._C has no CUDA kernel for %s (a stale build); %s" % (", ".join(missing), _HOW)
    return None


def _key_words(block: NoiseBlock) -> tuple[int, int]:
    return block.source.key(block.step, block.layer, block.which)


def _fill_counter_noise(block: NoiseBlock, device, dtype) -> torch.Tensor:
    """:meth:`NoiseBlock.materialize` of a CounterNoise block with the compiled philox_normal_ kernel."""
    rows = block.shape[0]
    out = torch.empty(block.n * block.samples, *block.shape, device=device, dtype=dtype)
    k0, k1 = _key_words(block)
    for m in range(block.n * block.samples):
        if rows:
            torch.ops.dtp_fast.philox_normal_(out[m], k0, k1, block.offset, block.k0 + m // block.samples,
                                              m % block.samples)
    return out.flatten(0, 1)


class _Materialized:
    """A noise block already drawn (what TorchBackend's hooks call ``materialize`` on)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def materialize(self, device, dtype):
        return self.tensor.to(device=device, dtype=dtype)


class CudaBackend(GpuPolicy, TorchBackend):
    """Autograd-free L-DRL with the CUDA kernels of ``dtp_fast._C`` (see the module doc); the GPU policy
    (``tf32``, ``deterministic``: :mod:`dtp_fast.feedback.gpu`) is the ``triton`` backend's."""

    name = "cuda"

    def availability(self, device):
        device = torch.device(device)
        if device.type != "cuda":
            where = ("" if torch.cuda.is_available() else
                     "; this machine has no CUDA device torch can use (torch.cuda.is_available() is False)")
            return False, f"fused CUDA kernels for tensors on a CUDA device, not {device.type}{where}; " \
                          f"use 'cpp' or 'torch' there"
        if torch.version.cuda is None:
            return False, f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch, then {_HOW}"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device (torch.cuda.is_available() is False: no GPU or no driver)"
        problem = cuda_kernels_problem()
        if problem is not None:
            return False, problem
        return True, "autograd-free analytic gradient with fused CUDA kernels from dtp_fast._C"

    def __init__(self, memory_budget="auto", threads=None, tf32: bool | None = None,
                 deterministic: bool | None = None, pooled_chain: bool | None = None,
                 layer_streams: bool | None = None):
        super().__init__(memory_budget=memory_budget, threads=threads)
        self.tf32, self.deterministic = tf32, deterministic
        self.pooled_chain, self.layer_streams = pooled_chain, layer_streams

    # ------------------------------------------------------------------ noise
    @staticmethod
    def _noise(block: NoiseBlock, device, dtype) -> torch.Tensor:
        if isinstance(block.source, CounterNoise) and device.type == "cuda" and dtype in _DTYPES:
            return _fill_counter_noise(block, device, dtype)
        return block.materialize(device, dtype)

    def noisy_input(self, noise, sigma, x, fmt):
        eps = self._noise(noise, x.device, x.dtype)
        return torch.mul(eps, sigma, out=torch.empty(eps.shape, dtype=eps.dtype, device=eps.device,
                                                     memory_format=fmt))

    # ------------------------------------------------------------------ fused dh1 / dh2
    def dh1(self, block, x_noisy, h0):
        if block.pool is None or h0.dtype not in _DTYPES:
            return super().dh1(block, x_noisy, h0)
        z1 = block.f_op(x_noisy)
        return ops.pool_unpool_diff(z1, h0, block.act, *block.pool, impl="compiled")

    def dh2(self, block, y, eps, sigma, a0):
        """At pooled resolution in one kernel with its noise drawn in it (``noisy_unpool_diff_philox`` with the
        identity as switches); other dtypes or noise sources: the engine's ops on the materialised noise."""
        if y.dim() == 4 and isinstance(eps.source, CounterNoise) and y.dtype in _DTYPES:
            return ops.noisy_act_diff_philox(y, sigma, a0, block.act, _key_words(eps), eps.offset, eps.k0,
                                             eps.samples, eps.n * eps.samples)
        return super().dh2(block, y, _Materialized(self._noise(eps, y.device, y.dtype)), sigma, a0)

    # ------------------------------------------------------------------ the chain
    def run_interleaved(self, layers, report: str, reduce=None) -> None:
        """Linear layers: every iteration of a chunk in one ``linear_chain_`` launch; the others
        interleaved by the engine, or with ``layer_streams`` each whole on its own stream. Layers are
        independent, so the order between them does not matter; with ``reduce`` everything runs in the
        engine's loop (one bucket per iteration, the same order on every process)."""
        if reduce is not None:
            return super().run_interleaved(layers, report, reduce)
        fused = [lay for lay in layers if lay.linear and lay.hp.iterations and lay.weight.dtype in _DTYPES]
        for lay in fused:
            self._run_linear(lay, report)
        rest = [lay for lay in layers if all(lay is not f for f in fused)]
        if self.layer_streams_enabled() and len(rest) > 1:
            self.on_streams(rest[0].weight.device, rest, lambda lay: super(CudaBackend, self).run_interleaved(
                [lay], report, None))
        else:
            super().run_interleaved(rest, report, None)

    def _run_linear(self, lay, report: str) -> None:
        """All iterations of a Linear layer, one persistent launch per precomputed chunk."""
        for _, _, loss_from in lay.chunks(report):
            losses = ops.linear_chain_(lay.weight, lay.momentum_buffer, lay.A.contiguous(), lay.C.contiguous(),
                                       lay.hp.lr, lay.hp.momentum, lay.hp.weight_decay, lay.scale, loss_from)
            lay.losses.extend(losses.unbind(0))

    def conv_loss(self, layer, dr_y, A, V):
        """Both terms of a conv layer's loss in one fused reduction (``ldrl_loss``)."""
        if V.dtype not in _DTYPES:
            return super().conv_loss(layer, dr_y, A, V)
        return ops.ldrl_loss(dr_y, A, V, layer.scale)

    def step_layers(self, layers, grads, k: int) -> None:
        """The momentum-SGD steps of iteration k of several layers (the engine's ``LayerState``
        objects, with their gradients) in one fused launch; the same update as ``LayerState.apply``.
        Dtypes the kernel lacks (e.g. bfloat16) take the engine's per-layer update."""
        if any(lay.weight.dtype not in _DTYPES for lay in layers):
            return super().step_layers(layers, grads, k)
        ops.momentum_sgd_([lay.weight for lay in layers], grads, [lay.momentum_buffer for lay in layers],
                          [lay.hp.lr for lay in layers], [lay.hp.momentum for lay in layers],
                          [lay.hp.weight_decay for lay in layers])
        for lay in layers:
            lay.next_k = k + 1


register_backend(CudaBackend(), priority=15)
