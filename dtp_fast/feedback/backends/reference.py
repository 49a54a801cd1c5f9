"""The ``reference`` backend: L-DRL with autograd, literally ALGORITHM.md section 3.

One layer after another (input side first), one iteration after another. It
is the oracle every fast backend is tested against: keep it simple.
"""
from __future__ import annotations

import torch

from ..engine import momentum_sgd_, register_backend

__all__ = ["ldrl_loss", "ReferenceBackend"]


def _sum_features_mean_batch(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1).mean()


def ldrl_loss(block, x, y, switches, eps_x, eps_y, sigma: float) -> torch.Tensor:
    """The L-DRL loss of one block for one noise sample (ALGORITHM.md section 3).

    ``x = s_{i-1}``, ``y = s_i = F(x)`` with pooling ``switches`` (I0);
    ``eps_x`` and ``eps_y`` are standard normal, shaped like x and y.
    Differentiable with respect to the parameters of ``block.g_op``.
    """
    r = block.g(y, switches)
    dx = sigma * eps_x
    with torch.no_grad():
        y1, switches1 = block.f(x + dx)
    dr = block.g(y1, switches1) - r
    dy = sigma * eps_y
    dr_y = block.g(y + dy, switches) - r
    return -2 * _sum_features_mean_batch(dx * dr) + _sum_features_mean_batch(dr_y ** 2)


class ReferenceBackend:
    name = "reference"

    def availability(self, device):
        return True, "pure PyTorch with autograd; runs on any device"

    def layer_loss(self, block, layer: int, x, y, switches, hp, noise, step: int, iteration: int,
                   offset: int = 0):
        """The loss of one iteration, averaged over ``hp.samples`` noise samples; the batch
        holds the data samples ``offset ..`` of the global batch."""
        total = 0.0
        for s in range(hp.samples):
            key = dict(step=step, layer=layer, iteration=iteration, sample=s, device=x.device, dtype=x.dtype,
                       offset=offset)
            eps_x = noise.normal(which="x", shape=x.shape, **key)
            eps_y = noise.normal(which="y", shape=y.shape, **key)
            total = total + ldrl_loss(block, x, y, switches, eps_x, eps_y, hp.noise)
        return total / hp.samples

    def train(self, net, acts, switches, hparams, state, noise, step, report, memory_budget=None,
              sample_offset=0, reduce=None):
        stats = {}
        blocks = net.block_list()
        for i, (name, hp) in enumerate(zip(net.feedback_names, hparams), start=1):
            block = blocks[i]
            params = [block.g_op.weight, block.g_op.bias]
            bufs = [state.buffer(name, "weight", params[0]), state.buffer(name, "bias", params[1])]
            losses = []
            for k in range(hp.iterations):
                with torch.enable_grad():
                    loss = self.layer_loss(block, i, acts[i - 1], acts[i], switches[i], hp, noise, step, k,
                                           sample_offset)
                    grads = list(torch.autograd.grad(loss, params))
                loss = loss.detach()
                momentum_sgd_(params, grads, bufs, hp.lr, hp.momentum, hp.weight_decay, reduce, [loss])
                if report == "all" or (report == "last" and k == hp.iterations - 1):
                    losses.append(loss)
            value = None
            if report == "all":
                value = [float(v) for v in losses]
            elif report == "last" and losses:
                value = float(losses[0])
            stats[name] = {"iterations": hp.iterations, "loss": value}
        return stats


register_backend(ReferenceBackend(), priority=0)
