"""The Jacobian Matching Condition (the paper's Fig. 4.2): ``dtp-fast theory jmc``."""
from __future__ import annotations

import time

import torch

from ..data import load_dataset
from ..diagnostics import angle_and_distance
from ..family import ensure_direct_feedback
from ..feedback import FeedbackConfig, FeedbackState
from ..noise import CounterNoise
from .base import TheoryPreset, _feedback_step, _mean_std, _new_result, _origin, _reusable, _Run, theory_preset

__all__ = ["jmc"]


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
    result = _new_result("jmc", preset, dataset, width, steps, seeds, ("ldrl", "drl"))
    per_seed, origin = result["per_seed"], result["origin"]
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
