"""Alignment diagnostics as the paper measures them (ALGORITHM.md section 6)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dtp import dtp_loss

__all__ = ["angle_and_distance", "weight_alignment", "gradient_alignment"]


def angle_and_distance(w: torch.Tensor, v: torch.Tensor) -> dict:
    """Angle (degrees) between two same-shaped tensors, and ``|w - v| / |w|``."""
    w, v = w.detach().double().flatten(), v.detach().double().flatten()
    nw, nv = w.norm(), v.norm()
    if not (torch.isfinite(nw) and torch.isfinite(nv)):
        return {"angle_deg": float("nan"), "distance": float("nan")}
    cos = (w @ v) / (nw * nv) if nw > 0 and nv > 0 else torch.tensor(0.0, dtype=torch.float64)
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(cos)))))
    distance = float((w - v).norm() / nw) if nw > 0 else float("inf")
    return {"angle_deg": angle, "distance": distance}


def feedback_alignment_pair(block):
    """F's weight and G's weight arranged alike (Linear: W against V^T)."""
    w, v = block.f_op.weight, block.g_op.weight
    return (w, v.t()) if block.kind == "linear" else (w, v)


@torch.no_grad()
def weight_alignment(net) -> dict:
    """Per trained feedback layer: angle and relative distance between G's weight
    and F's weight transposed (``{name: {"angle_deg", "distance"}}``)."""
    blocks = net.block_list()
    return {name: angle_and_distance(*feedback_alignment_pair(blocks[i]))
            for i, name in enumerate(net.feedback_names, start=1)}


def gradient_alignment(net, x: torch.Tensor, labels: torch.Tensor, beta: float = 0.005,
                       rule: str = "difference") -> dict:
    """Per forward layer: angle (degrees) between the backprop gradient of the mean
    cross-entropy and the DTP update (gradient of the local losses with a small
    ``beta``, divided by ``beta``), weights only. ``rule`` is the target rule of
    the method (``"difference"`` for DTP/L-DRL, ``"tp"``, ``"direct"`` for DRL)."""
    weights = [b.f_op.weight for b in net.block_list()]
    with torch.enable_grad():
        bp = torch.autograd.grad(F.cross_entropy(net(x), labels), weights)
        loss, _ = dtp_loss(net, x, labels, beta, rule=rule)
        dtp = torch.autograd.grad(loss, weights)
    return {name: angle_and_distance(g_bp, g_dtp / beta)["angle_deg"]
            for name, g_bp, g_dtp in zip(net.names, bp, dtp)}
