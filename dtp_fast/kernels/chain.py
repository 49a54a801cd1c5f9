"""The sequential chain of L-DRL feedback training as Triton kernels.

With ``quad_k = wgrad(dh2_k, V * dh2_k)`` (``V C_k`` for a Linear block) and
``A_k = wgrad(dh1_k, dx_k)`` (ALGORITHM.md section 5), iteration k of a layer is

    loss_k = ls * (||dr_y||^2 - 2 <A_k, V>)                (only when reported)
    g      = gs * (quad_k - A_k) + wd * V,     gs = 2 / (S B), ls = 1 / (S B)
    buf    = momentum * buf + g
    V      = V - lr * buf

Kernels:

``ldrl_loss_(out, dr_y, A, V, scalars)``
    Both terms of the loss in one reduction launch (atomically added to ``out``,
    which must hold 0: the order of the additions is not fixed).
``momentum_step_(...)``
    The momentum-SGD step of up to :data:`SLOTS` tensors (layers) in one launch,
    each with its own lr, momentum, weight decay and gradient form
    (``gs * (quad - A)``, or a plain gradient as ``torch.optim.SGD`` takes it).
``linear_chain_(V, buf, A, C, ...)``
    Every iteration of a Linear feedback block in one launch: each program owns a
    block of rows of V (rows are independent: row i of ``V C_k`` needs only row i
    of V) and loops over the iterations, tiling ``V C_k`` over columns.

Per-layer scalars are read from a small tensor of the compute dtype
(:func:`layer_scalars`): float64 runs get float64 values, float32 runs the
float32 roundings PyTorch's own ops use, and CUDA graphs can capture launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["SLOTS", "layer_scalars", "ldrl_loss_", "momentum_step_", "linear_chain_"]

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


# ---------------------------------------------------------------------------- the loss
@triton.jit
def _loss_kernel(OUT, R, A, V, P, n_r, n_v, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r = tl.load(R + i, mask=i < n_r, other=0.0)
    a = tl.load(A + i, mask=i < n_v, other=0.0)
    v = tl.load(V + i, mask=i < n_v, other=0.0)
    part = tl.sum(r * r, axis=0) - 2.0 * tl.sum(a * v, axis=0)
    tl.atomic_add(OUT, part * tl.load(P + LOSS_SCALE))


def _dense_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with ref's strides (a copy only if they differ); both must be dense."""
    if t.stride() == ref.stride():
        return t
    out = torch.empty_strided(ref.shape, ref.stride(), dtype=ref.dtype, device=ref.device)
    return out.copy_(t)


def _check_dense(t: torch.Tensor, name: str) -> None:
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"{name} must be dense (contiguous or channels_last), got strides {t.stride()}")


def ldrl_loss_(out: torch.Tensor, dr_y: torch.Tensor, A: torch.Tensor, V: torch.Tensor, scalars: torch.Tensor,
               block: int = 4096) -> torch.Tensor:
    """``out += ls * (sum(dr_y^2) - 2 sum(A * V))``, ``ls = scalars[LOSS_SCALE]``; out a one-element
    tensor (a view into a table of losses is fine). dr_y, A, V dense; A is read in V's layout."""
    _check_dense(dr_y, "dr_y")
    _check_dense(V, "V")
    A = _dense_like(A, V)
    n = max(dr_y.numel(), V.numel())
    _loss_kernel[(triton.cdiv(n, block),)](out, dr_y, A, V, scalars, dr_y.numel(), V.numel(), BLOCK=block)
    return out


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
            _check_dense(p, "param")
            if b.stride() != p.stride() or b.shape != p.shape:
                raise ValueError(f"momentum_step_: buffer {i} must have its param's shape and strides")
            q = _dense_like(grads[i], p)
            a = _dense_like(subtract[i], p) if has_a else q
            args += [p, b, q, a, scalars[i], p.numel()]
            start += triton.cdiv(p.numel(), block)
            ends.append(start)
        while len(ends) < SLOTS:  # empty slots: no programs
            args += args[:5] + [0]
            ends.append(start)
        if start:
            _momentum_kernel[(start,)](*args, *ends[:3], HAS_A=has_a, BLOCK=block)


# ---------------------------------------------------------------------------- Linear blocks: one launch
@triton.jit
def _linear_chain_kernel(V, BUF, A, C, G, LOSS, P, n_iters, loss_from, d_in, d_out,
                         BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
    """Rows [pid * BI, pid * BI + BI) of V for all n_iters iterations. V, BUF, G: (d_in, d_out),
    A: (n, d_in, d_out), C: (n, d_out, d_out), all contiguous; LOSS[k] += the loss of
    iteration k for k >= loss_from."""
    rows = tl.program_id(0).to(tl.int64) * BI + tl.arange(0, BI)
    rmask = rows < d_in
    lr = tl.load(P + LR)
    mom = tl.load(P + MOMENTUM)
    wd = tl.load(P + WEIGHT_DECAY)
    gs = tl.load(P + GRAD_SCALE)
    ls = tl.load(P + LOSS_SCALE)
    vrow = V + rows[:, None] * d_out
    a_k = A + rows[:, None] * d_out  # iteration k's pointers, bumped at the end of each iteration
    c_k = C
    for k in range(n_iters):
        sq = tl.sum(tl.zeros([BI], dtype=V.dtype.element_ty), axis=0)
        dot = sq
        # G = gs * (V C_k - A_k) + wd * V, one tile of columns at a time
        for j0 in range(0, d_out, BJ):
            cols = j0 + tl.arange(0, BJ)
            m2 = rmask[:, None] & (cols[None, :] < d_out)
            acc = tl.zeros([BI, BJ], dtype=V.dtype.element_ty)
            for r0 in range(0, d_out, BK):
                red = r0 + tl.arange(0, BK)
                v = tl.load(vrow + red[None, :], mask=rmask[:, None] & (red[None, :] < d_out), other=0.0)
                c = tl.load(c_k + red[:, None] * d_out + cols[None, :],
                            mask=(red[:, None] < d_out) & (cols[None, :] < d_out), other=0.0)
                acc += tl.dot(v, c, input_precision="ieee")
            a = tl.load(a_k + cols[None, :], mask=m2, other=0.0)
            v = tl.load(vrow + cols[None, :], mask=m2, other=0.0)
            sq += tl.sum(tl.sum(acc * v, axis=1), axis=0)
            dot += tl.sum(tl.sum(a * v, axis=1), axis=0)
            tl.store(G + rows[:, None] * d_out + cols[None, :], (acc - a) * gs + wd * v, mask=m2)
        tl.debug_barrier()  # G written by other threads of this program
        for j0 in range(0, d_out, BJ):
            cols = j0 + tl.arange(0, BJ)
            m2 = rmask[:, None] & (cols[None, :] < d_out)
            off = rows[:, None] * d_out + cols[None, :]
            buf = tl.load(BUF + off, mask=m2, other=0.0) * mom + tl.load(G + off, mask=m2, other=0.0)
            tl.store(BUF + off, buf, mask=m2)
            tl.store(V + off, tl.load(V + off, mask=m2, other=0.0) - lr * buf, mask=m2)
        tl.debug_barrier()  # V read by other threads in the next iteration
        if k >= loss_from:
            tl.atomic_add(LOSS + k, (sq - 2.0 * dot) * ls)
        a_k += d_in * d_out
        c_k += d_out * d_out


def _tile(d: int, most: int) -> int:
    return max(16, min(most, triton.next_power_of_2(d)))


def linear_chain_(V: torch.Tensor, buf: torch.Tensor, A: torch.Tensor, C: torch.Tensor, scalars: torch.Tensor,
                  losses: torch.Tensor | None = None, loss_from: int | None = None, *, rows: int = 16,
                  cols: int = 64, scratch: torch.Tensor | None = None) -> None:
    """Run ``n = A.shape[0]`` iterations of a Linear feedback block in one launch.

    V, buf: (d_in, d_out) contiguous, updated in place; A: (n, d_in, d_out) and C:
    (n, d_out, d_out), contiguous; scalars: the layer's row of :func:`layer_scalars`;
    losses: n values (zero) receiving the loss of iterations ``loss_from .. n - 1``
    (None: no loss). ``V C_k`` is an fp32 (IEEE, not TF32) matrix product.
    """
    n = A.shape[0]
    d_in, d_out = V.shape
    for t, name, shape in ((V, "V", (d_in, d_out)), (buf, "buf", (d_in, d_out)), (A, "A", (n, d_in, d_out)),
                           (C, "C", (n, d_out, d_out))):
        if tuple(t.shape) != shape or not t.is_contiguous() or t.dtype != V.dtype:
            raise ValueError(f"linear_chain_: {name} must be a contiguous {shape} tensor of {V.dtype}, got "
                             f"{tuple(t.shape)} {t.dtype}")
    if n == 0:
        return
    if losses is None:
        losses, loss_from = V.new_zeros(1), n  # never written
    elif losses.numel() < n:
        raise ValueError(f"linear_chain_: losses needs {n} entries, got {losses.numel()}")
    loss_from = n if loss_from is None else loss_from
    scratch = torch.empty_like(V) if scratch is None else scratch
    bj = _tile(d_out, cols)
    grid = (triton.cdiv(d_in, rows),)
    _linear_chain_kernel[grid](V, buf, A, C, scratch, losses, scalars, n, loss_from, d_in, d_out,
                               BI=max(16, rows), BJ=bj, BK=bj)
