"""The memory planner of the precomputing backends (``torch``, ``cpp``, ``triton``, ``cuda``).

Every iteration's perturbations (dx, the noisy forward pass, dh1, dh2) do not
depend on the feedback weights, so a backend precomputes them for a *chunk* of
iterations at once. The chunk is the largest number of iterations whose stored
results (per iteration: dh2 at the block's output resolution, 4x smaller than
unpooled behind a 2x2 max-pool, and A_k for a conv block; A_k and C_k for a
Linear block), transient work and per-layer working memory (the chain's
tensors, the sparse chain's index lists) fit in the memory budget:

- :func:`resolve_budget` turns the user's budget (bytes, ``None`` for no limit,
  ``"auto"``) into bytes for a device;
- :func:`minimum_memory_budget` is what one iteration of every layer needs;
- :func:`plan_chunk` is the chunk length for a budget;
- on a CPU, :func:`cpu_chunk_targets` gives each layer its own chunk length
  (few long chunks for small layers, short ones that stay in cache for large
  layers), which :func:`plan_chunk` then caps to fit the budget.
"""
from __future__ import annotations

import math

import torch

from ..utils import available_memory

__all__ = ["DEFAULT_MEMORY_BUDGET", "AUTO_BUDGET_SHARE", "AUTO_BUDGET_MAX", "CPU_AUTO_ITERATIONS", "auto_memory_budget",
           "resolve_budget", "minimum_memory_budget", "chunk_memory_budget", "plan_chunk", "layer_memory",
           "CPU_CHUNK_BYTES", "cpu_chunk_targets"]

# The fast backends' default memory budget: "auto", a share of the memory the device has available.
DEFAULT_MEMORY_BUDGET = "auto"
AUTO_BUDGET_SHARE = 0.25
AUTO_BUDGET_MAX = 8 * 2**30
# On a CPU a layer's chunk is at least this many iterations (one was slower at width 0.5, batch 128) ...
CPU_AUTO_ITERATIONS = 2
# ... and otherwise about this many bytes of transient work (layer_memory): a large layer's chunks stay short
# (whole-phase chunks fell out of the caches and were slower:
# benchmarks/results/amd-epyc-2-cores-2026-12-02-cpu-memory-budget.md), a small layer's grow long, so that it
# pays the per-chunk calls (and, with several worker threads, the interpreter lock) a few times, not once per
# iteration (benchmarks/results/intel-xeon-2-cores-2026-12-03-sparse-engine.md).
CPU_CHUNK_BYTES = 12 * 2**20


def auto_memory_budget(device) -> tuple[int, int]:
    """``(budget, available)`` in bytes for ``device``: the budget is :data:`AUTO_BUDGET_SHARE` of the
    memory available (on a GPU: free memory plus what torch's caching allocator holds unused, so that the
    blocks it keeps after the first batch do not shrink the budget of the next; on a CPU: the host's
    available memory within its cgroup limit), rounded down to a power of two (so that the chunks, which it
    sizes, do not change from batch to batch as the free memory moves a little), at most
    :data:`AUTO_BUDGET_MAX`."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        available = free + max(0, cached)
    else:
        available = available_memory()
    share = int(available * AUTO_BUDGET_SHARE)
    return min(1 << max(share, 1).bit_length() - 1, AUTO_BUDGET_MAX), int(available)


def resolve_budget(budget, device, need: int, cpu_auto: int | None = None) -> int | None:
    """The byte budget of a run: an explicit one as it is (None: no limit); ``"auto"``: the
    :func:`auto_memory_budget` (on a CPU at most ``cpu_auto``, by default :data:`CPU_AUTO_ITERATIONS`
    times ``need``; the engine passes the :func:`chunk_memory_budget` of the :func:`cpu_chunk_targets`), raised to
    ``need`` (one iteration of every layer) when that fits in the memory available, with a clear error
    when it does not."""
    if budget != "auto":
        return budget
    auto, available = auto_memory_budget(device)
    if torch.device(device).type == "cpu":
        auto = min(auto, CPU_AUTO_ITERATIONS * need if cpu_auto is None else cpu_auto)
    if auto >= need:
        return auto
    if need <= available:
        return need
    raise ValueError(f"one feedback iteration of every layer needs {need / 2**20:.2f} MiB but only "
                     f"{available / 2**20:.2f} MiB of {torch.device(device).type} memory is available: lower the "
                     f"batch size or free memory")


def layer_memory(block, batch: int, samples: int, element_size: int) -> tuple[int, int, int]:
    """``(stored, transient, fixed)`` bytes of one layer: what one precomputed iteration keeps until it is
    used (dh2 at the block's output resolution and A_k, or A_k and C_k for a Linear block), what it needs
    while it is computed (noise, noisy inputs, the noisy forward pass and its switches, dh1, dh2; an upper
    bound), and what the layer holds for its whole phase: the chain's working tensors (the unpooled dh2
    and dr_y of one iteration) and, behind a max-pool, the switch index lists of the sparse chain (the
    ``cpp`` backend's, an upper bound: one entry per non-zero of dh2 and tap of the kernel)."""
    x, h, y, v = (math.prod(block.in_shape), math.prod(block.pre_pool_shape), math.prod(block.out_shape),
                  block.g_op.weight.numel())
    n = samples * batch
    if block.kind == "linear":
        return (v + h * h) * element_size, n * (3 * x + 3 * h + 6 * y) * element_size, 0
    stored = n * y + v
    transient = n * (3 * x + 3 * h + 6 * y)
    fixed = n * (h + x) * element_size
    if block.pool is not None:
        taps = math.prod(block.g_op.weight.shape[2:])
        fixed += 8 * (taps + 1) * n * y + 4 * n * math.prod(block.in_shape[1:]) + 4 * batch * h
    return stored * element_size, transient * element_size, fixed


def cpu_chunk_targets(blocks, hparams, batch: int, element_size: int) -> list[int]:
    """Each layer's chunk length on a CPU: the iterations whose transient work (:func:`layer_memory`) takes
    about :data:`CPU_CHUNK_BYTES`, at least :data:`CPU_AUTO_ITERATIONS`, at most the layer's iterations (and
    at least 1)."""
    out = []
    for b, hp in zip(blocks, hparams):
        transient = max(1, layer_memory(b, batch, hp.samples, element_size)[1])
        out.append(max(1, min(hp.iterations, max(CPU_AUTO_ITERATIONS, -(-CPU_CHUNK_BYTES // transient)))))
    return out


def minimum_memory_budget(blocks, hparams, batch: int, element_size: int, workers: int = 1) -> int:
    """The smallest budget that holds one iteration of every layer at once, with
    ``workers`` layers precomputing at the same time."""
    return chunk_memory_budget(1, blocks, hparams, batch, element_size, workers)


def chunk_memory_budget(n: int, blocks, hparams, batch: int, element_size: int, workers: int = 1,
                        targets=None) -> int:
    """The budget that holds chunks of ``n`` iterations of every layer (fewer for a layer with fewer, or with a
    smaller entry in ``targets``, the per-layer chunk lengths of :func:`cpu_chunk_targets`): every layer's
    stored chunk and its fixed bytes at once, plus the transients of the ``workers`` layers that precompute at
    the same time (the largest). :func:`plan_chunk` gives ``n`` for it."""
    total, transients = 0, []
    for i, (b, hp) in enumerate(zip(blocks, hparams)):
        if hp.iterations > 0:
            s, t, f = layer_memory(b, batch, hp.samples, element_size)
            k = min(n, hp.iterations, n if targets is None else targets[i])
            total += k * s + f
            transients.append(k * t)
    return total + sum(sorted(transients, reverse=True)[:workers])


def plan_chunk(blocks, names, hparams, batch: int, element_size: int, budget: int | None, workers: int = 1,
               targets=None) -> int:
    """The number of iterations every layer precomputes at once (at most its entry in ``targets``, when
    given: a layer's chunk is ``min(n, targets[i])``): the largest n whose chunks fit in ``budget`` bytes
    (None: no limit) with ``workers`` layers precomputing at the same time."""
    caps = [hp.iterations for hp in hparams] if targets is None else [
        min(hp.iterations, t) for hp, t in zip(hparams, targets)]
    most = max(caps, default=0)
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
    while n < most and chunk_memory_budget(n + 1, blocks, hparams, batch, element_size, workers, targets) <= budget:
        n += 1
    return n
