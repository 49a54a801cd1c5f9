"""The ``triton`` backend: the ``torch`` engine (ALGORITHM.md section 5) with fused
Triton kernels (:mod:`dtp_fast.ops.triton`) and the sequential chain in a CUDA graph.

What runs where, per batch:

- Precomputation (batched over all the iterations a chunk holds): dx = sigma * eps
  drawn in a kernel; the noisy forward convolution (cuDNN); dh1 in one kernel
  (activation, max-pool with switches, unpool, minus the clean pass); dh2 at
  pooled resolution, act(y + dy) - act(y), in one kernel with its noise drawn
  in the kernel (the noise is never stored; dh2 is 4x smaller than unpooled
  behind 2x2 pools, so a whole phase fits a CUDA graph at larger batches);
  A_k = wgrad(dh1, dx). The chain unpools each iteration's dh2 at the clean
  switches before its transposed convolution (the engine's ``LayerState.unpool``),
  or, with ``pooled_chain`` (opt-in until measured on a GPU), reads the pooled
  dh2 and the switches inside the Triton matrix products of the ``sparse``
  family (layers behind a 2x2-like pool; :mod:`dtp_fast.ops.triton.sparse`).
- Linear feedback blocks: C_k and A_k by batched matrix products, then every
  iteration in one persistent kernel (momentum SGD and the loss included).
- Conv feedback blocks, layers interleaved: per iteration one transposed
  convolution and one weight gradient per layer (cuDNN), the loss when reported
  (one fused reduction per layer) and one multi-tensor momentum step for all
  layers; or, with ``layer_streams`` (opt-in until measured on a GPU), each
  layer's whole chain on its own stream, side by side. On CUDA, when every layer's iterations fit in one precomputed chunk
  (the default memory budget is a quarter of the free GPU memory, up to 8 GiB),
  this chain is captured in a CUDA graph on the second batch of a given shape
  and replayed from then on (the first batch runs it eagerly, which compiles
  the kernels); otherwise, or if capture fails, it runs eagerly.
- The GPU policy shared with the ``cuda`` backend (:mod:`dtp_fast.feedback.gpu`):
  the tensors' device made current for the phase, TF32 for convolutions and
  matrix products by one switch (``tf32``; default on for Ampere and newer,
  ``DTP_FAST_TF32=0`` turns it off), ``deterministic=True`` (``DTP_FAST_DETERMINISTIC=1``) for
  cuDNN's deterministic algorithms. The loss reductions use no atomics.

With a ``reduce`` hook (data-parallel runs) the chain runs iteration by
iteration as in the ``torch`` engine, so every process all-reduces the same
buckets in the same order; the fused precomputation is still used.

The backend is usable on CUDA devices with ``triton`` >= 3.6 importable. Its
pieces also run on CPU tensors under ``TRITON_INTERPRET=1`` (call
:meth:`TritonBackend.train` directly): that is how tests/backends/test_triton.py checks
them without a GPU.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict

import torch

from ...noise import CounterNoise, NoiseBlock
from .torch import TorchBackend
from ..engine import register_backend
from ..gpu import GpuPolicy, _env_off

__all__ = ["TritonBackend"]



class _ChainGraph:
    """Static tensors and the captured CUDA graph of one shape of the conv chain."""

    def __init__(self):
        self.buffers = {}        # block index (LayerState.index) -> {"V", "buf", "A", "dh2", "switches"}
        self.table = None        # per-layer scalars
        self.losses = None       # (layers, iterations) losses written by the graph
        self.graph = None
        self.runs = 0            # eager runs so far (the first one warms up)
        self.failed = None       # why capture failed, if it did


class TritonBackend(GpuPolicy, TorchBackend):
    """Autograd-free L-DRL with fused Triton kernels; CUDA only (see the module doc).

    Args:
        memory_budget: bytes for the precomputed perturbations; ``"auto"``: a quarter
            of the free GPU memory, at most 8 GiB (so that one chunk holds every
            iteration and the chain can be graphed); see :func:`dtp_fast.feedback.resolve_budget`.
        cuda_graphs: capture the conv chain in a CUDA graph when shapes repeat
            (``DTP_FAST_CUDA_GRAPHS=0`` turns it off).
        tf32: TF32 in the convolutions and matrix products: None (default) means yes on
            compute capability >= 8.0 unless ``DTP_FAST_TF32=0``.
        deterministic: cuDNN's deterministic algorithms (bit-reproducible runs).
        pooled_chain: the chain of a layer behind a max-pool whose windows tile the plane through the
            ``sparse`` family's Triton kernels, which read dh2 at pooled resolution with the switches
            instead of unpooling it for cuDNN (:mod:`dtp_fast.ops.triton.sparse`). None (default): only
            with ``DTP_FAST_POOLED_CHAIN=1``, until a GPU has measured it against cuDNN.
        layer_streams: the conv layers' chains side by side, each on its own CUDA stream (forked from
            and joined to the current stream, inside the CUDA graph too; each layer then takes its own
            momentum step). None (default): only with ``DTP_FAST_LAYER_STREAMS=1``, until measured.
    """
    name = "triton"

    def __init__(self, memory_budget="auto", cuda_graphs: bool = True, tf32: bool | None = None,
                 deterministic: bool | None = None, max_graphs: int = 2, block: int = 1024,
                 pooled_chain: bool | None = None, layer_streams: bool | None = None):
        super().__init__(memory_budget=memory_budget)
        self.cuda_graphs = cuda_graphs
        self.tf32, self.deterministic = tf32, deterministic
        self.pooled_chain, self.layer_streams = pooled_chain, layer_streams
        self.max_graphs = max_graphs
        self.block = block
        self._graphs: OrderedDict = OrderedDict()
        self._current: _ChainGraph | None = None
        self._warned: set = set()
        #: how the last call ran its conv chain: "graph-capture", "graph-replay", "eager (...)"
        self.last_chain = None

    # ------------------------------------------------------------------ registry
    def availability(self, device):
        from ...ops import triton as kernels

        if device.type != "cuda":
            return False, (f"fused Triton kernels for CUDA devices only (this is {device.type}); on a CPU use "
                           f"'cpp' or 'torch'")
        if not torch.cuda.is_available():
            return False, ("no CUDA device is usable here (torch.cuda.is_available() is False): install a CUDA "
                           "build of torch on a machine with an NVIDIA GPU")
        if not kernels.available():
            return False, kernels.load_error()
        return True, ("fused Triton kernels (in-kernel Philox noise, fused pool/unpool perturbations, persistent "
                      "Linear chain, multi-tensor momentum) and a CUDA-graphed chain")

    def workers(self, device, hparams, budget, blocks, batch, element_size) -> int:
        return 1  # layers interleaved on one stream (and one thread under the interpreter)

    # ------------------------------------------------------------------ precomputation hooks
    @staticmethod
    def _counter(noise: NoiseBlock):
        """(key, offset, iteration, samples) when the kernels can draw this noise themselves."""
        if isinstance(noise.source, CounterNoise):
            return noise.source.key(noise.step, noise.layer, noise.which), noise.offset, noise.k0, noise.samples
        return None

    def noisy_input(self, noise: NoiseBlock, sigma: float, x: torch.Tensor, fmt) -> torch.Tensor:
        counter = self._counter(noise)
        if counter is None:
            return super().noisy_input(noise, sigma, x, fmt)
        from ...ops.triton.noise import noise_fill_

        key, offset, k0, samples = counter
        out = torch.empty((noise.n * samples * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device,
                          memory_format=fmt if x.dim() == 4 else torch.contiguous_format)
        return noise_fill_(out, key, sigma, batch=x.shape[0], offset=offset, iteration=k0, samples=samples,
                           block=self.block)

    def dh1(self, block, x_noisy, h0):
        if block.pool is None:
            return super().dh1(block, x_noisy, h0)
        from ...ops.triton.dh import pool_unpool_diff

        return pool_unpool_diff(block.f_op(x_noisy), h0, block.act, *block.pool, block=self.block)

    def _dh2(self, block, y, eps: NoiseBlock, sigma, a0, out=None):
        """act(y + sigma * eps) - a0 at y's resolution in one kernel, the noise drawn in it."""
        from ...ops.triton.dh import noisy_unpool_diff

        counter = self._counter(eps)
        tensor = None if counter is not None else eps.materialize(y.device, y.dtype)
        return noisy_unpool_diff(y, None, a0, block.act, None, sigma, eps.n * eps.samples, eps=tensor,
                                 noise=counter, out=out, block=self.block)

    def dh2(self, block, y, eps, sigma, a0):
        return self._dh2(block, y, eps, sigma, a0)

    def conv_precompute(self, layer, dx, eps_y, n: int):
        static = self._current.buffers.get(layer.index) if self._current is not None else None
        dh1 = self.dh1(layer.block, layer.x_noisy, layer.h0).contiguous(memory_format=layer.memory_format)
        d2 = self._dh2(layer.block, layer.y, eps_y, layer.hp.noise, layer.a0,
                       out=None if static is None else static["dh2"])
        dx = dx.reshape(n, -1, *dx.shape[2:])
        dh1 = dh1.reshape(n, -1, *dh1.shape[1:])
        V = layer.weight
        A = static["A"] if static is not None else torch.empty_strided((n, *V.shape), (V.numel(), *V.stride()),
                                                                       dtype=V.dtype, device=V.device)
        for j in range(n):
            layer.wgrad(dh1[j], dx[j], out=A[j])
        return A, d2.reshape(n, -1, *d2.shape[1:])

    # ------------------------------------------------------------------ the chain
    def _chain(self, layers, conv, table, losses, most: int, report: str, prepare: bool) -> None:
        """Every iteration of the conv layers ``conv``: interleaved (iteration k of every layer, then one
        momentum step for all of them), or with ``layer_streams`` layer by layer, each on its own CUDA
        stream forked from the current one and joined back at the end (in order on a CPU)."""
        if not (self.layer_streams_enabled() and len(conv) > 1):
            for k in range(most):
                self._conv_step(k, layers, conv, table, losses, report, prepare)
            return

        def whole(i):
            for k in range(layers[i].hp.iterations):
                self._conv_step(k, layers, [i], table, losses, report, prepare)
        self.on_streams(layers[conv[0]].weight.device, conv, whole)

    @staticmethod
    def _wanted(report: str, lay, k: int) -> bool:
        return report == "all" or (report == "last" and k == lay.hp.iterations - 1)

    def run_interleaved(self, layers, report: str, reduce=None) -> None:
        if reduce is not None or not layers:
            return super().run_interleaved(layers, report, reduce)
        from ...ops.triton.sgd import layer_scalars

        like = layers[0].weight
        rows = [(lay.hp.lr, lay.hp.momentum, lay.hp.weight_decay, 2 * lay.scale, lay.scale) for lay in layers]
        most = max(lay.hp.iterations for lay in layers)
        linear = [i for i, lay in enumerate(layers) if lay.linear and lay.hp.iterations]
        conv = [i for i, lay in enumerate(layers) if not lay.linear and lay.hp.iterations]
        if linear:
            table = layer_scalars(rows, like)
            losses = like.new_zeros(len(layers), most)
            for i in linear:
                self._run_linear(layers[i], table[i], losses[i], report)
        self.last_chain = None
        if conv:
            self._run_conv(layers, conv, rows, max(layers[i].hp.iterations for i in conv), report)

    def _run_linear(self, lay, scalars, losses, report: str) -> None:
        """All iterations of a Linear layer, one persistent launch per precomputed chunk."""
        from ...ops.triton.chain import linear_chain_

        scratch = torch.empty_like(lay.weight)
        for k, n, loss_from in lay.chunks(report):
            linear_chain_(lay.weight, lay.momentum_buffer, lay.A.contiguous(), lay.C.contiguous(), scalars, losses[k:k + n],
                          loss_from, scratch=scratch)
        lay.losses.extend(losses[k] for k in range(lay.hp.iterations) if self._wanted(report, lay, k))

    def _conv_step(self, k: int, layers, conv, table, losses, report: str, prepare: bool) -> None:
        """Iteration k of every conv layer still running: transposed conv, weight gradient, the
        loss if wanted, then one momentum step for all of them."""
        from ...ops.triton.chain import ldrl_loss_
        from ...ops.triton.sgd import momentum_step_

        params, bufs, quads, subs, scal = [], [], [], [], []
        for i in conv:
            lay = layers[i]
            if k >= lay.hp.iterations:
                continue
            if prepare and k >= lay.start + lay.held:
                lay.prepare(k)
            j = k - lay.start
            dr_y, quad = self.conv_chain(lay, lay.stored[j])
            if self._wanted(report, lay, k):
                ldrl_loss_(losses[i, k:k + 1], dr_y, lay.A[j], lay.weight, table[i])
            params.append(lay.weight)
            bufs.append(lay.momentum_buffer)
            quads.append(quad)
            subs.append(lay.A[j])
            scal.append(table[i])
        momentum_step_(params, bufs, quads, scal, subtract=subs)

    def _graphable(self, layers, conv) -> str | None:
        """Why the conv chain cannot be graphed (None: it can)."""
        if not self.cuda_graphs or _env_off("DTP_FAST_CUDA_GRAPHS"):
            return "CUDA graphs turned off"
        if layers[conv[0]].weight.device.type != "cuda":
            return "not on CUDA"
        short = [layers[i].name for i in conv if layers[i].chunk < layers[i].hp.iterations]
        if short:
            return f"the memory budget splits the iterations of {', '.join(short)} into chunks"
        return None

    def _graph_key(self, layers, conv, report: str):
        parts = []
        for i in conv:
            lay = layers[i]
            g = lay.block.g_op
            parts.append((i, tuple(lay.weight.shape), lay.weight.stride(), tuple(lay.x.shape), tuple(lay.y.shape),
                          tuple(lay.h0.shape), lay.hp, lay.batch, g.stride, g.padding, g.output_padding, g.dilation))
        dev = layers[conv[0]].weight.device
        return (dev, layers[conv[0]].weight.dtype, report, self.tf32_enabled(dev), self.deterministic_enabled(),
                self.pooled_chain_enabled(), self.layer_streams_enabled(), tuple(parts))

    def _run_conv(self, layers, conv, rows, most: int, report: str) -> None:
        from ...ops.triton.sgd import layer_scalars

        why = self._graphable(layers, conv)
        if why is not None and "memory budget" in why and why not in self._warned:
            self._warned.add(why)      # once per reason: every batch of this shape runs eagerly
            warnings.warn(f"dtp_fast triton backend: the feedback chain runs without a CUDA graph because {why}; "
                          f"raise the feedback memory budget (--feedback-memory) to graph it", RuntimeWarning,
                          stacklevel=2)
        if why is not None:
            table = layer_scalars(rows, layers[conv[0]].weight)
            losses = layers[conv[0]].weight.new_zeros(len(layers), most)
            self._chain(layers, conv, table, losses, most, report, prepare=True)
            self.last_chain = f"eager ({why})"
        else:
            losses = self._run_conv_graphed(layers, conv, rows, most, report)
        for i in conv:
            lay = layers[i]
            lay.losses.extend(losses[i, k] for k in range(lay.hp.iterations) if self._wanted(report, lay, k))
            lay.next_k = lay.hp.iterations

    def _run_conv_graphed(self, layers, conv, rows, most: int, report: str) -> torch.Tensor:
        from ...ops.triton.sgd import layer_scalars

        key = self._graph_key(layers, conv, report)
        entry = self._graphs.pop(key, None)
        if entry is None:
            entry = _ChainGraph()
            like = layers[conv[0]].weight
            entry.table = layer_scalars(rows, like)
            entry.losses = like.new_zeros(len(layers), most)
            for i in conv:
                lay = layers[i]
                n, V = lay.hp.iterations, lay.weight
                shape = (n * lay.hp.samples * lay.batch, *lay.y.shape[1:])     # dh2 at pooled resolution
                entry.buffers[lay.index] = {
                    "V": torch.empty_like(V), "buf": torch.empty_like(lay.momentum_buffer),
                    "A": torch.empty_strided((n, *V.shape), (V.numel(), *V.stride()), dtype=V.dtype, device=V.device),
                    "dh2": torch.empty(shape, dtype=V.dtype, device=V.device),
                    # the switches dh2 is unpooled at: this batch's, copied in before every replay
                    "switches": None if lay.unpool_switches is None else torch.empty_like(lay.unpool_switches),
                }
        while len(self._graphs) >= self.max_graphs:
            self._graphs.popitem(last=False)
        self._graphs[key] = entry
        # the static working copies of V and its momentum buffer, then the precomputation into static buffers
        for i in conv:
            lay = layers[i]
            st = entry.buffers[lay.index]
            lay.weight = st["V"].copy_(lay.weight)
            lay.momentum_buffer = st["buf"].copy_(lay.momentum_buffer)
            if st["switches"] is not None:
                lay.unpool_switches = st["switches"].copy_(lay.unpool_switches)
        self._current = entry
        try:
            for i in conv:
                layers[i].prepare(0)
        finally:
            self._current = None

        def chain():
            entry.losses.zero_()
            self._chain(layers, conv, entry.table, entry.losses, most, report, prepare=False)

        if entry.graph is None and entry.runs >= 1 and entry.failed is None:
            try:
                graph = torch.cuda.CUDAGraph()
                torch.cuda.synchronize(layers[conv[0]].weight.device)
                # thread_local: other threads (e.g. a data prefetcher copying to the GPU) keep working
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    chain()
                entry.graph = graph
                self.last_chain = "graph-capture"
            except Exception as err:  # noqa: BLE001 - fall back to the eager chain, once per shape
                entry.failed = f"{type(err).__name__}: {err}"
                warnings.warn(f"dtp_fast triton backend: CUDA graph capture failed ({entry.failed}); running the "
                              f"feedback chain eagerly for this shape", RuntimeWarning, stacklevel=2)
        if entry.graph is not None:
            entry.graph.replay()
            if self.last_chain is None:
                self.last_chain = "graph-replay"
        else:
            chain()
            entry.runs += 1
            self.last_chain = "eager (first batch of this shape: warm-up)" if entry.failed is None else \
                f"eager (capture failed: {entry.failed})"
        return entry.losses

    def clear_graphs(self) -> None:
        """Drop the captured graphs and their static buffers."""
        self._graphs.clear()


register_backend(TritonBackend(), priority=30)
