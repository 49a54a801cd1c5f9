"""Feedback budget policies: how many feedback iterations (and at what learning rate) each
layer gets on a batch.

``paper`` runs every layer's configured iterations at its configured learning rate on every
batch (the paper's fixed budget). ``adaptive`` (:class:`AdaptiveBudget`) cuts the iterations of
a layer while its feedback weights keep up with its forward weights, and gives iterations back
when its alignment slips:

* signal: before each batch's phase, the angle between each feedback layer's weights G and its
  forward weights F transposed (one dot product per layer, in float64). The weights are the
  same on every rank of a data-parallel run, so every rank takes the same decisions, and the
  backends compute them to rounding, so the decisions do not depend on the backend (unless an
  angle falls within rounding of a threshold);
* warm-up: the first ``warmup`` batches run the paper's budget; the angle a layer has at the
  end of it is its reference (what the full budget holds);
* a layer's share of its paper iterations shrinks by ``decay`` per batch down to ``floor``;
  its learning rate rises by the inverse of the cut, at most ``lr_scale`` times, so that the
  feedback step per batch (learning rate x iterations) is kept as far as stability allows;
* alarm: when a layer's angle exceeds its reference by more than ``alarm_deg`` degrees, its
  share doubles (up to the full budget at its own learning rate);
* a layer that has run its full budget for ``patience`` batches in a row and still drifts
  (its angle rises even at the paper's budget, as some layers' do late in training) takes the
  running mean of its angle (an exponential average with weight ``smoothing``) as its new
  reference, so that iterations are not spent holding an alignment they cannot hold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .engine import LayerHParams

__all__ = ["AdaptiveBudget", "BUDGETS"]

BUDGETS = ("paper", "adaptive")


def _angles(net) -> list[float]:
    """Per trained feedback layer, the angle (degrees) between G's weight and F's weight transposed,
    in float64 (nan if not finite); one transfer from the device for all layers."""
    from ..diagnostics import feedback_alignment_pair

    blocks = net.block_list()
    rows = []
    for i in range(1, len(net.feedback_names) + 1):
        w, v = (t.detach().double().flatten() for t in feedback_alignment_pair(blocks[i]))
        rows.append(torch.stack([w @ v, w.norm() * v.norm()]))
    out = []
    for dot, norms in torch.stack(rows).tolist():
        if not (math.isfinite(dot) and math.isfinite(norms)):
            out.append(math.nan)
        else:
            out.append(math.degrees(math.acos(max(-1.0, min(1.0, dot / norms)))) if norms > 0 else 90.0)
    return out


@dataclass
class AdaptiveBudget:
    """The ``adaptive`` feedback budget (the rule: the module docstring).

    Knobs (``TrainConfig.budget_*``, ``--budget-*``): ``floor``, the smallest share of a layer's
    paper iterations per batch; ``lr_scale``, the largest factor its learning rate rises by to make
    up for a cut; ``warmup``, batches at the paper's budget first; ``alarm_deg``, how far (degrees)
    a layer's angle may rise above its reference before its share doubles. Fixed here: ``decay``
    (a share's shrink per quiet batch), ``smoothing`` (the running mean's weight) and ``patience``.
    The defaults held the digits default's accuracy on every seed tried
    (``benchmarks/budget_sweep.py``); lower floors and larger lr scales save more but diverged on
    some seeds.
    """
    floor: float = 0.5
    lr_scale: float = 2.0
    warmup: int = 30
    alarm_deg: float = 9.0
    decay: float = 0.8
    smoothing: float = 0.98
    patience: int = 10

    def __post_init__(self):
        def real(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, ok, what in (
                ("floor", lambda v: real(v) and 0 < v <= 1, "a number in (0, 1]"),
                ("lr_scale", lambda v: real(v) and v >= 1, "a number >= 1"),
                ("warmup", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
                ("alarm_deg", lambda v: real(v) and v > 0, "a number of degrees > 0"),
                ("decay", lambda v: real(v) and 0 < v <= 1, "a number in (0, 1]"),
                ("smoothing", lambda v: real(v) and 0 <= v < 1, "a number in [0, 1)"),
                ("patience", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 "an integer >= 1")):
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"budget {name} must be {what}, got {value!r}")
        self.batches = 0       # batches planned so far
        self.share: dict[str, float] = {}
        self.mean: dict[str, float] = {}
        self.ref: dict[str, float] = {}
        self.full: dict[str, int] = {}
        self.last: dict[str, dict] = {}   # the last plan: {layer: {"angle", "share", "alarm"}}

    def plan(self, net, hparams: list[LayerHParams]) -> list[LayerHParams]:
        """The per-layer settings for the next batch (and the policy's state advanced by one batch)."""
        out = []
        for name, hp, angle in zip(net.feedback_names, hparams, _angles(net)):
            share = self.share.get(name, 1.0)
            if self.batches < self.warmup or name not in self.mean:
                self.mean[name] = self.ref[name] = angle
                self.full[name] = 0
                alarm, share = False, 1.0
            else:
                if math.isfinite(angle):
                    self.mean[name] = self.smoothing * self.mean[name] + (1 - self.smoothing) * angle
                if self.full[name] >= self.patience:       # the full budget cannot hold the reference: follow
                    self.ref[name] = max(self.ref[name], self.mean[name])
                alarm = not math.isfinite(angle) or angle > self.ref[name] + self.alarm_deg
                share = min(1.0, 2 * share) if alarm else max(self.floor, share * self.decay)
            self.full[name] = self.full.get(name, 0) + 1 if share == 1.0 else 0
            self.share[name] = share
            self.last[name] = {"angle": angle, "share": share, "alarm": alarm}
            k = min(hp.iterations, math.ceil(share * hp.iterations - 1e-9))
            lr = hp.lr * min(hp.iterations / k, self.lr_scale) if k else hp.lr
            out.append(replace(hp, iterations=k, lr=lr))
        self.batches += 1
        return out

    def state_dict(self) -> dict:
        return {"batches": self.batches, "share": dict(self.share), "mean": dict(self.mean), "ref": dict(self.ref),
                "full": dict(self.full)}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.share, self.mean, self.ref = ({k: float(v) for k, v in state[key].items()}
                                           for key in ("share", "mean", "ref"))
        self.full = {k: int(v) for k, v in state["full"].items()}
