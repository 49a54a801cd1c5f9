"""The paper's two theory figures as commands (``dtp-fast theory jmc | gmp``).

jmc (Fig. 4.2, the Jacobian Matching Condition): on LeNet with frozen forward
weights, the angle and relative distance between the last layer's feedback
Jacobian J_G and J_F^T over feedback iterations, for L-DRL (G of the last
block) against DRL (the direct feedback into the last hidden layer). For a
Linear last block both Jacobians are the weight matrices themselves.

gmp (Fig. 4.3, the Gradient Matching Property): after feedback training, the
angle between each layer's DTP update and its backprop gradient, for L-DRL,
DRL, random feedback (untrained) and symmetric feedback (G = F^T exactly).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch

from .data import Loader, load_dataset
from .diagnostics import angle_and_distance, gradient_alignment
from .family import ensure_direct_feedback, symmetric_feedback_, train_family_feedback
from .feedback import FeedbackConfig, FeedbackState, train_feedback
from .noise import CounterNoise
from .presets import lenet
from .utils import atomic_write_json

__all__ = ["jmc", "gmp", "add_arguments", "run", "main"]

# L-DRL and DRL settings for LeNet's feedback layers (conv_1, fc1, fc2); DRL's apply to Q of conv_0, conv_1, fc1.
# jmc follows the last layer for long with a smaller step, so that its angle keeps falling.
LDRL = dict(lr=[0.1, 0.3, 0.5], noise=[0.1, 0.05, 0.05])
LDRL_JMC = dict(lr=[0.1, 0.3, 0.1], noise=[0.1, 0.05, 0.05])
DRL = dict(lr=[0.3, 0.3, 1.0], noise=[0.1, 0.05, 0.05])


def _setup(dataset: str, data, seed: int, width: float, batch_size: int):
    ds = load_dataset(dataset, data)
    torch.manual_seed(seed)
    channels = tuple(max(1, round(c * width)) for c in (32, 64))
    net = lenet(ds.in_shape, ds.num_classes, channels=channels, hidden=max(1, round(512 * width)))
    loader = Loader(ds, "train", batch_size, seed=seed, shuffle=True, augment=False, drop_last=True)
    return ds, net, loader


def _batches(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@torch.no_grad()
def _feedback_step(method: str, net, x, cfg, state, noise, step: int) -> None:
    """One batch of feedback training with L-DRL (fastest backend) or DRL, forward weights frozen."""
    acts, sw = net.activations(x)
    if method == "drl":
        train_family_feedback("drl", net, acts, sw, cfg, state, noise, step, report="none")
    else:
        train_feedback(net, acts, sw, cfg, state, noise, step, backend="auto", report="none")


def jmc(dataset="digits", data=None, iterations=1000, seeds=(0, 1, 2), every=None, batch_size=128,
        width=1.0, progress=None) -> dict:
    """Angle/distance between J_G and J_F^T of LeNet's last layer over feedback iterations (seed means)."""
    every = every or max(1, iterations // 50)
    steps = list(range(0, iterations + 1, every))
    curves = {m: {"angle_deg": [], "distance": []} for m in ("ldrl", "drl")}
    per_seed = {m: [] for m in curves}
    for seed in seeds:
        for method in curves:
            _, net, loader = _setup(dataset, data, seed, width, batch_size)
            last, hidden = net.names[-1], net.names[-2]
            w = net.blocks[last].f_op.weight
            if method == "drl":
                ensure_direct_feedback(net)
                weight = net.direct[hidden].weight             # output -> last hidden layer: (d_hidden, classes)
                names = net.names[:-1]
                hp = dict(DRL)
            else:
                weight = net.blocks[last].g_op.weight
                names = net.feedback_names
                hp = dict(LDRL_JMC)
            iters = [0] * (len(names) - 1) + [every]
            cfg = FeedbackConfig(iterations=iters, lr=hp["lr"], noise=hp["noise"]).resolve(names)
            state, noise, batches = FeedbackState(), CounterNoise(seed), _batches(loader)
            trace = []
            for k, _ in enumerate(steps):
                trace.append(angle_and_distance(w, weight.t()))
                if k == len(steps) - 1:
                    break
                _feedback_step(method, net, next(batches)[0], cfg, state, noise, k)
            per_seed[method].append(trace)
            if progress:
                progress(f"jmc {method} seed {seed}: angle {trace[0]['angle_deg']:.1f} -> "
                         f"{trace[-1]['angle_deg']:.1f} deg")
    for method, traces in per_seed.items():
        for key in ("angle_deg", "distance"):
            curves[method][key] = [sum(t[i][key] for t in traces) / len(traces) for i in range(len(steps))]
    return {"iterations": steps, **curves}


def gmp(dataset="digits", data=None, iterations=500, seeds=(0, 1, 2), batch_size=128, width=1.0,
        progress=None, methods=("ldrl", "drl", "random", "symmetric")) -> dict:
    """Per-layer angle between the DTP update and the BP gradient after feedback training (seed means)."""
    sums: dict = {m: {} for m in methods}
    for seed in seeds:
        for method in methods:
            ds, net, loader = _setup(dataset, data, seed, width, batch_size)
            batches = _batches(loader)
            rule = "direct" if method == "drl" else "difference"
            if method == "symmetric":
                symmetric_feedback_(net)
            elif method in ("ldrl", "drl"):
                names = net.names[:-1] if method == "drl" else net.feedback_names
                hp = DRL if method == "drl" else LDRL
                chunk = max(1, iterations // 10)
                cfg = FeedbackConfig(iterations=chunk, lr=hp["lr"], noise=hp["noise"]).resolve(names)
                state, noise = FeedbackState(), CounterNoise(seed)
                for k in range(math.ceil(iterations / chunk)):
                    _feedback_step(method, net, next(batches)[0], cfg, state, noise, k)
            if method == "drl":
                ensure_direct_feedback(net)
            x, y = next(iter(Loader(ds, "test", 256, seed=seed)))
            angles = gradient_alignment(net, x, y, rule=rule)
            for layer, a in angles.items():
                sums[method][layer] = sums[method].get(layer, 0.0) + a / len(seeds)
            if progress:
                progress(f"gmp {method} seed {seed}: " + ", ".join(f"{k} {v:.1f}" for k, v in angles.items()))
    return sums


def _plot_jmc(result: dict, path, dataset: str, seeds: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, label in (("ldrl", "L-DRL"), ("drl", "DRL")):
        axes[0].plot(result["iterations"], result[method]["angle_deg"], label=label)
        axes[1].plot(result["iterations"], result[method]["distance"], label=label)
    axes[0].set_ylabel("angle(J_G, J_F^T) (degrees)")
    axes[1].set_ylabel("distance |J_G - J_F^T| / |J_F|")
    for ax in axes:
        ax.set_xlabel("feedback iterations")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Jacobian matching, LeNet's last layer ({dataset}, {seeds} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_gmp(result: dict, path, dataset: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(next(iter(result.values())))
    methods = list(result)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for j, m in enumerate(methods):
        ax.bar([i + j * width for i in range(len(layers))], [result[m][l] for l in layers], width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], layers)
    ax.set_ylabel("angle(DTP update, BP gradient) (degrees)")
    ax.set_title(f"Gradient matching after feedback training, LeNet ({dataset})")
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
    p.add_argument("--iterations", type=int, default=None,
                   help="feedback iterations (per layer for gmp); default 1000 (jmc), 500 (gmp); the paper: 5000")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds to average over (default 0,1,2)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    p.add_argument("--width", type=float, default=1.0, help="LeNet channel/hidden multiplier (default 1)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the result as JSON")
    p.add_argument("--plot", default=None, metavar="FILE", help="write a PNG figure")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    try:
        seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    except ValueError:
        print(f"dtp-fast theory: error: --seeds must be comma-separated integers, got {args.seeds!r}",
              file=sys.stderr)
        return 2
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    kw = dict(dataset=args.dataset, data=args.data, seeds=seeds, batch_size=args.batch_size, width=args.width,
              progress=say)
    try:
        if args.figure == "jmc":
            result = jmc(iterations=args.iterations or 1000, **kw)
            summary = {m: {"first": result[m]["angle_deg"][0], "last": result[m]["angle_deg"][-1]}
                       for m in ("ldrl", "drl")}
        else:
            result = gmp(iterations=args.iterations or 500, **kw)
            summary = result
    except (ValueError, OSError) as err:
        if os.environ.get("DTP_FAST_DEBUG"):
            raise
        print(f"dtp-fast theory: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        atomic_write_json(result, args.json)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        if args.figure == "jmc":
            _plot_jmc(result, args.plot, args.dataset, len(seeds))
        else:
            _plot_gmp(result, args.plot, args.dataset)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dtp-fast theory", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
