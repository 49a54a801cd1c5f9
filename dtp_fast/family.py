"""The DTP family the paper compares L-DRL with, on the same networks and trainer.

Each method is a feedback-training rule plus a target rule:

| algo       | feedback layers          | feedback loss (per layer, noise sigma)        | targets                              |
|------------|--------------------------|-----------------------------------------------|--------------------------------------|
| `ldrl`     | G_i (layer-wise)         | L-DRL (ALGORITHM.md section 3)                 | t_{i-1} = s_{i-1} + G_i(t_i) - G_i(s_i) |
| `parallel` | G_i                      | L-DRL, one iteration, several noise samples    | difference                           |
| `dtp`      | G_i                      | ||x + dx - G(F(x + dx))||^2 (Lee et al. 2015)  | difference                           |
| `tp`       | G_i                      | ||x + dx - G(F(x + dx))||^2                    | t_{i-1} = G_i(t_i)                   |
| `drl`      | Q_i: output -> s_i, linear | ||Q_i (F_{>i}(s_i + ds) - F_{>i}(s_i)) - ds||^2 | t_i = s_i + Q_i (t_{N-1} - s_{N-1})  |

`drl` follows Meulemans et al. 2020: direct linear feedback from the output
to every hidden layer, trained by reconstructing noise sent through the upper
layers. Its feedback layers are an extra ``net.direct`` module (one
bias-free Linear per block except the last); per-layer hyperparameters apply
to Q_0 .. Q_{N-2} in order. These methods run with autograd, one layer after
another, like the `reference` backend (the fast engines implement L-DRL).
"""
from __future__ import annotations

import torch
from torch import nn

from .feedback import FeedbackState, momentum_sgd_

__all__ = ["FEEDBACK_ALGOS", "TARGET_RULES", "ensure_direct_feedback", "train_family_feedback",
           "reconstruction_loss", "drl_loss", "symmetric_feedback_"]

# algo -> target rule used by the forward phase
TARGET_RULES = {"ldrl": "difference", "parallel": "difference", "dtp": "difference", "tp": "tp", "drl": "direct"}
FEEDBACK_ALGOS = tuple(TARGET_RULES)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def ensure_direct_feedback(net) -> nn.ModuleDict:
    """The direct feedback layers Q_i of ``drl`` (created once, default initialisation)."""
    if not hasattr(net, "direct"):
        w = next(net.parameters())
        blocks = net.block_list()
        net.direct = nn.ModuleDict({
            name: nn.Linear(net.num_classes, _numel(b.out_shape), bias=False, device=w.device, dtype=w.dtype)
            for name, b in zip(net.names[:-1], blocks[:-1])})
    return net.direct


def reconstruction_loss(block, x, eps, sigma: float) -> torch.Tensor:
    """Vanilla DTP/TP feedback loss: ``mean_b sum_f (x + dx - G(F(x + dx)))^2`` with ``dx = sigma * eps``."""
    xn = x + sigma * eps
    with torch.no_grad():
        y, switches = block.f(xn)
    return (xn - block.g(y, switches)).pow(2).flatten(1).sum(1).mean()


def upper_forward(net, i: int, s: torch.Tensor) -> torch.Tensor:
    """``F_{N-1} o ... o F_{i+1}(s)``: the output reached from block i's output."""
    for b in net.block_list()[i + 1:]:
        s = b.f(s)[0]
    return s


def drl_loss(net, i: int, s, eps, sigma: float, clean=None) -> torch.Tensor:
    """DRL loss of Q_i: ``mean_b ||Q_i (F_{>i}(s + ds) - F_{>i}(s)) - ds||^2`` with ``ds = sigma * eps``;
    ``clean``: ``F_{>i}(s)`` if the caller has it (the forward weights are frozen in a feedback phase)."""
    ds = sigma * eps
    with torch.no_grad():
        if clean is None:
            clean = upper_forward(net, i, s)
        delta = upper_forward(net, i, s + ds) - clean
    q = net.direct[net.names[i]]
    return (q(delta) - ds.flatten(1)).pow(2).sum(1).mean()


def train_family_feedback(algo: str, net, acts, switches, hparams, state: FeedbackState, noise, step: int,
                          report: str = "last", sample_offset: int = 0, reduce=None) -> dict:
    """Feedback phase of ``dtp``, ``tp`` or ``drl`` for one batch (autograd, layer after layer).
    ``sample_offset`` and ``reduce`` as in :func:`dtp_fast.feedback.train_feedback`."""
    if algo not in ("dtp", "tp", "drl"):
        raise ValueError(f"train_family_feedback handles dtp, tp and drl, not {algo!r}")
    blocks = net.block_list()
    stats = {}
    if algo == "drl":
        ensure_direct_feedback(net)
        names = net.names[:-1]
    else:
        names = net.feedback_names
    for j, (name, hp) in enumerate(zip(names, hparams)):
        i = j if algo == "drl" else j + 1          # block index of the trained feedback layer
        params = ([net.direct[name].weight] if algo == "drl"
                  else [blocks[i].g_op.weight, blocks[i].g_op.bias])
        bufs = [state.buffer(name, p_name, p) for p_name, p in zip(("weight", "bias"), params)]
        src = acts[i] if algo == "drl" else acts[i - 1]
        clean = None
        if algo == "drl" and hp.iterations:   # F_{>i}(s_i), the same for every iteration: computed once
            with torch.no_grad():
                clean = upper_forward(net, i, src)
        losses = []
        for k in range(hp.iterations):
            with torch.enable_grad():
                total = 0.0
                for s in range(hp.samples):
                    eps = noise.normal(step=step, layer=i, iteration=k, sample=s, which="x", shape=src.shape,
                                       device=src.device, dtype=src.dtype, offset=sample_offset)
                    total = total + (drl_loss(net, i, src, eps, hp.noise, clean) if algo == "drl"
                                     else reconstruction_loss(blocks[i], src, eps, hp.noise))
                loss = total / hp.samples
                grads = list(torch.autograd.grad(loss, params))
            loss = loss.detach()
            momentum_sgd_(params, grads, bufs, hp.lr, hp.momentum, hp.weight_decay, reduce, [loss])
            if report == "all" or (report == "last" and k == hp.iterations - 1):
                losses.append(float(loss.detach()))
        value = losses if report == "all" else (losses[0] if losses else None)
        stats[name] = {"iterations": hp.iterations, "loss": value}
    return stats


@torch.no_grad()
def symmetric_feedback_(net) -> None:
    """Set every feedback weight to its forward weight transposed (Linear) or equal (conv)."""
    for b in net.block_list()[1:]:
        w = b.f_op.weight
        b.g_op.weight.copy_(w.t() if b.kind == "linear" else w)
