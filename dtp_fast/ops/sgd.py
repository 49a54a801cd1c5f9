"""The ``sgd`` family: momentum SGD of many tensors in one call (``momentum_sgd_``) and its reference.

Per tensor i, with its own hyperparameters (``torch.optim.SGD`` with dampening 0, no Nesterov)::

    g = grads[i] + weight_decay[i] * params[i]
    bufs[i] = momentum[i] * bufs[i] + g
    params[i] -= lr[i] * bufs[i]

:func:`momentum_sgd_` is the compiled op (CPU oracle, or one CUDA launch per 24 tensors);
:func:`momentum_sgd_ref` is the PyTorch reference, which the feedback engine uses
(``dtp_fast.feedback.momentum_sgd_``), with its data-parallel ``reduce`` hook.
"""
from __future__ import annotations

import torch

from ._common import require_compiled

__all__ = ["momentum_sgd_", "momentum_sgd_ref"]


@torch.no_grad()
def momentum_sgd_(params, grads, bufs, lr, momentum, weight_decay) -> None:
    """Momentum SGD of many tensors in one ``dtp_fast::momentum_sgd_`` call (one CUDA launch per 24
    tensors), as :func:`momentum_sgd_ref` tensor by tensor. The hyperparameters are sequences (one
    value per tensor) or single floats. Params and bufs must be dense with the same strides."""
    require_compiled("momentum_sgd_")
    n = len(params)
    per = lambda v: [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)] * n  # noqa: E731
    torch.ops.dtp_fast.momentum_sgd_(list(params), list(grads), list(bufs), per(lr), per(momentum),
                                     per(weight_decay))


@torch.no_grad()
def momentum_sgd_ref(params, grads, bufs, lr: float, momentum: float, weight_decay: float = 0.0,
                     reduce=None, losses=()) -> None:
    """In-place SGD with momentum, as ``torch.optim.SGD`` (dampening 0, no Nesterov).

    With a ``reduce`` hook (see :func:`dtp_fast.feedback.train_feedback`) the gradients and ``losses``
    are averaged across processes first, in one bucket."""
    if reduce is not None:
        pending = reduce(list(grads) + list(losses))
        if callable(pending):
            pending()
    for p, g, buf in zip(params, grads, bufs):
        if weight_decay:
            g = g.add(p, alpha=weight_decay)
        buf.mul_(momentum).add_(g)
        p.add_(buf, alpha=-lr)


def _momentum_sgd_fake(params, grads, bufs, lr, momentum, weight_decay):
    torch._check(len(params) == len(grads) == len(bufs) == len(lr) == len(momentum) == len(weight_decay),
                 lambda: "dtp_fast::momentum_sgd_: one grad, buffer and setting per parameter")


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::momentum_sgd_": _momentum_sgd_fake,
}
AUTOGRAD: dict = {}
