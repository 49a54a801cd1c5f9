"""Feedback budget policies: how many feedback iterations (and at what learning rate) each
layer gets on a batch.

``paper`` runs every layer's configured iterations at its configured learning rate on every
batch (the paper's fixed budget). ``adaptive`` (:class:`AdaptiveBudget`) gives each layer the
iterations it needs to follow its forward weights:

* why: the feedback weights persist from batch to batch, so once a layer's G is aligned, a batch
  only has to move G as far as F moved. How far G lags behind is about F's drift per batch over
  (learning rate x iterations); keeping that lag means iterations in proportion to the drift;
* signal: before each batch's phase, each forward layer's drift, ``||F_t - F_{t-1}|| / ||F_t||``
  (the relative change of its weights over the last batch, in float64, all layers in one device
  transfer), smoothed by an exponential average with weight ``smoothing``. The weights are the
  same on every rank of a data-parallel run, so every rank takes the same decisions; the backends
  compute them to rounding, so the decisions do not depend on the backend (unless a share falls
  within rounding of an iteration boundary);
* reference: the largest smoothed drift a layer has had so far (the paper's budget is sized to
  follow F when it moves fastest);
* warm-up: the first ``warmup`` batches run the paper's budget;
* share: after the warm-up a layer gets ``drift / reference`` of its paper iterations (at least
  ``floor``): as the forward learning rate anneals and the gradients shrink, F moves less and the
  layer needs fewer iterations;
* cut: on top of that, the iterations are divided and the learning rate multiplied by
  ``lr_scale`` (the step per batch, learning rate x iterations, is kept). What bounds this factor
  is the forward training: with the feedback weights noisier, the targets are, and at 3x the
  digits default's DTP loss diverged on two seeds of three (2x held on all);
* a drift that is not finite (a diverging run) gives the full budget back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..utils import is_int, is_real
from .engine import LayerHParams

__all__ = ["AdaptiveBudget", "BUDGETS"]

BUDGETS = ("paper", "adaptive")


@dataclass
class AdaptiveBudget:
    """The ``adaptive`` feedback budget (the rule: the module docstring).

    Knobs (``TrainConfig.budget_*``, ``--budget-*``): ``floor``, the smallest share of a layer's
    paper iterations that the drift rule gives it; ``lr_scale``, the factor the iterations are
    divided and the feedback learning rate multiplied by after the warm-up; ``warmup``, batches at
    the paper's budget first. Fixed here: ``smoothing`` (the drift average's weight). The defaults
    held the paper budget's accuracy on every seed and preset tried (``benchmarks/budget_sweep.py``).
    """
    floor: float = 0.1
    lr_scale: float = 2.0
    warmup: int = 30
    smoothing: float = 0.9

    def __post_init__(self):
        for name, ok, what in (
                ("floor", is_real(self.floor) and 0 < self.floor <= 1, "a number in (0, 1]"),
                ("lr_scale", is_real(self.lr_scale) and self.lr_scale >= 1, "a number >= 1"),
                ("warmup", is_int(self.warmup) and self.warmup >= 0, "an integer >= 0"),
                ("smoothing", is_real(self.smoothing) and 0 <= self.smoothing < 1, "a number in [0, 1)")):
            if not ok:
                raise ValueError(f"budget {name} must be {what}, got {getattr(self, name)!r}")
        self.batches = 0                                  # batches planned so far
        self.prev: dict[str, torch.Tensor] = {}          # F's weights at the last plan
        self.drift: dict[str, float] = {}                # smoothed relative drift per batch
        self.ref: dict[str, float] = {}                  # the largest smoothed drift so far
        self.last: dict[str, dict] = {}                  # the last plan: {layer: {"drift", "share"}}

    def _drifts(self, net) -> list[float | None]:
        """Per trained feedback layer, the relative change of F's weights since the last plan (None the
        first time, inf if not finite); one transfer from the device for all layers."""
        blocks = net.block_list()
        rows, now = [], {}
        for i, name in enumerate(net.feedback_names, start=1):
            w = now[name] = blocks[i].f_op.weight.detach()
            old = self.prev.get(name)
            if old is not None and old.shape == w.shape:
                diff = (w.double() - old.to(w.device, torch.float64)).norm()
            else:
                diff = w.new_tensor(math.nan, dtype=torch.float64)
            rows.append(torch.stack([diff, w.double().norm()]))
        self.prev = {name: w.clone() for name, w in now.items()}
        out = []
        for d, n in torch.stack(rows).tolist():
            if math.isnan(d) and math.isfinite(n):
                out.append(None)                   # nothing to compare with yet
            elif not (math.isfinite(d) and math.isfinite(n)):
                out.append(math.inf)
            else:
                out.append(d / n if n > 0 else (0.0 if d == 0 else math.inf))
        return out

    def plan(self, net, hparams: list[LayerHParams]) -> list[LayerHParams]:
        """The per-layer settings for the next batch (and the policy's state advanced by one batch)."""
        out = []
        for name, hp, d in zip(net.feedback_names, hparams, self._drifts(net)):
            if d is not None:
                old = self.drift.get(name)
                self.drift[name] = d if old is None else self.smoothing * old + (1 - self.smoothing) * d
            drift = self.drift.get(name)
            if drift is not None and math.isfinite(drift):
                self.ref[name] = max(self.ref.get(name, 0.0), drift)      # the fastest F has moved so far
            if self.batches < self.warmup or name not in self.ref or not math.isfinite(drift):
                out.append(hp)                     # the paper's budget
                self.last[name] = {"drift": drift, "share": 1.0}
                continue
            ref = self.ref[name]
            ratio = drift / ref if ref > 0 else (math.inf if drift > 0 else 0.0)
            share = min(1.0, max(self.floor, ratio))
            k = min(hp.iterations, max(1, math.ceil(share * hp.iterations / self.lr_scale - 1e-9)))
            out.append(replace(hp, iterations=k, lr=hp.lr * self.lr_scale))
            self.last[name] = {"drift": drift, "share": share}
        self.batches += 1
        return out

    def state_dict(self) -> dict:
        return {"batches": self.batches, "prev": {k: v.cpu() for k, v in self.prev.items()},
                "drift": dict(self.drift), "ref": dict(self.ref)}

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.prev = dict(state["prev"])
        self.drift, self.ref = ({k: float(v) for k, v in state[key].items()} for key in ("drift", "ref"))
