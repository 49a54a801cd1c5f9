"""``dtp-fast report``: tables and figures for finished runs, grouped over seeds.

Reads run folders written by :class:`~dtp_fast.Trainer` (``summary.json`` and
``metrics.jsonl``), groups them by (preset, dataset, algo) -- runs of one group
with different seeds are repeats -- and writes to the output folder:

- ``report.md``: one table row per group (test top-1/top-5 as mean ± sample
  std over the seeds, best top-1, seconds per epoch, images/s, feedback share
  of the training time), the final weight-alignment angles per layer of the
  groups that train feedback weights (L-DRL and the other DTP variants), the
  list of runs and links to the figures;
- ``accuracy.png``, ``loss.png``, ``alignment.png``, ``time.png`` (matplotlib,
  imported only when the figures are drawn);
- ``report.json``: the same numbers, and the per-epoch curves, as JSON.

A folder given on the command line that is not itself a run is searched for
runs in its sub-folders (two levels deep). Use it as ``dtp-fast report ...``;
:func:`add_arguments` and :func:`run` are the pieces the CLI wires up, and
:func:`make_report` is the Python entry point.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import math
import os
import statistics
import sys
from pathlib import Path

__all__ = ["ReportError", "add_arguments", "run", "main", "make_report", "find_runs", "load_run",
           "group_runs", "to_markdown", "FIGURES"]

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
FIGURES = ("accuracy.png", "loss.png", "alignment.png", "time.png")
ALGO_NAMES = {"ldrl": "L-DRL", "parallel": "parallel L-DRL", "dtp": "DTP", "tp": "TP", "drl": "DRL",
              "bp": "backprop"}
_ALGO_ORDER = {name: i for i, name in enumerate(ALGO_NAMES)}
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
    """One run folder: ``{"dir", "summary", "metrics", "preset", "dataset", "algo", "seed"}``."""
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
            "algo": summary["algo"], "seed": config.get("seed")}


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
    """Config keys (besides the seed and speed-only ones) and architectures whose values differ."""
    diff = {}
    configs = [{**(r["summary"].get("config") or {}), **{f"arch.{k}": v for k, v in
                                                          (r["summary"].get("arch") or {}).items()}}
               for r in runs]
    for key in _layers(configs):
        if key in _NOT_SETTINGS or key == "epochs" or not all(key in c for c in configs):
            continue  # (a key some runs lack comes from another dtp_fast version)
        vals = [json.dumps(c.get(key), sort_keys=True) for c in configs]
        if len(set(vals)) > 1:
            diff[key] = sorted(set(vals))
    return diff


def group_runs(runs: list[dict]) -> list[dict]:
    """Groups by (preset, dataset, algo) with their aggregated numbers (accuracies as
    fractions, as in ``summary.json``; times in seconds)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["preset"], r["dataset"], r["algo"]), []).append(r)
    out = []
    for (preset, dataset, algo), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _ALGO_ORDER.get(kv[0][2], 9), kv[0][2])):
        members.sort(key=lambda r: (r["seed"] is None, r["seed"] if isinstance(r["seed"], int) else 0,
                                    str(r["dir"])))
        sums = [r["summary"] for r in members]
        seeds = [r["seed"] for r in members]
        dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
        g = {
            "preset": preset, "dataset": dataset, "algo": algo,
            "label": f"{preset} {dataset} {ALGO_NAMES.get(algo, algo)}",
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
        g["curves"] = {k: v for k, v in curves.items() if v}
        out.append(g)
    return out


# ---------------------------------------------------------------------------- markdown
def _pct(st: dict | None, key: str = "mean") -> str:
    return "-" if st is None or st.get(key) is None else f"{100 * st[key]:.2f}"


def _pct_pm(st: dict | None) -> str:
    if st is None:
        return "-"
    return f"{100 * st['mean']:.2f} ± " + ("n/a" if st["std"] is None else f"{100 * st['std']:.2f}")


def _num_pm(st: dict | None, fmt: str = ".1f") -> str:
    if st is None:
        return "-"
    return f"{st['mean']:{fmt}} ± " + ("n/a" if st["std"] is None else f"{st['std']:{fmt}}")


def _secs(st: dict | None) -> str:
    return "-" if st is None else f"{st['mean']:.3g}"


def to_markdown(rep: dict) -> str:
    """The report as markdown (relative links to the figures)."""
    groups = rep["groups"]
    lines = [f"# {rep['title']}", "",
             f"{rep['n_runs']} run(s) in {len(groups)} group(s), grouped by (preset, dataset, algo); the runs "
             f"of a group are repeats with different seeds. Accuracies are on the test split, in %, as mean ± "
             f"sample standard deviation (ddof=1) over the seeds (n/a with one seed). Written {rep['date']} "
             f"by dtp_fast {rep['dtp_fast_version']}.", "",
             "| preset | dataset | algo | backend | seeds | epochs | test top-1 (%) | test top-5 (%) | "
             "best top-1 (%) | s / epoch | images/s | feedback share |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        share = "-" if g["algo"] == "bp" or g["feedback_share"] is None else \
            f"{100 * g['feedback_share']['mean']:.1f}%"
        ips = "-" if g["images_per_second"] is None else f"{g['images_per_second']['mean']:.0f}"
        lines.append(f"| {g['preset']} | {g['dataset']} | {g['algo']} | {', '.join(g['backends'])} | "
                     f"{g['n_runs']} | {', '.join(map(str, g['epochs']))} | {_pct_pm(g['test_accuracy'])} | "
                     f"{_pct_pm(g['test_top5'])} | {_pct(g['best_test_accuracy'])} | "
                     f"{_secs(g['seconds_per_epoch'])} | {ips} | {share} |")
    lines += ["", "Best top-1: the best test accuracy over a run's epochs, mean over the seeds. s / epoch and "
              "images/s: training only (no evaluation), mean over the seeds. Feedback share: the part of the "
              "training time spent training the feedback weights (L-DRL and the other DTP variants)."]
    notes = []
    for g in groups:
        if g["duplicate_seeds"]:
            notes.append(f"- {g['label']}: several runs share seed(s) "
                         f"{', '.join(map(str, g['duplicate_seeds']))}.")
        if g["settings_differ"]:
            notes.append(f"- {g['label']}: the runs differ in " + "; ".join(
                f"`{k}` ({' / '.join(v)})" for k, v in g["settings_differ"].items()) + ".")
        if len(g["epochs"]) > 1:
            notes.append(f"- {g['label']}: the runs have different numbers of epochs "
                         f"({', '.join(map(str, g['epochs']))}).")
    if notes:
        lines += ["", "**Caution**, runs grouped together are not plain repeats:", *notes]

    ldrl = [g for g in groups if g["algo"] != "bp"]
    if ldrl:
        lines += ["", "## Feedback weight alignment (after the last epoch)", "",
                  "Angle between each feedback layer's weights G and its forward weights F transposed, their "
                  "relative distance |F^T - G| / |F^T|, and the angle between the DTP update and the backprop "
                  "gradient of the same layer's forward weights; mean ± sample std over the seeds.", "",
                  "| preset | dataset | algo | layer | angle(G, F^T) (deg) | distance | angle(DTP, BP) (deg) |",
                  "|---|---|---|---|---|---|---|"]
        for g in ldrl:
            layers = _layers([g["gradient_angle_deg"], g["alignment"]])
            if not layers:
                lines.append(f"| {g['preset']} | {g['dataset']} | {g['algo']} | (no diagnostics: trained with "
                             f"diagnostics off) | - | - | - |")
            for layer in layers:
                a = g["alignment"].get(layer) or {}
                lines.append(f"| {g['preset']} | {g['dataset']} | {g['algo']} | {layer} | "
                             f"{_num_pm(a.get('angle_deg'))} | "
                             f"{_num_pm(a.get('distance'), '.3f')} | "
                             f"{_num_pm(g['gradient_angle_deg'].get(layer))} |")
        lines += ["", "A layer without an angle(G, F^T) has no feedback layer G of its own: the first layer "
                  "(nothing is sent below it)" + (", and every layer with DRL's direct feedback from the output"
                                                 if any(g["algo"] == "drl" for g in ldrl) else "") + "."]

    lines += ["", "## Runs", "", "| group | seed | epochs | test top-1 (%) | backend | folder |",
              "|---|---|---|---|---|---|"]
    for r in rep["runs"]:
        lines.append(f"| {r['preset']} {r['dataset']} {r['algo']} | {r['seed']} | {r['epochs']} | "
                     f"{100 * r['test_accuracy']:.2f} | {r['backend']} | [{r['path']}]({r['path']}/) |")
    if rep["figures"]:
        captions = {"accuracy.png": "Test top-1 accuracy (solid, min-max band over the seeds) and train "
                                    "accuracy (dashed) per epoch",
                    "loss.png": "Train loss (summed layer-local loss for the DTP variants, cross-entropy for backprop) and test "
                                "cross-entropy per epoch",
                    "alignment.png": "Angle between the feedback weights G and F transposed per epoch, per "
                                     "layer (the groups that train feedback weights)",
                    "time.png": "Training seconds per epoch: feedback vs forward phase"}
        lines += ["", "## Figures", ""]
        for name in rep["figures"]:
            lines += [f"**{name}**: {captions.get(name, '')}.", "", f"![{name[:-4]}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------- figures
def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ReportError("the figures need matplotlib, which is not installed: pip install matplotlib "
                          "(or pass --no-plots for report.md and report.json only)") from None
    return Figure, FigureCanvasAgg


def _save(fig, canvas_cls, path: Path) -> None:
    from .utils import _atomic

    canvas_cls(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _atomic(path, lambda fh: fh.write(buf.getvalue()))


def _color(i: int):
    return f"C{i % 10}"


def _band(ax, c: dict, color, scale=1.0, label=None, style="-", band=True):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    x = c["epoch"]
    ax.plot(x, [scale * v for v in c["mean"]], style, color=color, label=label, marker="o" if len(x) < 3 else None,
            markersize=3)
    if band and any(n > 1 for n in c["n"]):
        ax.fill_between(x, [scale * v for v in c["min"]], [scale * v for v in c["max"]], color=color, alpha=0.18,
                        linewidth=0)


def write_figures(groups: list[dict], out: Path) -> list[str]:
    """Draw the figures into ``out``; returns the file names written."""
    Figure, Canvas = _matplotlib()
    written = []

    def legend_label(g):
        return f"{g['label']} ({g['n_runs']} seed{'s' if g['n_runs'] != 1 else ''})"

    # accuracy
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    for i, g in enumerate(groups):
        c = g["curves"]
        if "test_accuracy" in c:
            _band(ax, c["test_accuracy"], _color(i), 100, f"{legend_label(g)}: test")
        if "train_accuracy" in c:
            _band(ax, c["train_accuracy"], _color(i), 100, f"{legend_label(g)}: train", style="--", band=False)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Top-1 accuracy (test solid with min-max band over seeds, train dashed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, Canvas, out / "accuracy.png")
    written.append("accuracy.png")

    # loss
    fig = Figure(figsize=(10, 4.2))
    axes = fig.subplots(1, 2)
    for i, g in enumerate(groups):
        c = g["curves"]
        if "train_loss" in c:
            _band(axes[0], c["train_loss"], _color(i), label=legend_label(g))
        if "test_loss" in c:
            _band(axes[1], c["test_loss"], _color(i), label=legend_label(g))
    axes[0].set_title("train loss (DTP variants: layer-local loss; backprop: cross-entropy)", fontsize=9)
    axes[1].set_title("test cross-entropy", fontsize=9)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, Canvas, out / "loss.png")
    written.append("loss.png")

    # alignment
    aligned = [(i, g) for i, g in enumerate(groups) if g["algo"] != "bp" and g["curves"].get("alignment_angle_deg")]
    if aligned:
        fig = Figure(figsize=(5.2 * len(aligned), 4.2))
        axes = fig.subplots(1, len(aligned), squeeze=False)[0]
        for ax, (_, g) in zip(axes, aligned):
            for j, (layer, c) in enumerate(g["curves"]["alignment_angle_deg"].items()):
                _band(ax, c, _color(j), label=layer)
            ax.set_title(f"{legend_label(g)}", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("angle(G, F^T) (deg)")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Feedback weight alignment per layer (mean, min-max band over seeds)", fontsize=10)
        _save(fig, Canvas, out / "alignment.png")
        written.append("alignment.png")

    # time
    fig = Figure(figsize=(max(5.0, 1.3 * len(groups) + 2.5), 4.5))
    ax = fig.add_subplot()
    x = list(range(len(groups)))

    def mean(st):
        return st["mean"] if st else 0.0

    fb = [mean(g["feedback_seconds_per_epoch"]) for g in groups]
    fw = [mean(g["forward_seconds_per_epoch"]) for g in groups]
    other = [max(0.0, mean(g["seconds_per_epoch"]) - a - b) for g, a, b in zip(groups, fb, fw)]
    ax.bar(x, fb, color="tab:orange", label="feedback training")
    ax.bar(x, fw, bottom=fb, color="tab:blue", label="forward (+ backward, update)")
    ax.bar(x, other, bottom=[a + b for a, b in zip(fb, fw)], color="lightgray", label="other (data, ...)")
    for xi, a, b, o in zip(x, fb, fw, other):
        ax.annotate(f"{a + b + o:.3g} s", (xi, a + b + o), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels([g["label"].replace(" ", "\n", 2) for g in groups], fontsize=8)
    ax.set_ylabel("training seconds per epoch (mean over seeds)")
    ax.set_title("Time per epoch: feedback vs forward phase", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    _save(fig, Canvas, out / "time.png")
    written.append("time.png")
    return written


# ---------------------------------------------------------------------------- the report
def default_out(run_dirs) -> Path:
    """The common parent of the run folders, or ``report/`` when that is the current
    folder or the file-system root (or there is none)."""
    parents = [str(Path(r).resolve().parent) for r in run_dirs]
    try:
        common = Path(os.path.commonpath(parents))
    except ValueError:  # different drives
        return Path("report")
    if common.parent == common or common == Path.cwd().resolve():
        return Path("report")
    return common


def make_report(paths, out=None, title: str | None = None, plots: bool = True, warn=None) -> dict:
    """Read the runs in ``paths`` (see :func:`find_runs`), write report.md,
    report.json and (with ``plots``) the PNGs to ``out`` (default:
    :func:`default_out`), and return the report as a dict (``report.json``'s content,
    plus ``"out"``)."""
    from . import __version__
    from .utils import atomic_write_json, atomic_write_text

    if plots:
        _matplotlib()  # fail before writing anything
    run_dirs = find_runs(paths, warn=warn)
    runs = [load_run(d) for d in run_dirs]
    out = Path(out) if out is not None else default_out(run_dirs)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is a file, not a folder")
    groups = group_runs(runs)

    def rel(p) -> str:
        try:
            return Path(os.path.relpath(Path(p).resolve(), out.resolve())).as_posix()
        except ValueError:
            return str(Path(p).resolve())

    for g in groups:
        g["runs"] = [rel(p) for p in g["runs"]]
    by_path = {rel(r["dir"]): r for r in runs}
    if title is None:
        combos = sorted({f"{g['preset']} on {g['dataset']}" for g in groups})
        title = "dtp_fast report: " + ", ".join(combos)
    rep = {
        "title": title,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dtp_fast_version": __version__,
        "units": "accuracies and shares are fractions (0-1), times in seconds; std is the sample std "
                 "(ddof=1), null for one run",
        "n_runs": len(runs),
        "runs": [{"path": rel(r["dir"]), "preset": r["preset"], "dataset": r["dataset"], "algo": r["algo"],
                  "seed": r["seed"], "epochs": r["summary"]["epochs"],
                  "test_accuracy": r["summary"]["test_accuracy"], "test_top5": r["summary"].get("test_top5"),
                  "best_test_accuracy": r["summary"].get("best_test_accuracy"),
                  "backend": r["summary"].get("backend"), "device": r["summary"].get("device")}
                 for g in groups for r in (by_path[p] for p in g["runs"])],
        "groups": groups,
        "figures": [],
    }
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        rep["figures"] = write_figures(groups, out)
    atomic_write_json(rep, out / "report.json")
    atomic_write_text(to_markdown(rep), out / "report.md")
    return {**rep, "out": str(out)}


# ---------------------------------------------------------------------------- entry points
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` options to ``parser``."""
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (holding summary.json and metrics.jsonl), or folders of runs, such as "
                             "a `dtp-fast sweep` output folder")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where to write report.md, report.json and the PNGs (default: the runs' common "
                             "parent folder, or report/ when that is the current folder)")
    parser.add_argument("--title", default=None, help="title of report.md")
    parser.add_argument("--no-plots", dest="plots", action="store_false",
                        help="write report.md and report.json only (no matplotlib needed)")


def run(args: argparse.Namespace) -> int:
    """Write the report for parsed ``args`` (from :func:`add_arguments`); returns 0, or 2
    after a one-line error on bad input."""
    try:
        rep = make_report(args.runs, out=args.out, title=args.title, plots=args.plots)
    except (ReportError, OSError) as err:
        if os.environ.get("DTP_FAST_DEBUG"):
            raise
        print(f"dtp-fast report: error: {err}", file=sys.stderr)
        return 2
    out = Path(rep["out"])
    print(f"report of {rep['n_runs']} run(s) in {len(rep['groups'])} group(s) written to {out}/ "
          f"(report.md, report.json{''.join(', ' + f for f in rep['figures'])})")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="dtp-fast report",
        description="Tables and figures for finished runs, grouped by (preset, dataset, algo) with the seeds "
                    "as repeats: report.md, report.json and PNGs.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
