"""The forward phase of DTP (ALGORITHM.md section 2.B) and the backprop baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["first_target", "propagate_targets", "local_loss", "local_losses", "dtp_loss", "bp_loss"]


def first_target(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """``t_{N-1} = logits - beta * dCE/dlogits`` with CE summed over the batch
    (closed form: ``softmax(logits) - onehot(labels)``)."""
    logits = logits.detach()
    grad = torch.softmax(logits, dim=1)
    grad[torch.arange(len(labels), device=labels.device), labels] -= 1
    return logits - beta * grad


@torch.no_grad()
def propagate_targets(net, acts, switches, top_target: torch.Tensor, rule: str = "difference") -> list[torch.Tensor]:
    """Targets ``t_0 .. t_{N-1}`` from the output target downward, with the clean pass's switches.

    rule ``"difference"`` (DTP): ``t_{i-1} = s_{i-1} + G_i(t_i) - G_i(s_i)``;
    ``"tp"`` (target propagation): ``t_{i-1} = G_i(t_i)``;
    ``"direct"`` (DRL's direct feedback): ``t_i = s_i + Q_i (t_{N-1} - s_{N-1})``.
    """
    blocks = net.block_list()
    n = len(blocks)
    targets = [None] * n
    targets[-1] = top_target
    if rule == "direct":
        e = top_target - acts[-1].detach()
        for i, name in enumerate(net.names[:-1]):
            targets[i] = acts[i].detach() + net.direct[name](e).view_as(acts[i])
        return targets
    for i in range(n - 1, 0, -1):
        g = blocks[i]
        if rule == "tp":
            targets[i - 1] = g.g(targets[i], switches[i])
        elif rule == "difference":
            targets[i - 1] = acts[i - 1].detach() + g.g(targets[i], switches[i]) - g.g(acts[i].detach(), switches[i])
        else:
            raise ValueError(f"unknown target rule {rule!r}; choose difference, tp or direct")
    return targets


def local_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean_over_batch(sum_over_features((s - t)^2))``."""
    return 0.5 * (s - t).pow(2).flatten(1).sum(1).mean()


def dtp_loss(net, x: torch.Tensor, labels: torch.Tensor, beta: float, acts=None, switches=None,
             rule: str = "difference"):
    """The summed layer-local DTP loss of one batch, differentiable in the forward weights only.

    ``acts``/``switches`` may be passed in from ``net.activations(x, detach_inputs=True)``
    to avoid a second forward pass; ``rule`` is the target rule (see
    :func:`propagate_targets`). Returns ``(loss, logits)``.
    """
    if acts is None:
        acts, switches = net.activations(x, detach_inputs=True)
    return local_losses(net, acts, switches, first_target(acts[-1], labels, beta), rule), acts[-1]


def local_losses(net, acts, switches, top: torch.Tensor, rule: str = "difference") -> torch.Tensor:
    """The summed layer-local losses of one batch given the output target ``top``: the targets sent
    down from it (:func:`propagate_targets`, computed without grad) against each layer's activation."""
    return sum(local_loss(s, t) for s, t in zip(acts, propagate_targets(net, acts, switches, top, rule)))


def bp_loss(net, x: torch.Tensor, labels: torch.Tensor):
    """Backprop baseline: mean cross-entropy of the plain forward chain. Returns ``(loss, logits)``."""
    logits = net(x)
    return F.cross_entropy(logits, labels), logits
