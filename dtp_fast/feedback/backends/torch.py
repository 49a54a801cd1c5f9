"""The ``torch`` backend: L-DRL without autograd (ALGORITHM.md section 5).

Write G(y; I) = V * h(y; I) + c with h(y; I) = act(unpool(y, I)). With
dh1 = h(y1; I1) - h(y; I0) and dh2 = h(y + dy; I0) - h(y; I0):

    dr_y   = V * dh2
    grad_V = 2/(S B) * (wgrad(dh2, dr_y) - A_k),   A_k = wgrad(dh1, dx)
    loss   = 1/(S B) * (-2 <A_k, V> + ||dr_y||^2)      (only when reported)

where wgrad(h, g) is the weight gradient of the transposed convolution (or
matrix product) with input h and output gradient g, and <dx, V * dh1> =
<A_k, V> by adjointness. The bias c cancels (its gradient is 0; only weight decay moves it, see
LayerState.finish). Because F is
frozen, dx, the noisy forward pass, dh1, A_k and dh2 do not depend on V: they
are computed for a chunk of iterations at once, the noisy forward pass in one
batched call per layer, and only dh2 and the weight-sized A_k are kept. dh2
is kept at the block's output resolution, ``act(y + dy) - act(y)``: behind a
max-pool, h(y + dy; I0) - h(y; I0) is that placed at the clean switches I0
(zeros elsewhere, as act(0) = 0), so the stored perturbations are 4x smaller
(2x2 pools); the chain unpools one iteration at a time. The
sequential chain is one transposed convolution, one weight gradient and the
momentum step per iteration. The layers are independent: on a CPU they are
spread over worker threads, elsewhere interleaved (iteration k of every layer
before iteration k + 1). For a Linear feedback block the chain runs on
small matrices: wgrad(dh2, V dh2) = V C_k with C_k = dh2^T dh2.
"""
from __future__ import annotations

import threading

import torch

from ...blocks import ACTIVATIONS
from ...noise import NoiseBlock
from ..engine import register_backend
from ..layer import LayerState
from ..memory import (DEFAULT_MEMORY_BUDGET, chunk_memory_budget, cpu_chunk_targets, minimum_memory_budget,
                      plan_chunk, resolve_budget)

__all__ = ["TorchBackend", "AnalyticBackend"]


def _run_concurrently(layers, report: str, workers: int) -> None:
    """Train the layers on ``workers`` threads, each running one layer's chunks at a time.

    A free worker takes the idle layer with the most work left (its next chunk);
    a layer is never run by two workers at once, so each layer's iterations stay
    in order. The first error stops every worker and is raised here.
    """
    cond = threading.Condition()
    busy, errors = set(), []
    per_worker = max(1, torch.get_num_threads() // workers)
    saved = torch.get_num_threads()

    def next_layer():
        idle = [lay for lay in layers if lay not in busy and lay.next_k < lay.hp.iterations]
        return max(idle, key=LayerState.remaining_cost, default=None)

    def work():
        torch.set_num_threads(per_worker)   # this thread's OpenMP / MKL threads
        with torch.no_grad():                # grad mode is per thread
            while True:
                with cond:
                    while not errors and (layer := next_layer()) is None and busy:
                        cond.wait()
                    if errors or layer is None:
                        return
                    busy.add(layer)
                try:
                    layer.run_chunk(report)
                except BaseException as err:  # noqa: BLE001 - re-raised by the caller
                    with cond:
                        errors.append(err)
                        cond.notify_all()
                    return
                with cond:
                    busy.discard(layer)
                    cond.notify_all()

    threads = [threading.Thread(target=work, name=f"dtp-fast-feedback-{i}", daemon=True) for i in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        torch.set_num_threads(saved)
    if errors:
        raise errors[0]


class TorchBackend:
    """Autograd-free L-DRL with plain PyTorch ops; runs on any device.

    It is also the base of the fast backends, which subclass it and override
    some of its hooks (README "Write a backend"); every hook has a plain
    PyTorch default here, so a subclass overrides only what it makes faster:

    - :meth:`availability` (whether it runs on a device, and why not);
    - precomputation, batched over a chunk of iterations: :meth:`noisy_input`
      (dx), :meth:`noisy_inputs` (dx and x + dx), :meth:`dh1`, :meth:`dh2` (the perturbations of h),
      :meth:`conv_precompute` (A_k and what the chain needs, conv blocks);
    - the sequential chain: :meth:`conv_chain` (dr_y and wgrad(dh2, dr_y)),
      :meth:`conv_loss`, :meth:`step_layers` (momentum steps of one iteration),
      :meth:`run_chunk` (a layer's precomputed chunk, on CPU worker threads),
      :meth:`run_interleaved` (the whole chain of every layer);
    - :meth:`workers` (how many layers train at once on CPU threads).

    The hooks receive :class:`~dtp_fast.feedback.LayerState` objects, the
    per-layer state they may read and change.
    """
    name = "torch"

    def __init__(self, memory_budget: int | str | None = DEFAULT_MEMORY_BUDGET, threads: int | None = None):
        # bytes the precomputed perturbations may take; "auto": see resolve_budget; None: no limit
        self.memory_budget = memory_budget
        # CPU threads to spread the layers over (None: torch.get_num_threads()); see workers
        self.threads = threads

    def workers(self, device, hparams, budget, blocks, batch, element_size) -> int:
        """How many layers train at the same time.

        On a CPU, small convolutions scale poorly over threads, so with T threads
        the layers are spread over up to T worker threads with T // workers
        threads each (layers are independent, so the result is the same). The
        count drops if the memory budget cannot hold that many precomputations
        at once. On other devices: 1 (layers interleaved on one stream).
        """
        if device.type != "cpu":
            return 1
        threads = torch.get_num_threads() if self.threads is None else self.threads
        workers = max(1, min(threads, sum(hp.iterations > 0 for hp in hparams)))
        while (workers > 1 and budget is not None
               and budget < minimum_memory_budget(blocks, hparams, batch, element_size, workers)):
            workers -= 1
        return workers

    def availability(self, device):
        return True, "autograd-free analytic gradient, plain PyTorch ops; runs on any device"

    def noisy_input(self, noise: NoiseBlock, sigma: float, x: torch.Tensor, fmt) -> torch.Tensor:
        """``dx = sigma * eps`` of a chunk for inputs like ``x``: (n*S*B, *x) in memory format ``fmt``."""
        eps = noise.materialize(x.device, x.dtype)
        return torch.mul(eps, sigma, out=torch.empty(eps.shape, dtype=eps.dtype, device=eps.device, memory_format=fmt))

    def noisy_inputs(self, noise: NoiseBlock, sigma: float, x: torch.Tensor, fmt):
        """``(dx, x + dx)`` of a chunk, both (n*S*B, *x.shape[1:]) (a hook: the ``cpp`` backend draws the
        noise and writes both in one kernel)."""
        dx = self.noisy_input(noise, sigma, x, fmt)
        return dx, (dx.unflatten(0, (-1, x.shape[0])) + x).flatten(0, 1)

    def conv_precompute(self, layer, dx, eps_y, n: int):
        """For a conv layer and a chunk of n iterations: ``A_k = wgrad(dh1, dx)`` (n, *V) and what
        :meth:`conv_chain` needs (here dh2 at the block's output resolution, (n, S*B, *y)). dx:
        (n*S, B, *x); eps_y: the :class:`NoiseBlock` of dy."""
        fmt, hp = layer.memory_format, layer.hp
        dh1 = self.dh1(layer.block, layer.x_noisy, layer.h0).contiguous(memory_format=fmt)
        d2 = self.dh2(layer.block, layer.y, eps_y, hp.noise, layer.a0)
        dx = dx.reshape(n, -1, *dx.shape[2:])
        dh1 = dh1.reshape(n, -1, *dh1.shape[1:])
        V = layer.weight   # A_k in V's layout: the chain subtracts it from a gradient laid out as V
        A = torch.empty_strided((n, *V.shape), (V.numel(), *V.stride()), dtype=V.dtype, device=V.device)
        for j in range(n):
            layer.wgrad(dh1[j], dx[j], out=A[j])
        return A, d2.reshape(n, -1, *d2.shape[1:])

    def conv_chain(self, layer, d2):
        """``dr_y = V * dh2`` and ``wgrad(dh2, dr_y)`` of one iteration, from what
        :meth:`conv_precompute` stored (here dh2 = ``layer.unpool(d2)``)."""
        dh2 = layer.unpool(d2).contiguous(memory_format=layer.memory_format)
        dr_y = layer.conv_t(dh2)
        return dr_y, layer.wgrad(dh2, dr_y)

    def conv_loss(self, layer, dr_y, A, V):
        """The loss of one iteration of a conv layer, ``scale * (||dr_y||^2 - 2 <A_k, V>)`` (a 0-dim
        tensor; a hook: the ``cuda`` backend makes it one fused reduction)."""
        return layer.scale * (dr_y.pow(2).sum() - 2 * (A * V).sum())

    def dh1(self, block, x_noisy, h0):
        """``h(F(x + dx)) - h0`` for a batch of noisy inputs (M*B, ...) and h0 (B, ...)."""
        y1, s1 = block.f(x_noisy)
        h1 = block.h(y1, s1)
        return h1.unflatten(0, (-1, h0.shape[0])).sub_(h0).flatten(0, 1)

    def dh2(self, block, y, eps, sigma, a0):
        """``act(y + sigma * eps) - a0`` for the noise ``eps`` (a :class:`NoiseBlock` of M*B rows), y
        and a0 = act(y) (B, ...): dh2 at the block's output resolution (behind a max-pool, the
        chain's dh2 is its unpooling at the clean switches: ``LayerState.unpool``)."""
        eps = eps.materialize(y.device, y.dtype)
        m = eps.shape[0] // y.shape[0]
        h2 = ACTIVATIONS[block.act]((sigma * eps).unflatten(0, (m, -1)).add_(y))
        return h2.sub_(a0).flatten(0, 1)

    def run_chunk(self, layer, report: str) -> None:
        """Run the iterations of ``layer``'s chunk, just precomputed, in order (a hook: the ``cpp`` backend
        runs a pooled conv layer's whole chunk in one call)."""
        first = layer.start + layer.loss_from(report)
        for k in range(layer.start, layer.start + layer.held):
            layer.iterate(k, k >= first)

    def run_interleaved(self, layers, report: str, reduce=None) -> None:
        """Run every layer's iterations on this thread, iteration k of every layer before k + 1
        (a hook: the ``triton`` backend replaces it with fused kernels and CUDA graphs)."""
        for k in range(max((lay.hp.iterations for lay in layers), default=0)):
            active = [lay for lay in layers if k < lay.hp.iterations]
            wants = [report == "all" or (report == "last" and k == lay.hp.iterations - 1) for lay in active]
            grads = [lay.gradient(k, want) for lay, want in zip(active, wants)]
            if reduce is not None:  # one bucket: every layer's gradient and reported loss
                pending = reduce(grads + [lay.losses[-1] for lay, want in zip(active, wants) if want])
                if callable(pending):   # in flight: precompute the chunks that start at k + 1 meanwhile
                    for lay in active:
                        if lay.start + lay.held == k + 1 < lay.hp.iterations:
                            lay.prepare(k + 1)
                    pending()
            self.step_layers(active, grads, k)

    def step_layers(self, layers, grads, k: int) -> None:
        """The momentum-SGD steps of iteration k of ``layers`` with their ``grads`` (a hook:
        the ``cuda`` backend makes them one fused launch)."""
        for lay, grad in zip(layers, grads):
            lay.apply(grad, k)

    def train(self, net, acts, switches, hparams, state, noise, step, report, memory_budget="default",
              sample_offset=0, reduce=None):
        budget = self.memory_budget if memory_budget == "default" else memory_budget
        blocks = net.block_list()[1:]
        names = net.feedback_names
        x0 = acts[0]
        for name, b in zip(names, blocks):
            w = b.g_op.weight
            if w.device != x0.device or w.dtype != x0.dtype:
                raise ValueError(f"feedback layer {name!r} has weights of {w.dtype} on {w.device} but the "
                                 f"activations are {x0.dtype} on {x0.device}: move the network with "
                                 f"net.to(device, dtype)")
        batch, esize = x0.shape[0], x0.element_size()
        # on a CPU each layer has its own chunk length (short for large layers, long for small ones)
        targets = cpu_chunk_targets(blocks, hparams, batch, esize) if x0.device.type == "cpu" else None
        most = max((hp.iterations for hp in hparams), default=1)
        budget = resolve_budget(budget, x0.device, minimum_memory_budget(blocks, hparams, batch, esize),
                                chunk_memory_budget(most, blocks, hparams, batch, esize, len(blocks), targets))
        # collectives run in the same order on every process: one thread, layers interleaved
        workers = 1 if reduce is not None else self.workers(x0.device, hparams, budget, blocks, batch, esize)
        chunk = plan_chunk(blocks, names, hparams, batch, esize, budget, workers, targets)
        chunks = [chunk] * len(hparams) if targets is None else [min(chunk, t) for t in targets]
        with torch.no_grad():
            layers = [LayerState(self, b, i, name, hp, acts[i - 1], acts[i], switches[i], state, noise, step,
                                 chunks[i - 1], sample_offset)
                      for i, (name, b, hp) in enumerate(zip(names, blocks, hparams), start=1)]
            if workers > 1:
                _run_concurrently(layers, report, workers)
            else:
                self.run_interleaved(layers, report, reduce)
            for layer in layers:
                layer.finish()
        stats = {}
        for layer in layers:
            losses = [float(v) for v in layer.losses]
            value = losses if report == "all" else (losses[0] if report == "last" and losses else None)
            stats[layer.name] = {"iterations": layer.hp.iterations, "loss": value}
        return stats


register_backend(TorchBackend(), priority=10)

#: The name this class had before 0.2 (still importable).
AnalyticBackend = TorchBackend
