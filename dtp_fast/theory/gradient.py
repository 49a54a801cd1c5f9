"""The Gradient Matching Property (the paper's Fig. 4.3): ``dtp-fast theory gmp``."""
from __future__ import annotations

import math
import time

from ..data import load_dataset
from ..diagnostics import gradient_alignment
from ..family import ensure_direct_feedback, symmetric_feedback_
from ..feedback import FeedbackConfig, FeedbackState
from ..noise import CounterNoise
from .base import TheoryPreset, _feedback_step, _mean_std, _new_result, _origin, _reusable, _Run, theory_preset

__all__ = ["gmp", "GMP_METHODS"]

GMP_METHODS = ("ldrl", "drl", "random", "symmetric")


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
    result = _new_result("gmp", preset, dataset, width, iterations, seeds, methods,
                         ("per_seed", "seconds", "origin"))
    per_seed, seconds, origin = result["per_seed"], result["seconds"], result["origin"]
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
