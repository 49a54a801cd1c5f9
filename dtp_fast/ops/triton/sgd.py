"""Momentum SGD of several tensors in one Triton launch (the ``sgd`` family).

``momentum_step_(params, bufs, grads, scalars, subtract=None)``
    The momentum-SGD step of up to :data:`SLOTS` tensors (layers) per launch,
    each with its own lr, momentum, weight decay and gradient form
    (``gs * (quad - A)``, the L-DRL gradient of :mod:`.chain`, or a plain
    gradient as ``torch.optim.SGD`` takes it).

Per-layer scalars are read from a small tensor of the compute dtype
(:func:`layer_scalars`, shared with :mod:`.chain`): float64 runs get float64
values, float32 runs the float32 roundings PyTorch's own ops use, and CUDA
graphs can capture launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["SLOTS", "check_dense", "dense_like", "layer_scalars", "momentum_step_"]

SLOTS = 4
# columns of the scalars table (constexpr: compiled kernels may only read constexpr globals)
LR = tl.constexpr(0)
MOMENTUM = tl.constexpr(1)
WEIGHT_DECAY = tl.constexpr(2)
GRAD_SCALE = tl.constexpr(3)
LOSS_SCALE = tl.constexpr(4)


def layer_scalars(rows, like: torch.Tensor) -> torch.Tensor:
    """A (len(rows), 5) tensor of ``like``'s dtype and device; each row is
    ``(lr, momentum, weight_decay, grad_scale, loss_scale)``."""
    return torch.tensor([[float(v) for v in r] for r in rows], dtype=like.dtype).to(like.device)


# ---------------------------------------------------------------------------- dense layouts
def dense_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with ref's strides (a copy only if they differ); both must be dense."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=ref.dtype, device=ref.device)
    return out.copy_(t)


def check_dense(t: torch.Tensor, name: str) -> None:
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"{name} must be dense (contiguous or channels_last), got strides {t.stride()}")


# ---------------------------------------------------------------------------- momentum SGD, several tensors
@triton.jit
def _momentum_one(V, BUF, Q, A, P, n, j, HAS_A: tl.constexpr, BLOCK: tl.constexpr):
    i = j.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < n
    lr = tl.load(P + LR)
    mom = tl.load(P + MOMENTUM)
    wd = tl.load(P + WEIGHT_DECAY)
    v = tl.load(V + i, mask=mask)
    g = tl.load(Q + i, mask=mask)
    if HAS_A:
        g = (g - tl.load(A + i, mask=mask)) * tl.load(P + GRAD_SCALE)
    g = g + wd * v
    buf = tl.load(BUF + i, mask=mask) * mom + g
    tl.store(BUF + i, buf, mask=mask)
    tl.store(V + i, v - lr * buf, mask=mask)


@triton.jit
def _momentum_kernel(V0, B0, Q0, A0, P0, n0, V1, B1, Q1, A1, P1, n1, V2, B2, Q2, A2, P2, n2,
                     V3, B3, Q3, A3, P3, n3, e1, e2, e3, HAS_A: tl.constexpr, BLOCK: tl.constexpr):
    """Programs [0, e1) update slot 0, [e1, e2) slot 1, [e2, e3) slot 2, the rest slot 3."""
    pid = tl.program_id(0)
    if pid < e1:
        _momentum_one(V0, B0, Q0, A0, P0, n0, pid, HAS_A, BLOCK)
    elif pid < e2:
        _momentum_one(V1, B1, Q1, A1, P1, n1, pid - e1, HAS_A, BLOCK)
    elif pid < e3:
        _momentum_one(V2, B2, Q2, A2, P2, n2, pid - e2, HAS_A, BLOCK)
    else:
        _momentum_one(V3, B3, Q3, A3, P3, n3, pid - e3, HAS_A, BLOCK)


def momentum_step_(params, bufs, grads, scalars, subtract=None, block: int = 2048) -> None:
    """One momentum-SGD step of every tensor in ``params``, :data:`SLOTS` tensors per launch.

    For each i: ``g = grads[i]`` (or ``(grads[i] - subtract[i]) * grad_scale``), then
    ``g += wd * p; buf = momentum * buf + g; p -= lr * buf`` (``torch.optim.SGD`` with
    dampening 0, no Nesterov, a zero initial buffer). ``scalars[i]`` is the row of
    :func:`layer_scalars` of tensor i (a (len(params), 5) tensor, or a list of rows).
    params and bufs are updated in place; every tensor must be dense, and grads /
    subtract are read in the layout of their param (copied if theirs differs).
    """
    n = len(params)
    if not (len(bufs) == len(grads) == n and (subtract is None or len(subtract) == n) and len(scalars) == n):
        raise ValueError("momentum_step_: params, bufs, grads, scalars (and subtract) need one entry per tensor")
    has_a = subtract is not None
    for s0 in range(0, n, SLOTS):
        args, ends, start = [], [], 0
        for i in range(s0, min(s0 + SLOTS, n)):
            p, b = params[i], bufs[i]
            check_dense(p, "param")
            if b.stride() != p.stride() or b.shape != p.shape:
                raise ValueError(f"momentum_step_: buffer {i} must have its param's shape and strides")
            q = dense_like(grads[i], p)
            a = dense_like(subtract[i], p) if has_a else q
            args += [p, b, q, a, scalars[i], p.numel()]
            start += triton.cdiv(p.numel(), block)
            ends.append(start)
        while len(ends) < SLOTS:  # empty slots: no programs
            args += args[:5] + [0]
            ends.append(start)
        if start:
            _momentum_kernel[(start,)](*args, *ends[:3], HAS_A=has_a, BLOCK=block)
