"""Finished runs for the report: finding and reading run folders, grouping them over seeds.

A run folder holds ``summary.json`` and ``metrics.jsonl`` (written by
:class:`~dtp_fast.Trainer`); runs are grouped by (preset, dataset, algo, feedback
budget), the runs of one group with different seeds being repeats. The feedback
budget is the ``feedback_budget`` setting ("paper" or "adaptive"; "paper" for a
summary written before the setting existed, None for backprop).
"""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

__all__ = ["ReportError", "find_runs", "load_run", "group_runs", "ALGO_NAMES"]

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
ALGO_NAMES = {"ldrl": "L-DRL", "parallel": "parallel L-DRL", "dtp": "DTP", "tp": "TP", "drl": "DRL",
              "bp": "backprop"}
_ALGO_ORDER = {name: i for i, name in enumerate(ALGO_NAMES)}
_BUDGET_ORDER = {"paper": 0, "adaptive": 1}
# config keys that may differ between the seeds of a group without making them different experiments
_NOT_SETTINGS = {"seed", "progress", "device", "backend", "diagnostics", "feedback_memory", "tensorboard"}


class ReportError(ValueError):
    """Bad report input (the message names the folder or file, and the line)."""


# ---------------------------------------------------------------------------- reading
def _is_run(path: Path) -> bool:
    return (path / SUMMARY).is_file() or (path / METRICS).is_file()


def find_runs(paths, warn=None) -> list[Path]:
    """The run folders named by ``paths``: a folder holding ``summary.json`` or
    ``metrics.jsonl`` is a run; any other folder is searched for runs in its
    sub-folders and their sub-folders. A run found that way with no
    ``summary.json`` (unfinished) is skipped, with a message to ``warn``."""
    warn = warn or (lambda msg: print(f"dtp-fast report: {msg}", file=sys.stderr))
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"{p} does not exist")
        if not p.is_dir():
            raise ReportError(f"{p} is not a folder: pass run folders (holding {SUMMARY} and {METRICS}) "
                              f"or folders of runs")
        if _is_run(p):
            found.append(p)
            continue
        sub = []
        for child in sorted(c for c in p.iterdir() if c.is_dir()):
            if _is_run(child):
                sub.append(child)
            else:
                sub += sorted(g for g in child.iterdir() if g.is_dir() and _is_run(g))
        if not sub:
            raise ReportError(f"{p} holds no run: neither it nor its sub-folders have a {SUMMARY} "
                              f"and {METRICS}")
        for run_dir in sub:
            if not (run_dir / SUMMARY).is_file():
                warn(f"skipping {run_dir}: no {SUMMARY} (unfinished run?)")
            else:
                found.append(run_dir)
        if not any((r / SUMMARY).is_file() for r in sub):
            raise ReportError(f"{p} holds no finished run: none of its runs has a {SUMMARY}")
    unique, seen = [], set()
    for r in found:
        key = r.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def _read_json(path: Path):
    try:
        text = path.read_text()
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno} ({err.msg})") from None


def _read_jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}, line {n}: invalid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(rec, dict) or "epoch" not in rec:
            raise ReportError(f"{path}, line {n}: expected a JSON object with an 'epoch' key")
        records.append(rec)
    return records


def load_run(path) -> dict:
    """One run folder: ``{"dir", "summary", "metrics", "preset", "dataset", "algo", "seed",
    "feedback_budget"}`` (the budget is None for backprop, which trains no feedback weights)."""
    path = Path(path)
    missing = [name for name in (SUMMARY, METRICS) if not (path / name).is_file()]
    if missing:
        raise ReportError(f"{path} is not a finished run: it has no {' and no '.join(missing)}")
    summary = _read_json(path / SUMMARY)
    if not isinstance(summary, dict):
        raise ReportError(f"{path / SUMMARY}: expected a JSON object")
    for key in ("algo", "test_accuracy", "epochs"):
        if summary.get(key) is None:
            raise ReportError(f"{path / SUMMARY} has no {key!r}: not a summary written by dtp_fast")
    metrics = _read_jsonl(path / METRICS)
    if not metrics:
        raise ReportError(f"{path / METRICS} holds no epoch")
    metrics = sorted({rec["epoch"]: rec for rec in metrics}.values(), key=lambda r: r["epoch"])  # last line wins
    config = summary.get("config") or {}
    return {"dir": path, "summary": summary, "metrics": metrics,
            "preset": summary.get("preset") or "custom", "dataset": summary.get("dataset") or "?",
            "algo": summary["algo"], "seed": config.get("seed"),
            "feedback_budget": None if summary["algo"] == "bp" else config.get("feedback_budget") or "paper"}


# ---------------------------------------------------------------------------- aggregation
def _stats(values) -> dict | None:
    """mean, sample std (ddof=1; None for one value), min, max over the non-None values."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None,
            "min": min(vals), "max": max(vals), "n": len(vals), "values": vals}


def _curve(runs, get) -> dict | None:
    """Per epoch: mean, min and max over the runs that have the value."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for rec in r["metrics"]:
            v = get(rec)
            if v is not None and math.isfinite(float(v)):
                by_epoch.setdefault(int(rec["epoch"]), []).append(float(v))
    if not by_epoch:
        return None
    epochs = sorted(by_epoch)
    return {"epoch": epochs, "mean": [statistics.fmean(by_epoch[e]) for e in epochs],
            "min": [min(by_epoch[e]) for e in epochs], "max": [max(by_epoch[e]) for e in epochs],
            "n": [len(by_epoch[e]) for e in epochs]}


def _running_sum(r: dict, get) -> dict:
    """Run ``r`` with one metrics record per epoch holding the running sum of ``get(record)`` as "value"
    (up to the first epoch that lacks it), for :func:`_curve`."""
    out, total = [], 0.0
    for rec in r["metrics"]:
        v = get(rec)
        if v is None or not math.isfinite(float(v)):
            break
        total += float(v)
        out.append({"epoch": rec["epoch"], "value": total})
    return {"metrics": out}


def _along(c: dict, x: dict) -> dict | None:
    """Curve ``c`` at the epochs that curve ``x`` also has, with "x": the mean of ``x`` there (for
    plotting ``c`` against, say, the cumulative training seconds instead of the epoch)."""
    xs = dict(zip(x["epoch"], x["mean"]))
    keep = [i for i, e in enumerate(c["epoch"]) if e in xs]
    if not keep:
        return None
    out = {k: [c[k][i] for i in keep] for k in ("epoch", "mean", "min", "max", "n")}
    return {**out, "x": [xs[e] for e in out["epoch"]]}


def _per_epoch(s: dict, key: str):
    v, e = s.get(key), s.get("epochs")
    return v / e if v is not None and e else None


def _layers(dicts) -> list[str]:
    out: list[str] = []
    for d in dicts:
        for k in d or {}:
            if k not in out:
                out.append(k)
    return out


def _differences(runs) -> dict:
    """Config keys (besides the seed and speed-only ones) and architectures whose values differ (the
    adaptive budget's knobs only where the runs use it)."""
    diff = {}
    configs = [{**(r["summary"].get("config") or {}), **{f"arch.{k}": v for k, v in
                                                          (r["summary"].get("arch") or {}).items()}}
               for r in runs]
    for key in _layers(configs):
        if key in _NOT_SETTINGS or key == "epochs" or not all(key in c for c in configs):
            continue  # (a key some runs lack comes from another dtp_fast version)
        if key.startswith("budget_") and all(c.get("feedback_budget", "paper") == "paper" for c in configs):
            continue  # knobs of a policy these runs did not use
        vals = [json.dumps(c.get(key), sort_keys=True) for c in configs]
        if len(set(vals)) > 1:
            diff[key] = sorted(set(vals))
    return diff


def _mean(st: dict | None):
    return None if st is None else st["mean"]


def _ratio(a, b):
    return a / b if a is not None and b else None


def _network(g: dict) -> tuple:
    """What makes two groups comparable: the data set and the network (a paper experiment's preset,
    such as cifar10-vgg-bp, stands for its network preset) with its architecture settings."""
    from ..presets import RECIPES

    preset = RECIPES[g["preset"]].preset if g["preset"] in RECIPES else g["preset"]
    return preset, g["dataset"], json.dumps(g.get("arch"), sort_keys=True)


def _time_to_accuracy(groups: list[dict]) -> None:
    """Set each group's "time_to_accuracy": its mean totals relative to the paper-budget L-DRL group
    and to the backprop group of the same network and data set (:func:`_network`), and the epoch and training seconds
    (mean over the seeds) at which its mean test accuracy first reaches backprop's final mean
    test accuracy. A number whose reference group is missing is None."""
    for g in groups:
        same = [h for h in groups if _network(h) == _network(g)]
        paper = next((h for h in same if h["algo"] == "ldrl" and h["feedback_budget"] == "paper"), None)
        bp = next((h for h in same if h["algo"] == "bp"), None)
        t = {"paper_group": paper and paper["label"], "backprop_group": bp and bp["label"],
             "feedback_iterations_share": None, "train_seconds_share": None, "backprop_time_multiple": None,
             "backprop_accuracy": None, "reached_backprop_accuracy": None, "epoch_to_backprop_accuracy": None,
             "seconds_to_backprop_accuracy": None}
        if paper is not None:
            t["feedback_iterations_share"] = _ratio(_mean(g["feedback_iterations"]),
                                                    _mean(paper["feedback_iterations"]))
            t["train_seconds_share"] = _ratio(_mean(g["train_seconds"]), _mean(paper["train_seconds"]))
        if bp is not None and bp["test_accuracy"] is not None:
            t["backprop_time_multiple"] = _ratio(_mean(g["train_seconds"]), _mean(bp["train_seconds"]))
            t["backprop_accuracy"] = target = bp["test_accuracy"]["mean"]
            acc, secs = g["curves"].get("test_accuracy"), g["curves"].get("cumulative_train_seconds")
            c = _along(acc, secs) if acc and secs else None
            if c is not None:
                hit = next(((e, x) for e, x, m in zip(c["epoch"], c["x"], c["mean"]) if m >= target), None)
                t["reached_backprop_accuracy"] = hit is not None
                if hit is not None:
                    t["epoch_to_backprop_accuracy"], t["seconds_to_backprop_accuracy"] = hit
        g["time_to_accuracy"] = t


def group_runs(runs: list[dict]) -> list[dict]:
    """Groups by (preset, dataset, algo, feedback budget) with their aggregated numbers
    (accuracies as fractions, as in ``summary.json``; times in seconds), and each group's
    "time_to_accuracy" (see :func:`_time_to_accuracy`)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["preset"], r["dataset"], r["algo"], r["feedback_budget"]), []).append(r)
    out = []
    for (preset, dataset, algo, budget), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _ALGO_ORDER.get(kv[0][2], 9), kv[0][2],
                                            _BUDGET_ORDER.get(kv[0][3], 9), str(kv[0][3]))):
        members.sort(key=lambda r: (r["seed"] is None, r["seed"] if isinstance(r["seed"], int) else 0,
                                    str(r["dir"])))
        sums = [r["summary"] for r in members]
        seeds = [r["seed"] for r in members]
        dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        g = {
            "preset": preset, "dataset": dataset, "algo": algo, "feedback_budget": budget,
            "arch": sums[0].get("arch"),
            "label": f"{preset} {dataset} {ALGO_NAMES.get(algo, algo)}"
                     + (f" ({budget} budget)" if budget not in (None, "paper") else ""),
            "n_runs": len(members), "seeds": seeds, "duplicate_seeds": dup,
            "runs": [str(r["dir"]) for r in members],
            "epochs": sorted({s["epochs"] for s in sums}),
            "backends": sorted({str(s.get("backend")) for s in sums}),
            "devices": sorted({str(s.get("device")) for s in sums}),
            "test_accuracy": _stats(s.get("test_accuracy") for s in sums),
            "test_top5": _stats(s.get("test_top5") for s in sums),
            "best_test_accuracy": _stats(s.get("best_test_accuracy") for s in sums),
            "seconds_per_epoch": _stats(_per_epoch(s, "train_seconds") for s in sums),
            "feedback_seconds_per_epoch": _stats(_per_epoch(s, "feedback_seconds") for s in sums),
            "forward_seconds_per_epoch": _stats(_per_epoch(s, "forward_seconds") for s in sums),
            "images_per_second": _stats(s.get("images_per_second") for s in sums),
            "feedback_share": _stats((s.get("feedback_seconds") or 0.0) / s["train_seconds"]
                                     if s.get("train_seconds") else None for s in sums),
            "train_seconds": _stats(s.get("train_seconds") for s in sums),
            "feedback_iterations": None if algo == "bp" else
            _stats((s.get("feedback_iterations") or {}).get("total") for s in sums),
            "alignment": {}, "gradient_angle_deg": {},
            "settings_differ": _differences(members),
        }
        for layer in _layers(s.get("alignment") for s in sums):
            a = [(s.get("alignment") or {}).get(layer) or {} for s in sums]
            g["alignment"][layer] = {"angle_deg": _stats(x.get("angle_deg") for x in a),
                                     "distance": _stats(x.get("distance") for x in a)}
        for layer in _layers(s.get("gradient_angle_deg") for s in sums):
            g["gradient_angle_deg"][layer] = _stats((s.get("gradient_angle_deg") or {}).get(layer) for s in sums)
        curves = {k: _curve(members, lambda rec, k=k: rec.get(k))
                  for k in ("test_accuracy", "train_accuracy", "test_top5", "train_loss", "test_loss",
                            "epoch_seconds", "feedback_seconds", "forward_seconds")}
        curves["alignment_angle_deg"] = {
            layer: _curve(members, lambda rec, layer=layer: ((rec.get("alignment") or {}).get(layer) or {})
                          .get("angle_deg"))
            for layer in _layers(rec.get("alignment") for r in members for rec in r["metrics"])}
        curves["cumulative_train_seconds"] = _curve([_running_sum(r, lambda rec: rec.get("epoch_seconds"))
                                                     for r in members], lambda rec: rec["value"])
        curves["cumulative_feedback_iterations"] = None if algo == "bp" else _curve(
            [_running_sum(r, lambda rec: sum(rec["feedback_iterations"].values())
                          if rec.get("feedback_iterations") is not None else None) for r in members],
            lambda rec: rec["value"])
        g["curves"] = {k: v for k, v in curves.items() if v}
        out.append(g)
    _time_to_accuracy(out)
    return out
