"""The paper's two theory figures as commands (``dtp-fast theory jmc | gmp``).

jmc (Fig. 4.2, the Jacobian Matching Condition): on LeNet with frozen forward
weights, the angle and relative distance between the last layer's feedback
Jacobian J_G and J_F^T over feedback iterations, for L-DRL (G of the last
block) against DRL (the direct feedback into the last hidden layer). For a
Linear last block both Jacobians are the weight matrices themselves.

gmp (Fig. 4.3, the Gradient Matching Property): after feedback training, the
angle between each layer's DTP update and its backprop gradient, for L-DRL,
DRL, random feedback (untrained) and symmetric feedback (G = F^T exactly).

Two presets carry the settings (:data:`THEORY_PRESETS`): ``paper``, the
official ``theorem_test.py`` on CIFAR-10 (LeNet without biases, one batch of
256 per seed for the feedback training and the angles, 5,000 iterations per
layer, beta 0.4655), and ``quick``, minutes on the embedded digits. Results
are written per seed as they finish, so a run that stops resumes where it
was (the same ``--json`` file and settings).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import Loader, load_dataset
from .diagnostics import angle_and_distance, gradient_alignment
from .family import ensure_direct_feedback, symmetric_feedback_, train_family_feedback
from .feedback import FeedbackConfig, FeedbackState, train_feedback
from .noise import CounterNoise
from .presets import lenet
from .utils import atomic_write_json, atomic_write_text, git_commit, machine_name, versions

__all__ = ["TheoryPreset", "THEORY_PRESETS", "theory_preset", "jmc", "gmp", "gmp_markdown", "jmc_markdown",
           "add_arguments", "run", "main"]

GMP_METHODS = ("ldrl", "drl", "random", "symmetric")


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


def _header(figure, preset, dataset, width) -> dict:
    return {"figure": figure, "dataset": dataset, "width": width, "preset": preset.name,
            "settings": preset.settings(), "command": "dtp-fast " + shlex.join(sys.argv[1:]) if sys.argv else None,
            "commit": git_commit(), "machine": machine_name(), "threads": torch.get_num_threads(),
            "versions": versions()}


def jmc(dataset="digits", data=None, preset: str | TheoryPreset | None = None, iterations=None, seeds=None,
        every=None, width=1.0, progress=None, resume=None, save=None) -> dict:
    """Angle/distance between J_G and J_F^T of LeNet's last layer over feedback iterations.

    Returns ``{"iterations", "ldrl", "drl", "per_seed", "settled_at", ...}``: ``ldrl``/``drl`` hold the seed
    means of ``angle_deg`` and ``distance`` at each entry of ``iterations`` (and ``angle_std``);
    ``drl["limit_deg"]`` is the angle DRL converges to, between W^T and the pseudo-inverse W^+ of the
    last layer's weight (DRL's feedback tends to W^+, L-DRL's to W^T).
    ``resume``: earlier results (one or a list) whose seeds made with the same settings are reused;
    ``save(result)`` is called after each seed.
    """
    preset = preset if isinstance(preset, TheoryPreset) else theory_preset(preset, dataset)
    iterations = iterations or preset.jmc_iterations
    seeds = tuple(seeds if seeds is not None else preset.seeds)
    every = every or max(1, iterations // 50)
    steps = list(range(0, iterations + 1, every))
    if steps[-1] != iterations:
        steps.append(iterations)
    ds = load_dataset(dataset, data)
    result = _header("jmc", preset, dataset, width)
    result.update(iterations=steps, seeds=list(seeds))
    per_seed = result["per_seed"] = {m: {} for m in ("ldrl", "drl")}
    origin = result["origin"] = {m: {} for m in per_seed}
    for seed in seeds:
        for method in per_seed:
            key = str(seed)
            old = _reusable(resume, "jmc", preset, dataset, width, steps, method, seed)
            if old is not None:
                per_seed[method][key], _, origin[method][key] = old
                continue
            origin[method][key] = _origin(result)
            start = time.perf_counter()
            run = _Run(ds, preset, seed, width)
            net = run.net
            last, hidden = net.names[-1], net.names[-2]
            w = net.blocks[last].f_op.weight
            if method == "drl":
                ensure_direct_feedback(net)
                weight = net.direct[hidden].weight             # output -> last hidden layer: (d_hidden, classes)
                names = net.names[:-1]
                hp = preset.drl_jmc
            else:
                weight = net.blocks[last].g_op.weight
                names = net.feedback_names
                hp = preset.ldrl_jmc
            pad = len(names) - 1
            state, noise = FeedbackState(), CounterNoise(seed)
            trace = {"angle_deg": [], "distance": []}
            for k, it in enumerate(steps):
                a = angle_and_distance(w, weight.t())
                trace["angle_deg"].append(a["angle_deg"])
                trace["distance"].append(a["distance"])
                if k == len(steps) - 1:
                    break
                cfg = FeedbackConfig(iterations=[0] * pad + [steps[k + 1] - it], lr=[1.0] * pad + list(hp["lr"]),
                                     noise=[1.0] * pad + list(hp["noise"]), momentum=preset.momentum).resolve(names)
                _feedback_step(method, net, run.batch()[0], cfg, state, noise, k)
            if method == "drl":   # DRL's fixed point for a linear last layer: Q = W^+ (the pseudo-inverse)
                trace["limit_deg"] = angle_and_distance(w, torch.linalg.pinv(w.detach().double()).t())["angle_deg"]
            trace["seconds"] = time.perf_counter() - start
            per_seed[method][key] = trace
            if progress:
                progress(f"jmc {method} seed {seed}: angle {trace['angle_deg'][0]:.1f} -> "
                         f"{trace['angle_deg'][-1]:.1f} deg ({trace['seconds']:.0f} s)")
            if save:
                save(result)
    for method, traces in per_seed.items():
        runs = [traces[str(s)] for s in seeds]
        curve = {key: [_mean_std([t[key][i] for t in runs])[0] for i in range(len(steps))]
                 for key in ("angle_deg", "distance")}
        curve["angle_std"] = [_mean_std([t["angle_deg"][i] for t in runs])[1] for i in range(len(steps))]
        result[method] = curve
    result["settled_at"] = {m: _settled(steps, result[m]["angle_deg"]) for m in per_seed}
    result["drl"]["limit_deg"] = _mean_std([per_seed["drl"][str(s)]["limit_deg"] for s in seeds])[0]
    return result


def _settled(steps, angles, tol: float = 1.0):
    """The first iteration from which the (mean) angle stays within ``tol`` degrees of its final value."""
    final = angles[-1]
    for i in range(len(angles)):
        if all(abs(a - final) <= tol for a in angles[i:]):
            return steps[i]
    return steps[-1]


def _gmp_one(run: _Run, method: str, preset: TheoryPreset, iterations: int, seed: int, progress=None) -> dict:
    """Per-layer angles of one method and seed."""
    net = run.net
    rule = "direct" if method == "drl" else "difference"
    if method == "symmetric":
        symmetric_feedback_(net)
    elif method in ("ldrl", "drl"):
        names = net.names[:-1] if method == "drl" else net.feedback_names
        hp = preset.drl if method == "drl" else preset.ldrl
        chunk = max(1, iterations // 10)
        state, noise = FeedbackState(), CounterNoise(seed)
        blocks = math.ceil(iterations / chunk)
        batches = [run.batch()[0] for _ in range(blocks)]
        # L-DRL trains one layer at a time (layers are independent, and the noise is keyed by layer), so
        # that the layer that dominates the cost gets every thread rather than one worker's share
        groups = [[j] for j in range(len(names))] if method == "ldrl" else [list(range(len(names)))]
        for group in groups:
            for k in range(blocks):
                n = min(chunk, iterations - k * chunk)
                cfg = FeedbackConfig(iterations=[n if j in group else 0 for j in range(len(names))],
                                     lr=hp["lr"], noise=hp["noise"], momentum=preset.momentum).resolve(names)
                stats = _feedback_step(method, net, batches[k], cfg, state, noise, k)
                losses = {name: v["loss"] for name, v in stats.items() if v["loss"] is not None}
                if not all(math.isfinite(v) for v in losses.values()):
                    raise ValueError(f"gmp {method} seed {seed}: the feedback loss is not finite after "
                                     f"{k * chunk + n} iterations ({losses}): lower the feedback lr of the preset")
                if progress and blocks > 1:
                    progress(f"  gmp {method} seed {seed}: {k * chunk + n}/{iterations} iterations, loss "
                             + ", ".join(f"{name} {v:.4g}" for name, v in losses.items()))
    if method == "drl":
        ensure_direct_feedback(net)
    x, y = run.eval_batch()
    return gradient_alignment(net, x, y, beta=preset.beta, rule=rule)


def gmp(dataset="digits", data=None, preset: str | TheoryPreset | None = None, iterations=None, seeds=None,
        width=1.0, progress=None, methods=GMP_METHODS, resume=None, save=None) -> dict:
    """Per-layer angle between the DTP update and the BP gradient after feedback training.

    Returns ``{"mean": {method: {layer: deg}}, "std": ..., "per_seed": {method: {seed: {layer: deg}}}, ...}``
    with the settings, command, commit and machine (``origin``: those of the run that computed each seed). ``resume``/``save`` as in :func:`jmc`.
    """
    preset = preset if isinstance(preset, TheoryPreset) else theory_preset(preset, dataset)
    iterations = iterations or preset.gmp_iterations
    seeds = tuple(seeds if seeds is not None else preset.seeds)
    unknown = set(methods) - set(GMP_METHODS)
    if unknown:
        raise ValueError(f"unknown gmp methods {sorted(unknown)}; choose from {', '.join(GMP_METHODS)}")
    ds = load_dataset(dataset, data)
    result = _header("gmp", preset, dataset, width)
    result.update(iterations=iterations, seeds=list(seeds))
    per_seed = result["per_seed"] = {m: {} for m in methods}
    seconds = result["seconds"] = {m: {} for m in methods}
    origin = result["origin"] = {m: {} for m in methods}
    for seed in seeds:
        for method in methods:
            key = str(seed)
            old = _reusable(resume, "gmp", preset, dataset, width, iterations, method, seed)
            if old is not None:
                per_seed[method][key], seconds[method][key], origin[method][key] = old
                continue
            origin[method][key] = _origin(result)
            start = time.perf_counter()
            angles = _gmp_one(_Run(ds, preset, seed, width), method, preset, iterations, seed, progress)
            per_seed[method][key] = angles
            seconds[method][key] = time.perf_counter() - start
            if progress:
                progress(f"gmp {method} seed {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in angles.items())
                         + f" ({seconds[method][key]:.0f} s)")
            if save:
                save(result)
    result["mean"], result["std"] = {}, {}
    for method, runs in per_seed.items():
        layers = list(next(iter(runs.values())))
        stats = {layer: _mean_std([runs[str(s)][layer] for s in seeds]) for layer in layers}
        result["mean"][method] = {layer: m for layer, (m, _) in stats.items()}
        result["std"][method] = {layer: s for layer, (_, s) in stats.items()}
    return result


# The paper's values (seed means; L-DRL from the official repository's result files, the others read off Fig. 4.3
# and 4.2), for tables beside ours.
PAPER_GMP = {"ldrl": {"conv_0": 32.48, "conv_1": 6.90, "fc1": 2.62, "fc2": 0.03},
             "drl": {"conv_0": 85.0, "conv_1": 83.0, "fc1": 13.5, "fc2": 1.5},
             "symmetric": {"conv_0": 24.0, "conv_1": 2.3, "fc1": 0.0, "fc2": 0.0},
             "random": {"conv_0": 90.0, "conv_1": 90.0, "fc1": 90.0, "fc2": 0.0}}
PAPER_GMP_STD = {"ldrl": {"conv_0": 4.4, "conv_1": 0.6, "fc1": 0.1, "fc2": 0.0}}
PAPER_JMC = {"ldrl": "falls to 2-3 degrees by about 2,500-3,000 iterations", "drl": "plateaus near 17 degrees"}
_LABELS = {"ldrl": "L-DRL", "drl": "DRL", "random": "random", "symmetric": "symmetric"}


def gmp_markdown(result: dict) -> str:
    """A markdown table of a gmp result beside the paper's values (degrees, mean +- std over seeds)."""
    layers = list(next(iter(result["mean"].values())))
    n = len(result["seeds"])
    rows = [f"| method | {' | '.join(layers)} |", "|---|" + "---:|" * len(layers)]
    for method in result["mean"]:
        ours = [f"{result['mean'][method][l]:.2f} ± {result['std'][method][l]:.2f}" for l in layers]
        rows.append(f"| {_LABELS[method]}, ours ({n} seed{'s' if n > 1 else ''}) | {' | '.join(ours)} |")
        if method in PAPER_GMP:
            std = PAPER_GMP_STD.get(method)
            paper = [f"{PAPER_GMP[method][l]:g}" + (f" ± {std[l]:g}" if std else "") for l in layers]
            rows.append(f"| {_LABELS[method]}, paper | {' | '.join(paper)} |")
    return "\n".join(rows) + "\n"


def jmc_markdown(result: dict) -> str:
    """A markdown table of a jmc result: the seed-mean angle at a few iterations, where it settled, the paper."""
    steps = result["iterations"]
    marks = sorted({steps[0], *(s for s in (500, 1000, 2500, 3000) if s in steps), steps[-1]})
    rows = [f"| method | {' | '.join(f'it. {m}' for m in marks)} | settled at | paper |",
            "|---|" + "---:|" * (len(marks) + 1) + "---|"]
    for method in ("ldrl", "drl"):
        c = result[method]
        cells = [f"{c['angle_deg'][steps.index(m)]:.1f} ± {c['angle_std'][steps.index(m)]:.1f}" for m in marks]
        rows.append(f"| {_LABELS[method]} | {' | '.join(cells)} | {result['settled_at'][method]} | "
                    f"{PAPER_JMC[method]} |")
    return "\n".join(rows) + "\n"


def _plot_jmc(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = result["iterations"]
    for method, label in (("ldrl", "L-DRL"), ("drl", "DRL")):
        curve = result[method]
        axes[0].plot(steps, curve["angle_deg"], label=label)
        if len(result["seeds"]) > 1:
            lo = [m - s for m, s in zip(curve["angle_deg"], curve["angle_std"])]
            hi = [m + s for m, s in zip(curve["angle_deg"], curve["angle_std"])]
            axes[0].fill_between(steps, lo, hi, alpha=0.2)
        axes[1].plot(steps, curve["distance"], label=label)
    axes[0].set_ylabel("angle(J_G, J_F^T) (degrees)")
    axes[1].set_ylabel("distance |J_G - J_F^T| / |J_F|")
    for ax in axes:
        ax.set_xlabel("feedback iterations")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Jacobian matching, LeNet's last layer ({result['dataset']}, {result['preset']} settings, "
                 f"{len(result['seeds'])} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_gmp(result: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, std = result["mean"], result["std"]
    methods = list(mean)
    layers = list(mean[methods[0]])
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for j, m in enumerate(methods):
        ax.bar([i + j * width for i in range(len(layers))], [mean[m][l] for l in layers], width,
               yerr=[std[m][l] for l in layers] if len(result["seeds"]) > 1 else None, capsize=2, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers)
    ax.set_ylabel("angle(DTP update, BP gradient) (degrees)")
    ax.set_title(f"Gradient matching, LeNet ({result['dataset']}, {result['preset']} settings, "
                 f"{result['iterations']} iterations, {len(result['seeds'])} seeds)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("figure", choices=["jmc", "gmp"],
                   help="jmc: Jacobian matching of the last layer over iterations, L-DRL vs DRL (Fig. 4.2); "
                        "gmp: per-layer angle between DTP updates and BP gradients (Fig. 4.3)")
    p.add_argument("--dataset", default="digits", help="digits (default, embedded), cifar10 or imagenet32")
    p.add_argument("--data", default=None, help="data path for cifar10/imagenet32")
    p.add_argument("--preset", choices=list(THEORY_PRESETS), default=None,
                   help="settings: 'paper' (the official theorem_test.py: one batch of 256 per seed, 5,000 "
                        "iterations per layer, LeNet without biases; the default off the digits) or 'quick' "
                        "(the default on the digits: 1,000 jmc / 500 gmp iterations)")
    p.add_argument("--iterations", type=int, default=None,
                   help="feedback iterations (per layer for gmp); default: the preset's")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's; paper 0,1, quick 0,1,2)")
    p.add_argument("--methods", default=",".join(GMP_METHODS),
                   help=f"gmp only: comma-separated methods (default {','.join(GMP_METHODS)})")
    p.add_argument("--width", type=float, default=1.0, help="LeNet channel/hidden multiplier (default 1)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the result as JSON, after every seed; a run with the same settings and file "
                        "reuses the seeds already in it (resume)")
    p.add_argument("--merge", action="append", default=[], metavar="FILE",
                   help="also reuse the seeds of this earlier result file made with the same settings (for "
                        "example methods or seeds run in another process or on another machine); repeatable")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG figure")
    p.add_argument("--markdown", default=None, metavar="FILE",
                   help="write a markdown table of the result beside the paper's values")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _load_previous(path) -> dict | None:
    if not path or not Path(path).exists():
        return None
    try:
        previous = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} exists but is not a theory result ({err}): remove it or pick another file")
    return previous if isinstance(previous, dict) else None


def run(args) -> int:
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        seeds = None
        if args.seeds is not None:
            try:
                seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
            except ValueError:
                raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
            if not seeds:
                raise ValueError("--seeds is empty")
        if args.iterations is not None and args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
        save = (lambda result: atomic_write_json(result, args.json)) if args.json else None
        kw = dict(dataset=args.dataset, data=args.data, preset=args.preset, iterations=args.iterations,
                  seeds=seeds, width=args.width, progress=say, resume=[_load_previous(args.json)], save=save)
        for path in args.merge:
            if not Path(path).is_file():
                raise ValueError(f"--merge {path}: no such file")
            kw["resume"].append(_load_previous(path))
        if args.figure == "jmc":
            result = jmc(**kw)
            summary = {m: {"first": result[m]["angle_deg"][0], "last": result[m]["angle_deg"][-1],
                           "settled_at": result["settled_at"][m]} for m in ("ldrl", "drl")}
            summary["drl"]["limit_deg"] = result["drl"]["limit_deg"]
        else:
            methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
            result = gmp(methods=methods, **kw)
            summary = {"mean": result["mean"], "std": result["std"]}
    except (ValueError, OSError) as err:
        if os.environ.get("DTP_FAST_DEBUG"):
            raise
        print(f"dtp-fast theory: error: {err}", file=sys.stderr)
        return 2
    if save:
        save(result)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        (_plot_jmc if args.figure == "jmc" else _plot_gmp)(result, args.plot)
    if args.markdown:
        atomic_write_text((jmc_markdown if args.figure == "jmc" else gmp_markdown)(result), args.markdown)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dtp-fast theory", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
