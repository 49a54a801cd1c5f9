"""The ``torch`` backend: L-DRL without autograd (ALGORITHM.md section 5).

Write G(y; I) = V * h(y; I) + c with h(y; I) = act(unpool(y, I)). With
dh1 = h(y1; I1) - h(y; I0) and dh2 = h(y + dy; I0) - h(y; I0):

    dr_y   = V * dh2
    grad_V = 2/(S B) * (wgrad(dh2, dr_y) - A_k),   A_k = wgrad(dh1, dx)
    loss   = 1/(S B) * (-2 <A_k, V> + ||dr_y||^2)      (only when reported)

where wgrad(h, g) is the weight gradient of the transposed convolution (or
matrix product) with input h and output gradient g, and <dx, V * dh1> =
<A_k, V> by adjointness. The bias c cancels and is left alone. Because F is
frozen, dx, the noisy forward pass, dh1, A_k and dh2 do not depend on V: they
are computed for a chunk of iterations at once, the noisy forward pass in one
batched call per layer, and only dh2 and the weight-sized A_k are kept. The
sequential chain is one transposed convolution, one weight gradient and the
momentum step per iteration. The layers are independent: on a CPU they are
spread over worker threads, elsewhere interleaved (iteration k of every layer
before iteration k + 1). For a Linear feedback block the chain runs on
small matrices: wgrad(dh2, V dh2) = V C_k with C_k = dh2^T dh2.
"""
from __future__ import annotations

import threading

import torch

from ..noise import NoiseBlock
from ..utils import available_memory
from .engine import register_backend

__all__ = ["AnalyticBackend", "DEFAULT_MEMORY_BUDGET", "AUTO_BUDGET_SHARE", "AUTO_BUDGET_MAX", "auto_memory_budget",
           "minimum_memory_budget", "plan_chunk"]

# The fast backends' default memory budget: "auto", a share of the memory the device has available.
DEFAULT_MEMORY_BUDGET = "auto"
AUTO_BUDGET_SHARE = 0.25
AUTO_BUDGET_MAX = 8 * 2**30


def auto_memory_budget(device) -> tuple[int, int]:
    """``(budget, available)`` in bytes for ``device``: the budget is :data:`AUTO_BUDGET_SHARE` of the
    memory available (free GPU memory, or the host's available memory within its cgroup limit), rounded
    down to a power of two (so that the chunks, which it sizes, do not change from batch to batch as the
    free memory moves a little), at most :data:`AUTO_BUDGET_MAX`."""
    device = torch.device(device)
    if device.type == "cuda":
        available, _ = torch.cuda.mem_get_info(device)
    else:
        available = available_memory()
    share = int(available * AUTO_BUDGET_SHARE)
    return min(1 << max(share, 1).bit_length() - 1, AUTO_BUDGET_MAX), int(available)


def resolve_budget(budget, device, need: int) -> int | None:
    """The byte budget of a run: an explicit one as it is (None: no limit); ``"auto"``: the
    :func:`auto_memory_budget`, raised to ``need`` (one iteration of every layer) when that fits in
    the memory available, with a clear error when it does not."""
    if budget != "auto":
        return budget
    auto, available = auto_memory_budget(device)
    if auto >= need:
        return auto
    if need <= available:
        return need
    raise ValueError(f"one feedback iteration of every layer needs {need / 2**20:.2f} MiB but only "
                     f"{available / 2**20:.2f} MiB of {torch.device(device).type} memory is available: lower the "
                     f"batch size or free memory")


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _stored_and_transient(block, batch: int, samples: int, element_size: int) -> tuple[int, int]:
    """Bytes one precomputed iteration of ``block`` keeps until it is used (dh2 and A_k,
    or A_k and C_k for a Linear block), and bytes it needs while it is computed
    (noise, noisy inputs, the noisy forward pass and its switches, dh1; an upper bound)."""
    x, h, y, v = (_numel(block.in_shape), _numel(block.pre_pool_shape), _numel(block.out_shape),
                  block.g_op.weight.numel())
    n = samples * batch
    if block.kind == "linear":
        stored = v + h * h
    else:
        stored = n * h + v
    transient = n * (3 * x + 4 * h + 4 * y)
    return stored * element_size, transient * element_size


def minimum_memory_budget(blocks, hparams, batch: int, element_size: int, workers: int = 1) -> int:
    """The smallest budget that holds one iteration of every layer at once, with
    ``workers`` layers precomputing at the same time."""
    return _chunk_bytes(1, blocks, hparams, batch, element_size, workers)


def _chunk_bytes(n, blocks, hparams, batch, element_size, workers=1) -> int:
    """Memory of chunks of n iterations: every layer's stored chunk at once, plus the
    transients of the ``workers`` layers that precompute at the same time (the largest)."""
    stored, transients = 0, []
    for b, hp in zip(blocks, hparams):
        if hp.iterations > 0:
            s, t = _stored_and_transient(b, batch, hp.samples, element_size)
            k = min(n, hp.iterations)
            stored += k * s
            transients.append(k * t)
    return stored + sum(sorted(transients, reverse=True)[:workers])


def plan_chunk(blocks, names, hparams, batch: int, element_size: int, budget: int | None, workers: int = 1) -> int:
    """The number of iterations every layer precomputes at once: the largest n whose
    chunks fit in ``budget`` bytes (None: no limit) with ``workers`` layers precomputing
    at the same time."""
    most = max((hp.iterations for hp in hparams), default=0)
    if budget is None:
        return max(1, most)
    need = minimum_memory_budget(blocks, hparams, batch, element_size, workers)
    if budget < need:
        raise ValueError(
            f"feedback memory budget of {budget / 2**20:.2f} MiB is too small for one iteration of every layer "
            f"of {', '.join(n for n, hp in zip(names, hparams) if hp.iterations)}; the minimum for this network "
            f"and batch is {need / 2**20:.2f} MiB ({need} bytes): raise memory_budget (--feedback-memory) or "
            f"lower the batch size")
    n = 1
    while n < most and _chunk_bytes(n + 1, blocks, hparams, batch, element_size, workers) <= budget:
        n += 1
    return n


def _empty_in(shape, fmt, like):
    """An uninitialised tensor of ``shape`` in memory format ``fmt``."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


class _Layer:
    """One layer's feedback training within one batch.

    Conv layers work in channels_last memory format (oneDNN's convolutions
    and weight gradients are up to 2x faster in it on CPUs) on working copies
    of V and its momentum buffer, written back by :meth:`finish`.
    """

    def __init__(self, engine, block, index, name, hp, x, y, switches, state, noise, step, chunk, offset=0):
        self.engine, self.block, self.index, self.name, self.hp = engine, block, index, name, hp
        self.linear = block.kind == "linear"
        fmt = torch.contiguous_format if self.linear else torch.channels_last
        self.fmt = fmt
        self.x, self.y, self.switches = x.contiguous(memory_format=fmt), y, switches
        self.noise, self.step, self.chunk, self.offset = noise, step, chunk, offset
        self.V = block.g_op.weight
        self.buf = state.buffer(name, "weight", self.V)
        self.Vw = self.V.detach().clone(memory_format=fmt)
        self.bufw = self.buf.clone(memory_format=fmt)
        self.h0 = block.h(y, switches).contiguous(memory_format=fmt)
        self.B = x.shape[0]
        self.scale = 1.0 / (hp.samples * self.B)
        self.start = 0          # first iteration held in the current chunk
        self.held = 0           # iterations held
        self.next_k = 0         # next iteration to run
        self.losses = []
        # multiply-adds of one iteration's transposed convolution (or matrix product): for scheduling
        self.cost = self.V.numel() * hp.samples * self.B * (1 if self.linear else _numel(block.pre_pool_shape[1:]))

    def remaining_cost(self) -> int:
        return (self.hp.iterations - self.next_k) * self.cost

    def run_chunk(self, report: str) -> None:
        """Precompute the next chunk of iterations and run them."""
        self._prepare(self.next_k)
        for k in range(self.start, self.start + self.held):
            self.iterate(k, report == "all" or (report == "last" and k == self.hp.iterations - 1))

    def chunks(self, report: str):
        """Precompute the layer's chunks in turn, for backends that run a whole chunk in one
        kernel; yields ``(k0, n, loss_from)``: the chunk's iterations ``k0 .. k0 + n - 1`` and
        the position in it of the first iteration whose loss is reported (``n``: none)."""
        iters, k = self.hp.iterations, 0
        while k < iters:
            self._prepare(k)
            n = self.held
            if report == "all":
                yield k, n, 0
            else:
                yield k, n, n - 1 if report == "last" and k + n == iters else n
            k += n
            self.next_k = k

    def finish(self) -> None:
        self.V.copy_(self.Vw)
        self.buf.copy_(self.bufw)

    # --------------------------------------------------------------- precompute
    def _prepare(self, k0: int) -> None:
        """A_k (and C_k or dh2) for iterations k0 .. k0 + n - 1, in one batched pass."""
        hp, B = self.hp, self.B
        self.A = self.C = self.stored = None      # the previous chunk's, no longer needed
        n = min(self.chunk, hp.iterations - k0)
        SB = hp.samples * B
        fmt = self.fmt
        def noise_of(which, like):
            return NoiseBlock(self.noise, self.step, self.index, which, k0, n, hp.samples, self.offset,
                              tuple(like.shape))
        dx = self.engine.noisy_input(noise_of("x", self.x), hp.noise, self.x, fmt).unflatten(0, (-1, B))
        eps_y = noise_of("y", self.y)
        if self.linear:
            dh1 = self.engine.dh1(self.block, (dx + self.x).flatten(0, 1), self.h0)        # (n*S*B, *h)
            dh2 = self.engine.dh2(self.block, self.y, eps_y, hp.noise, self.switches, self.h0)
            dx, dh1, dh2 = (t.reshape(n, SB, -1) for t in (dx, dh1, dh2))
            self.A = torch.bmm(dx.transpose(1, 2), dh1)      # (n, d_in, d_out)
            self.C = torch.bmm(dh2.transpose(1, 2), dh2)     # (n, d_out, d_out)
        else:
            self.A, self.stored = self.engine.conv_precompute(self, dx, eps_y, n)
        self.start, self.held = k0, n

    # --------------------------------------------------------------- the chain
    def _conv_t(self, h):
        g = self.block.g_op
        return torch.nn.functional.conv_transpose2d(h, self.Vw, None, g.stride, g.padding, g.output_padding, 1,
                                                    g.dilation)

    def _wgrad(self, inp, grad_out):
        """Weight gradient of conv_transpose2d(inp, V) given grad_out: by adjointness,
        the weight gradient of conv2d(grad_out, V) given inp."""
        g = self.block.g_op
        return torch.ops.aten.convolution_backward(
            inp, grad_out, self.Vw, None, g.stride, g.padding, g.dilation, False, [0, 0], 1,
            [False, True, False])[1]

    def iterate(self, k: int, want_loss: bool) -> None:
        self.apply(self.gradient(k, want_loss), k)

    def gradient(self, k: int, want_loss: bool) -> torch.Tensor:
        """The gradient of iteration k (and its loss, appended to ``losses``, if wanted)."""
        if k >= self.start + self.held:
            self._prepare(k)
        j = k - self.start
        V, A = self.Vw, self.A[j]
        if self.linear:
            quad = V @ self.C[j]                   # wgrad(dh2, V dh2)
            if want_loss:
                self.losses.append(self.scale * ((quad * V).sum() - 2 * (A * V).sum()))
        else:
            dr_y, quad = self.engine.conv_chain(self, self.stored[j])
            if want_loss:
                self.losses.append(self.engine.conv_loss(self, dr_y, A, V))
        return quad.sub_(A).mul_(2 * self.scale)

    def apply(self, grad: torch.Tensor, k: int) -> None:
        """The momentum-SGD step of iteration k with ``grad``."""
        hp, V = self.hp, self.Vw
        if hp.weight_decay:
            grad.add_(V, alpha=hp.weight_decay)
        self.bufw.mul_(hp.momentum).add_(grad)
        V.add_(self.bufw, alpha=-hp.lr)
        self.next_k = k + 1


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
        return max(idle, key=_Layer.remaining_cost, default=None)

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


class AnalyticBackend:
    """Autograd-free L-DRL with plain PyTorch ops; runs on any device.

    Subclasses replace :meth:`dh1` and :meth:`dh2` (the elementwise part of
    the precomputation) with fused kernels.
    """
    name = "torch"

    def __init__(self, memory_budget: int | str | None = DEFAULT_MEMORY_BUDGET, threads: int | None = None):
        # bytes the precomputed perturbations may take; "auto": see resolve_budget; None: no limit
        self.memory_budget = memory_budget
        # CPU threads to spread the layers over (None: torch.get_num_threads()); see _workers
        self.threads = threads

    def _workers(self, device, hparams, budget, blocks, batch, element_size) -> int:
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
        return torch.mul(eps, sigma, out=_empty_in(eps.shape, fmt, eps))

    def conv_precompute(self, layer, dx, eps_y, n: int):
        """For a conv layer and a chunk of n iterations: ``A_k = wgrad(dh1, dx)`` (n, *V) and what
        :meth:`conv_chain` needs (here dh2, (n, S*B, *h)). dx: (n*S, B, *x); eps_y: the
        :class:`NoiseBlock` of dy."""
        fmt, hp = layer.fmt, layer.hp
        dh1 = self.dh1(layer.block, (dx + layer.x).flatten(0, 1), layer.h0).contiguous(memory_format=fmt)
        dh2 = self.dh2(layer.block, layer.y, eps_y, hp.noise, layer.switches, layer.h0)
        dh2 = dh2.contiguous(memory_format=fmt)
        dx = dx.reshape(n, -1, *dx.shape[2:])
        dh1 = dh1.reshape(n, -1, *dh1.shape[1:])
        A = torch.stack([layer._wgrad(dh1[j], dx[j]) for j in range(n)])
        return A, dh2.reshape(n, -1, *dh2.shape[1:])

    def conv_chain(self, layer, dh2):
        """``dr_y = V * dh2`` and ``wgrad(dh2, dr_y)`` of one iteration."""
        dr_y = layer._conv_t(dh2)
        return dr_y, layer._wgrad(dh2, dr_y)

    def conv_loss(self, layer, dr_y, A, V):
        """The loss of one iteration of a conv layer, ``scale * (||dr_y||^2 - 2 <A_k, V>)`` (a 0-dim
        tensor; a hook: the ``cuda`` backend makes it one fused reduction)."""
        return layer.scale * (dr_y.pow(2).sum() - 2 * (A * V).sum())

    def dh1(self, block, x_noisy, h0):
        """``h(F(x + dx)) - h0`` for a batch of noisy inputs (M*B, ...) and h0 (B, ...)."""
        y1, s1 = block.f(x_noisy)
        h1 = block.h(y1, s1)
        return h1.unflatten(0, (-1, h0.shape[0])).sub_(h0).flatten(0, 1)

    def dh2(self, block, y, eps, sigma, switches, h0):
        """``h(y + sigma * eps; I0) - h0`` for the noise ``eps`` (a :class:`NoiseBlock` of M*B rows),
        y and switches (B, ...)."""
        eps = eps.materialize(y.device, y.dtype)
        m = eps.shape[0] // y.shape[0]
        sw = None if switches is None else switches.repeat(m, *([1] * (switches.dim() - 1)))
        h2 = block.h((sigma * eps).unflatten(0, (m, -1)).add_(y).flatten(0, 1), sw)
        return h2.unflatten(0, (m, -1)).sub_(h0).flatten(0, 1)

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
                            lay._prepare(k + 1)
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
        budget = resolve_budget(budget, x0.device, minimum_memory_budget(blocks, hparams, batch, esize))
        # collectives run in the same order on every process: one thread, layers interleaved
        workers = 1 if reduce is not None else self._workers(x0.device, hparams, budget, blocks, batch, esize)
        chunk = plan_chunk(blocks, names, hparams, batch, esize, budget, workers)
        with torch.no_grad():
            layers = [_Layer(self, b, i, name, hp, acts[i - 1], acts[i], switches[i], state, noise, step, chunk,
                             sample_offset)
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


register_backend(AnalyticBackend(), priority=10)
