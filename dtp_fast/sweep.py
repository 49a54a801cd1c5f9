"""``dtp-fast sweep``: train one preset for several algorithms and seeds, then report.

Every (algo, seed) pair is trained, one after the other, into
``OUT/<algo>-seed<seed>/`` with :func:`dtp_fast.api.train`. Running the same
sweep again picks up where it stopped:

- a run whose ``summary.json`` has the requested number of epochs (or more)
  is skipped;
- a run with a checkpoint but no finished summary (interrupted, or asked for
  more epochs now) is resumed from its checkpoint;
- a run folder that holds a run with other settings (learning rate, network,
  ...) stops the sweep before anything is trained: choose another ``--out``.

At the end the report of ``OUT`` (:mod:`dtp_fast.report`) is written, unless
``--no-report``. Use it as ``dtp-fast sweep ...`` (the options are in
:mod:`dtp_fast.cli.sweep`); :func:`sweep` is the Python entry point.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

__all__ = ["SweepError", "sweep", "plan", "run_dir_name"]

DEFAULT_ALGOS = ("ldrl", "bp")
# settings the sweep sets itself, and the flag to use instead
_RESERVED = {"algo": "--algos", "seed": "--seeds", "preset": "--preset", "dataset": "--dataset",
             "data": "--data", "out": "--out", "resume": "(runs are resumed automatically)",
             "progress": "--progress"}
# settings that may differ between a stored run and the request (speed or output only)
_IGNORED = {"epochs", "progress", "device", "backend", "diagnostics", "feedback_memory", "tensorboard"}


class SweepError(ValueError):
    """A bad sweep setting, or an output folder that holds other runs."""


# ---------------------------------------------------------------------------- planning
def run_dir_name(algo: str, seed: int) -> str:
    return f"{algo}-seed{seed}"


def _norm(v):
    return json.loads(json.dumps(v, sort_keys=True, default=str))


def _resolve(preset: str, dataset: str | None, settings: dict) -> tuple[str, dict, dict]:
    """The data set, the run's full TrainConfig (as a dict) and its architecture, as
    :func:`dtp_fast.api.make_run` resolves them (per-layer values given by layer name are
    left as given)."""
    from .presets import ARCH_KEYS, normalize_settings, resolve_preset
    from .trainer import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    _, dataset, defaults = resolve_preset(preset, dataset)
    merged = {**defaults, **normalize_settings({k: v for k, v in settings.items() if v is not None})}
    unknown = set(merged) - fields - ARCH_KEYS
    if unknown:
        raise SweepError(f"unknown setting(s) {sorted(unknown)}; valid: "
                         f"{sorted((fields | ARCH_KEYS) - set(_RESERVED))}")
    arch = {k: merged.pop(k) for k in list(merged) if k in ARCH_KEYS}
    try:
        config = dataclasses.asdict(TrainConfig(**merged))
    except (TypeError, ValueError) as err:
        raise SweepError(f"bad settings: {err}") from None
    return dataset, config, arch


def _stored(run_dir: Path) -> dict | None:
    """What the folder holds: ``{"summary", "config", "arch", "preset", "dataset", "checkpoint"}``, or None."""
    from .trainer import CHECKPOINT_NAME

    ckpt_path = run_dir / CHECKPOINT_NAME
    summary_path = run_dir / "summary.json"
    summary = None
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as err:
            raise SweepError(f"{summary_path} is not valid JSON ({err}); delete it to resume or retrain the run")
    if summary is not None:
        return {"summary": summary, "config": summary.get("config") or {}, "arch": summary.get("arch") or {},
                "preset": summary.get("preset"), "dataset": summary.get("dataset"),
                "checkpoint": ckpt_path.is_file()}
    if ckpt_path.is_file():
        from .utils import CheckpointError, load_checkpoint

        try:
            ckpt = load_checkpoint(ckpt_path)
        except CheckpointError as err:
            raise SweepError(f"{err}; delete {run_dir} to retrain that run") from None
        info = ckpt.get("info") or {}
        return {"summary": None, "config": ckpt.get("config") or {}, "arch": info.get("arch") or {},
                "preset": info.get("preset"), "dataset": info.get("dataset"), "checkpoint": True}
    return None


def _mismatch(stored: dict, preset: str, dataset: str, config: dict, arch: dict) -> list[str]:
    diffs = []
    for key, want in (("preset", preset), ("dataset", dataset)):
        if stored.get(key) is not None and stored[key] != want:
            diffs.append(f"{key} {stored[key]!r} (requested {want!r})")
    for key, want in config.items():
        if key in _IGNORED or key not in stored["config"] or isinstance(want, dict):
            continue
        if _norm(stored["config"][key]) != _norm(want):
            diffs.append(f"{key}={json.dumps(_norm(stored['config'][key]))} (requested {json.dumps(_norm(want))})")
    if stored["arch"] and arch and _norm(stored["arch"]) != _norm(arch):
        diffs.append(f"network {json.dumps(_norm(stored['arch']))} (requested {json.dumps(_norm(arch))})")
    return diffs


def plan(out, preset: str, dataset: str | None, algos, seeds, settings: dict) -> list[dict]:
    """What the sweep will do per (algo, seed): ``{"algo", "seed", "dir", "action"}`` with
    action ``"skip"`` (finished), ``"resume"`` or ``"train"``. Raises :class:`SweepError`
    when a folder holds a run with other settings, or a finished run that cannot be
    extended to more epochs (no checkpoint)."""
    out = Path(out)
    dataset, config, arch = _resolve(preset, dataset, settings)
    want_epochs = config["epochs"]
    runs, problems = [], []
    for algo in algos:
        for seed in seeds:
            run_dir = out / run_dir_name(algo, seed)
            entry = {"algo": algo, "seed": seed, "dir": run_dir, "action": "train", "epochs": want_epochs,
                     "dataset": dataset, "note": ""}
            stored = _stored(run_dir) if run_dir.is_dir() else None
            if stored is not None:
                diffs = _mismatch(stored, preset, dataset, {**config, "algo": algo, "seed": seed}, arch)
                done = stored["summary"].get("epochs", 0) if stored["summary"] else 0
                if diffs:
                    problems.append(f"{run_dir} holds a run with other settings: " + ", ".join(diffs))
                elif stored["summary"] is not None and done >= want_epochs:
                    entry["action"] = "skip"
                    entry["summary"] = stored["summary"]
                    if done > want_epochs:
                        entry["note"] = f" (it has {done} epochs, {want_epochs} requested)"
                elif stored["checkpoint"]:
                    entry["action"] = "resume"
                    if done:
                        entry["note"] = f" (extending {done} -> {want_epochs} epochs)"
                else:
                    problems.append(f"{run_dir} holds a run of {done} epochs without its checkpoint: it cannot be "
                                    f"extended to {want_epochs} epochs; delete the folder to retrain it")
            runs.append(entry)
    if problems:
        raise SweepError("; ".join(problems) + ". Choose another --out, or delete those folders.")
    return runs


# ---------------------------------------------------------------------------- running
def _describe(s: dict) -> str:
    top5 = f", top-5 {100 * s['test_top5']:.2f}%" if s.get("test_top5") is not None else ""
    return f"test top-1 {100 * s['test_accuracy']:.2f}%{top5} after {s['epochs']} epochs"


def sweep(preset: str, dataset: str | None = None, data=None, *, out, algos=DEFAULT_ALGOS, seeds=(0,),
          settings: dict | None = None,
          progress: bool = False, report: bool = True, title: str | None = None, echo=print) -> dict:
    """Train every (algo, seed) into ``out/<algo>-seed<seed>/`` (skipping finished runs,
    resuming interrupted ones), then write the report of ``out``. Returns
    ``{"runs": [{"algo", "seed", "dir", "action", "summary"}], "report": dict | None}``."""
    from . import api
    from .presets import normalize_settings

    from .config import ALGOS

    bad = [a for a in algos if a not in ALGOS]
    if bad or not algos or len(set(algos)) != len(algos):
        raise SweepError(f"algos must be distinct names out of {', '.join(ALGOS)}, got {list(algos)}")
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(x, int) for x in seeds):
        raise SweepError(f"seeds must be distinct integers, got {list(seeds)}")
    settings = normalize_settings(dict(settings or {}))
    for key in settings:
        if key in _RESERVED:
            raise SweepError(f"setting {key!r} is set by the sweep itself: use {_RESERVED[key]}")
    if report:
        from .report import ReportError, require_matplotlib
        try:
            require_matplotlib()  # fail now, not after hours of training
        except ReportError:
            raise SweepError("the report's figures need matplotlib, which is not installed: pip install "
                             "matplotlib (or pass --no-report)") from None
    if settings.get("device") not in (None, "auto"):
        from .utils import resolve_device
        try:
            resolve_device(settings["device"])
        except RuntimeError as err:
            raise SweepError(str(err)) from None
    runs = plan(out, preset, dataset, algos, seeds, settings)
    counts = {a: sum(r["action"] == a for r in runs) for a in ("skip", "resume", "train")}
    echo(f"sweep: {len(runs)} run(s) of {preset} on {runs[0]['dataset']} ({', '.join(algos)} x seeds "
         f"{', '.join(map(str, seeds))}) in {out}/: {counts['skip']} done, {counts['resume']} to resume, "
         f"{counts['train']} to train", flush=True)
    for i, r in enumerate(runs, start=1):
        head = f"[{i}/{len(runs)}] {r['algo']} seed {r['seed']}:"
        if r["action"] == "skip":
            echo(f"{head} done already, skipped: {_describe(r['summary'])}{r['note']} ({r['dir']})", flush=True)
            continue
        if r["action"] == "train":
            # metrics of an epoch that was never checkpointed: the run starts afresh
            for stale in ("metrics.jsonl", "summary.json"):
                if (r["dir"] / stale).is_file():
                    (r["dir"] / stale).unlink()
        t0 = time.perf_counter()
        summary = api.train(preset, dataset, data, out=r["dir"], resume=r["action"] == "resume",
                            **{**settings, "algo": r["algo"], "seed": r["seed"], "progress": progress})
        r["summary"] = summary
        verb = "resumed, " if r["action"] == "resume" else ""
        echo(f"{head} {verb}{_describe(summary)}{r['note']}, {time.perf_counter() - t0:.1f} s "
             f"({summary['images_per_second']:.0f} img/s, backend {summary['backend']}) -> {r['dir']}", flush=True)
    rep = None
    if report:
        from .report import make_report
        rep = make_report([out], out=out, title=title)
        echo(f"report written to {out}/report.md (report.json{''.join(', ' + f for f in rep['figures'])})",
             flush=True)
    return {"runs": runs, "report": rep}
