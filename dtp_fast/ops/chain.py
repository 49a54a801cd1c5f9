"""The ``chain`` family: the sequential chain of L-DRL feedback training, compiled and in PyTorch.

``ldrl_loss(dr_y, A, V, scale)``
    The L-DRL loss of a conv feedback layer, both terms in one fused,
    deterministic reduction: ``scale * (sum(dr_y^2) - 2 sum(A * V))`` (sums in
    float64), a 0-dim tensor of V's dtype.
``linear_chain_(V, buf, A, C, lr, momentum, weight_decay, scale, loss_from)``
    Every iteration k of a precomputed chunk of a Linear feedback block in one
    call (one CUDA launch): ``G = V @ C[k]``; the loss
    ``scale * (<G, V> - 2 <A[k], V>)`` for k >= ``loss_from``;
    ``g = 2 scale (G - A[k]) + weight_decay V``; ``buf = momentum buf + g``;
    ``V -= lr buf``.

The wrappers call the compiled ops (CPU oracle or CUDA kernel; they raise when
the extension is unavailable); the ``*_ref`` functions are their references in
plain PyTorch (any device).
"""
from __future__ import annotations

import torch

from ._common import COMPILED_DTYPES, require_compiled

__all__ = ["ldrl_loss", "ldrl_loss_ref", "linear_chain_", "linear_chain_ref"]


def ldrl_loss(dr_y: torch.Tensor, A: torch.Tensor, V: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * (sum(dr_y^2) - 2 sum(A * V))`` in one fused, deterministic reduction (sums in
    float64), a 0-dim tensor of V's dtype. A has V's shape (any layouts); dr_y any shape."""
    require_compiled("ldrl_loss")
    return torch.ops.dtp_fast.ldrl_loss(dr_y, A, V, float(scale))


def ldrl_loss_ref(dr_y: torch.Tensor, A: torch.Tensor, V: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference of :func:`ldrl_loss`: the expression summed in float64, as a 0-dim tensor of V's dtype."""
    r, a, v = (t.double() for t in (dr_y, A, V))
    return (scale * (r.pow(2).sum() - 2 * (a * v).sum())).to(V.dtype)


def linear_chain_(V: torch.Tensor, buf: torch.Tensor, A: torch.Tensor, C: torch.Tensor, lr: float, momentum: float,
                  weight_decay: float, scale: float, loss_from: int | None = None) -> torch.Tensor:
    """Every iteration of a chunk of a Linear feedback block (see the module doc) in one call.

    V, buf (d_in, d_out) are updated in place; A (n, d_in, d_out), C (n, d_out, d_out); all
    contiguous, one dtype. Returns the losses of iterations loss_from .. n - 1 (None: no loss)."""
    require_compiled("linear_chain_")
    n = A.shape[0]
    return torch.ops.dtp_fast.linear_chain_(V, buf, A, C, float(lr), float(momentum), float(weight_decay),
                                            float(scale), n if loss_from is None else int(loss_from))


def linear_chain_ref(V: torch.Tensor, buf: torch.Tensor, A: torch.Tensor, C: torch.Tensor, lr: float,
                     momentum: float, weight_decay: float, scale: float, loss_from: int | None = None) -> torch.Tensor:
    """Reference of :func:`linear_chain_` (any device): the engine's per-iteration expressions."""
    n = A.shape[0]
    loss_from = n if loss_from is None else loss_from
    losses = []
    for k in range(n):
        G = V @ C[k]
        if k >= loss_from:
            losses.append(scale * ((G * V).sum() - 2 * (A[k] * V).sum()))
        grad = G.sub_(A[k]).mul_(2 * scale)
        if weight_decay:
            grad.add_(V, alpha=weight_decay)
        buf.mul_(momentum).add_(grad)
        V.add_(buf, alpha=-lr)
    return torch.stack(losses) if losses else V.new_zeros(0)


def _ldrl_loss_fake(dr_y, A, V, scale):
    op = "dtp_fast::ldrl_loss"
    torch._check(V.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    torch._check(dr_y.dtype == V.dtype and A.dtype == V.dtype, lambda: op + ": one dtype for dr_y, A, V")
    torch._check(A.shape == V.shape, lambda: op + ": A must have the shape of V")
    return V.new_empty(())


def _linear_chain_fake(V, buf, A, C, lr, momentum, weight_decay, scale, loss_from):
    op = "dtp_fast::linear_chain_"
    torch._check(V.dim() == 2 and A.dim() == 3 and C.dim() == 3, lambda: op + ": V 2-D, A and C 3-D")
    torch._check(V.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    torch._check(buf.dtype == V.dtype and A.dtype == V.dtype and C.dtype == V.dtype,
                 lambda: op + ": one dtype for V, buf, A, C")
    n = A.shape[0]
    torch._check(A.shape[1:] == V.shape and buf.shape == V.shape, lambda: op + ": A (n, *V.shape), buf V's")
    torch._check(C.shape == (n, V.shape[1], V.shape[1]), lambda: op + ": C must be (n, d_out, d_out)")
    torch._check(0 <= loss_from <= n, lambda: op + ": loss_from must be in [0, n]")
    return V.new_empty((n - loss_from,))


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::ldrl_loss": _ldrl_loss_fake,
    "dtp_fast::linear_chain_": _linear_chain_fake,
}
AUTOGRAD: dict = {}
