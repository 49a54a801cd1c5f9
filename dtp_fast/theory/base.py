"""What the theory experiments share: their presets, one seed's network and batches, and resuming.

Results are kept per seed, with the command, commit and machine that computed
them (``origin``), so a run that stops, or runs split over processes or
machines, can reuse the seeds already computed with the same settings.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch

from ..data import Loader
from ..family import train_family_feedback
from ..feedback import train_feedback
from ..presets import lenet
from ..utils import origin, versions

__all__ = ["TheoryPreset", "THEORY_PRESETS", "theory_preset"]


@dataclass(frozen=True)
class TheoryPreset:
    """Everything the theory figures depend on.

    ``ldrl``/``drl`` hold the gmp feedback settings (``lr`` and ``noise``, one
    value per trained layer: L-DRL's G of conv_1, fc1, fc2; DRL's Q of conv_0,
    conv_1, fc1); ``ldrl_jmc``/``drl_jmc`` those of the one layer jmc follows.
    ``one_batch``: every feedback iteration and the gmp angles use the same
    training batch of each seed (the paper's protocol); otherwise each block of
    iterations gets a new training batch and the angles a test batch.
    """
    name: str
    description: str
    gmp_iterations: int
    jmc_iterations: int
    batch_size: int
    seeds: tuple
    bias: bool
    one_batch: bool
    augment: bool
    beta: float
    ldrl: dict = field(default_factory=dict)
    drl: dict = field(default_factory=dict)
    ldrl_jmc: dict = field(default_factory=dict)
    drl_jmc: dict = field(default_factory=dict)
    momentum: float = 0.9

    def settings(self) -> dict:
        return dataclasses.asdict(self)


THEORY_PRESETS = {p.name: p for p in [
    TheoryPreset(
        "paper", "the paper's settings (official theorem_test.py): CIFAR-10, LeNet without biases, one batch of "
        "256 per seed, 5,000 iterations per layer, beta 0.4655",
        gmp_iterations=5000, jmc_iterations=5000, batch_size=256, seeds=(0, 1), bias=False, one_batch=True,
        augment=True, beta=0.4655,
        ldrl=dict(lr=[1e-4, 2.5e-3, 0.01], noise=[0.2, 0.2, 0.1]),
        # not in the official code (its DRL is Meulemans et al.'s implementation, not published with it): the
        # L-DRL noise, and the rate at which DRL's last Q settles in jmc
        drl=dict(lr=[0.05, 0.05, 0.05], noise=[0.2, 0.2, 0.1]),
        # jmc: the official test's noise with its smaller lr (lr 0.03 settles at 4.5 degrees instead of 2.6)
        ldrl_jmc=dict(lr=[0.01], noise=[0.1]),
        drl_jmc=dict(lr=[0.05], noise=[0.1])),
    TheoryPreset(
        "quick", "minutes on a CPU: the embedded digits, LeNet with biases, a new batch every 1/10 of the "
        "iterations, angles on a test batch at beta 0.005",
        gmp_iterations=500, jmc_iterations=1000, batch_size=128, seeds=(0, 1, 2), bias=True, one_batch=False,
        augment=False, beta=0.005,
        ldrl=dict(lr=[0.1, 0.3, 0.5], noise=[0.1, 0.05, 0.05]),
        drl=dict(lr=[0.3, 0.3, 1.0], noise=[0.1, 0.05, 0.05]),
        ldrl_jmc=dict(lr=[0.1], noise=[0.05]),
        drl_jmc=dict(lr=[1.0], noise=[0.05])),
]}


def theory_preset(name: str | None, dataset: str) -> TheoryPreset:
    """The named preset; by default ``quick`` on the digits and ``paper`` on other data sets."""
    name = name or ("quick" if dataset == "digits" else "paper")
    if name not in THEORY_PRESETS:
        raise ValueError(f"unknown theory preset {name!r}; choose one of {', '.join(THEORY_PRESETS)}")
    return THEORY_PRESETS[name]


class _Run:
    """One seed's data, network and batches."""

    def __init__(self, ds, preset: TheoryPreset, seed: int, width: float):
        self.ds, self.preset, self.seed = ds, preset, seed
        torch.manual_seed(seed)
        channels = tuple(max(1, round(c * width)) for c in (32, 64))
        self.net = lenet(ds.in_shape, ds.num_classes, channels=channels, hidden=max(1, round(512 * width)),
                         bias=preset.bias)
        self.loader = Loader(ds, "train", preset.batch_size, seed=seed, shuffle=True, augment=preset.augment,
                             drop_last=True)
        self._batches = self._stream()
        self.first = next(iter(self.loader)) if preset.one_batch else None

    def _stream(self):
        epoch = 0
        while True:
            self.loader.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def batch(self):
        """The batch of the next block of feedback iterations."""
        return self.first if self.preset.one_batch else next(self._batches)

    def eval_batch(self):
        """The batch the gmp angles are measured on."""
        if self.preset.one_batch:
            return self.first
        return next(iter(Loader(self.ds, "test", 256, seed=self.seed)))


@torch.no_grad()
def _feedback_step(method: str, net, x, cfg, state, noise, step: int) -> dict:
    """One block of feedback iterations with L-DRL (fastest backend) or DRL, forward weights frozen."""
    acts, sw = net.activations(x)
    if method == "drl":
        return train_family_feedback("drl", net, acts, sw, cfg, state, noise, step, report="last")
    return train_feedback(net, acts, sw, cfg, state, noise, step, backend="auto", report="last")


def _mean_std(values: list) -> tuple[float, float]:
    m = sum(values) / len(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var)


_SHARED = ("batch_size", "bias", "one_batch", "augment", "momentum")
_METHOD_KEYS = {("gmp", "ldrl"): ("ldrl", "beta"), ("gmp", "drl"): ("drl", "beta"), ("gmp", "random"): ("beta",),
                ("gmp", "symmetric"): ("beta",), ("jmc", "ldrl"): ("ldrl_jmc",), ("jmc", "drl"): ("drl_jmc",)}


def _reusable(resume, figure: str, preset: TheoryPreset, dataset: str, width: float, iterations, method: str,
              seed: int):
    """``(result, seconds, origin)`` of one seed from earlier runs (``resume``: a result or a list of them) made with
    the same settings for this method and seed, or None."""
    new = json.loads(json.dumps(preset.settings()))
    for old in resume if isinstance(resume, list) else [resume]:
        if not old or old.get("figure") != figure or old.get("dataset") != dataset \
                or old.get("width") != width or old.get("iterations") != iterations:
            continue
        settings = old.get("settings") or {}
        if any(settings.get(k) != new[k] for k in _SHARED + _METHOD_KEYS[figure, method]):
            continue
        found = old.get("per_seed", {}).get(method, {}).get(str(seed))
        if found is not None:
            origin = old.get("origin", {}).get(method, {}).get(str(seed)) or _origin(old)
            return found, old.get("seconds", {}).get(method, {}).get(str(seed)), origin
    return None


def _origin(result: dict) -> dict:
    """Where a seed's result was computed: the run's command, commit and machine."""
    return {k: result.get(k) for k in ("command", "commit", "machine")}


def _new_result(figure: str, preset: TheoryPreset, dataset: str, width: float, iterations, seeds, methods,
                tables=("per_seed", "origin")) -> dict:
    """A result's header (settings, command, commit, machine, ...), and for each of ``tables`` an
    empty ``{method: {}}`` the seeds are filled into."""
    result = {"figure": figure, "dataset": dataset, "width": width, "preset": preset.name,
              "settings": preset.settings(),
              **{k: v for k, v in origin().items() if k != "date"}, "threads": torch.get_num_threads(),
              "versions": versions(), "iterations": iterations, "seeds": list(seeds)}
    result.update({table: {m: {} for m in methods} for table in tables})
    return result
