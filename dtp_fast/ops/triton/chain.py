"""The sequential chain of L-DRL feedback training as Triton kernels (the ``chain`` family).

With ``quad_k = wgrad(dh2_k, V * dh2_k)`` (``V C_k`` for a Linear block) and
``A_k = wgrad(dh1_k, dx_k)`` (ALGORITHM.md section 5), iteration k of a layer is

    loss_k = ls * (||dr_y||^2 - 2 <A_k, V>)                (only when reported)
    g      = gs * (quad_k - A_k) + wd * V,     gs = 2 / (S B), ls = 1 / (S B)
    buf    = momentum * buf + g
    V      = V - lr * buf

Kernels:

``ldrl_loss_(out, dr_y, A, V, scalars)``
    Both terms of the loss: one launch writes a partial sum per block, which
    ``torch.sum`` then adds up in a fixed order (no atomics: the same bits on
    every run).
``linear_chain_(V, buf, A, C, ...)``
    Every iteration of a Linear feedback block in one launch: each program owns a
    block of rows of V (rows are independent: row i of ``V C_k`` needs only row i
    of V) and loops over the iterations, tiling ``V C_k`` over columns; each
    program writes its share of every reported loss, summed afterwards in a fixed
    order (no atomics).

The momentum step of several layers at once is :func:`.sgd.momentum_step_`.
Per-layer scalars are read from a small tensor of the compute dtype
(:func:`.sgd.layer_scalars`): float64 runs get float64 values, float32 runs the
float32 roundings PyTorch's own ops use, and CUDA graphs can capture launches.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sgd import GRAD_SCALE, LOSS_SCALE, LR, MOMENTUM, WEIGHT_DECAY, check_dense, dense_like

__all__ = ["ldrl_loss_", "linear_chain_"]


# ---------------------------------------------------------------------------- the loss
@triton.jit
def _loss_kernel(PART, R, A, V, P, n_r, n_v, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    r = tl.load(R + i, mask=i < n_r, other=0.0)
    a = tl.load(A + i, mask=i < n_v, other=0.0)
    v = tl.load(V + i, mask=i < n_v, other=0.0)
    part = tl.sum(r * r, axis=0) - 2.0 * tl.sum(a * v, axis=0)
    tl.store(PART + pid, part * tl.load(P + LOSS_SCALE))


def ldrl_loss_(out: torch.Tensor, dr_y: torch.Tensor, A: torch.Tensor, V: torch.Tensor, scalars: torch.Tensor,
               block: int = 4096) -> torch.Tensor:
    """``out += ls * (sum(dr_y^2) - 2 sum(A * V))``, ``ls = scalars[LOSS_SCALE]``; out a one-element
    tensor (a view into a table of losses is fine). dr_y, A, V dense; A is read in V's layout."""
    check_dense(dr_y, "dr_y")
    check_dense(V, "V")
    A = dense_like(A, V)
    n = max(dr_y.numel(), V.numel())
    grid = triton.cdiv(n, block)
    parts = torch.empty(grid, dtype=out.dtype, device=out.device)
    _loss_kernel[(grid,)](parts, dr_y, A, V, scalars, dr_y.numel(), V.numel(), BLOCK=block)
    return out.add_(parts.sum())


# ---------------------------------------------------------------------------- Linear blocks: one launch
@triton.jit
def _linear_chain_kernel(V, BUF, A, C, G, LOSS, P, n_iters, loss_from, d_in, d_out,
                         BI: tl.constexpr, BJ: tl.constexpr, BK: tl.constexpr):
    """Rows [pid * BI, pid * BI + BI) of V for all n_iters iterations. V, BUF, G: (d_in, d_out),
    A: (n, d_in, d_out), C: (n, d_out, d_out), all contiguous; LOSS[k, pid] = this program's
    share of the loss of iteration k for k >= loss_from (LOSS: (n, programs))."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BI + tl.arange(0, BI)
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
            tl.store(LOSS + k * tl.num_programs(0) + pid, (sq - 2.0 * dot) * ls)
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
    if losses is not None and losses.numel() < n:
        raise ValueError(f"linear_chain_: losses needs {n} entries, got {losses.numel()}")
    loss_from = n if losses is None or loss_from is None else loss_from
    scratch = torch.empty_like(V) if scratch is None else scratch
    bj = _tile(d_out, cols)
    grid = triton.cdiv(d_in, rows)
    parts = V.new_zeros(n if loss_from < n else 1, grid)   # each program's share of each reported loss
    _linear_chain_kernel[(grid,)](V, buf, A, C, scratch, parts, scalars, n, loss_from, d_in, d_out,
                                  BI=max(16, rows), BJ=bj, BK=bj)
    if loss_from < n:
        losses[loss_from:n] += parts[loss_from:].sum(1)
