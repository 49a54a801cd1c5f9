"""``dtp-fast report``: tables and figures for finished runs, grouped over seeds.

Reads run folders written by :class:`~dtp_fast.Trainer` (``summary.json`` and
``metrics.jsonl``), groups them by (preset, dataset, algo, feedback budget) --
runs of one group with different seeds are repeats; L-DRL with the paper's
feedback budget and with the adaptive one are different groups -- and writes to
the output folder:

- ``report.md``: one table row per group (test top-1/top-5 as mean ± sample
  std over the seeds, best top-1, seconds per epoch, images/s, feedback share
  of the training time), with several groups a time-to-accuracy table (total
  training seconds and feedback iterations, as shares of the paper-budget L-DRL
  group's and multiples of backprop's, and the seconds to backprop's final
  accuracy), the final weight-alignment angles per layer of the groups that
  train feedback weights (L-DRL and the other DTP variants), the list of runs
  and links to the figures;
- ``accuracy.png``, ``loss.png``, ``alignment.png``, ``time.png``,
  ``time_to_accuracy.png`` (matplotlib, imported only when the figures are drawn);
- ``report.json``: the same numbers, and the per-epoch curves, as JSON.

A folder given on the command line that is not itself a run is searched for
runs in its sub-folders (two levels deep). Use it as ``dtp-fast report ...``
(the options are in :mod:`dtp_fast.cli.report`); :func:`make_report` is the
Python entry point. Reading and grouping the runs is :mod:`.runs`, the tables
:mod:`.markdown`, the figures :mod:`.figures`.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path

from .figures import FIGURES, require_matplotlib, write_figures
from .markdown import to_markdown
from .runs import ReportError, find_runs, group_runs, load_run

__all__ = ["ReportError", "make_report", "default_out", "find_runs", "load_run", "group_runs", "to_markdown",
           "write_figures", "require_matplotlib", "FIGURES"]


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
    from .. import __version__
    from ..utils import atomic_write_json, atomic_write_text

    if plots:
        require_matplotlib()  # fail before writing anything
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
                  "feedback_budget": r["feedback_budget"], "seed": r["seed"], "epochs": r["summary"]["epochs"],
                  "test_accuracy": r["summary"]["test_accuracy"], "test_top5": r["summary"].get("test_top5"),
                  "best_test_accuracy": r["summary"].get("best_test_accuracy"),
                  "train_seconds": r["summary"].get("train_seconds"),
                  "feedback_iterations": None if r["algo"] == "bp" else
                  (r["summary"].get("feedback_iterations") or {}).get("total"),
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
