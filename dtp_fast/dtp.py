"""The forward phase of DTP (ALGORITHM.md section 2.B) and the backprop baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["first_target", "propagate_targets", "local_loss", "dtp_loss", "bp_loss"]


def first_target(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """``t_{N-1} = logits - beta * dCE/dlogits`` with CE summed over the batch
    (closed form: ``softmax(logits) - onehot(labels)``)."""
    logits = logits.detach()
    grad = torch.softmax(logits, dim=1)
    grad[torch.arange(len(labels), device=labels.device), labels] -= 1
    return logits - beta * grad


@torch.no_grad()
def propagate_targets(net, acts, switches, top_target: torch.Tensor) -> list[torch.Tensor]:
    """DTP difference rule downward: ``t_{i-1} = s_{i-1} + G_i(t_i) - G_i(s_i)``,
    unpooling with the switches of the clean forward pass. Returns ``t_0 .. t_{N-1}``."""
    blocks = net.block_list()
    targets = [None] * len(blocks)
    targets[-1] = top_target
    for i in range(len(blocks) - 1, 0, -1):
        g = blocks[i]
        s_i, s_prev = acts[i].detach(), acts[i - 1].detach()
        targets[i - 1] = s_prev + g.g(targets[i], switches[i]) - g.g(s_i, switches[i])
    return targets


def local_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``0.5 * mean_over_batch(sum_over_features((s - t)^2))``."""
    return 0.5 * (s - t).pow(2).flatten(1).sum(1).mean()


def dtp_loss(net, x: torch.Tensor, labels: torch.Tensor, beta: float, acts=None, switches=None):
    """The summed layer-local DTP loss of one batch, differentiable in the forward weights only.

    ``acts``/``switches`` may be passed in from ``net.activations(x, detach_inputs=True)``
    to avoid a second forward pass. Returns ``(loss, logits)``.
    """
    if acts is None:
        acts, switches = net.activations(x, detach_inputs=True)
    targets = propagate_targets(net, acts, switches, first_target(acts[-1], labels, beta))
    loss = sum(local_loss(s, t) for s, t in zip(acts, targets))
    return loss, acts[-1]


def bp_loss(net, x: torch.Tensor, labels: torch.Tensor):
    """Backprop baseline: mean cross-entropy of the plain forward chain. Returns ``(loss, logits)``."""
    logits = net(x)
    return F.cross_entropy(logits, labels), logits
