"""``dtp-fast report``'s options (the report itself is :mod:`dtp_fast.report`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import Command

__all__ = ["COMMAND", "add_arguments", "run", "main"]


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
    """Write the report for parsed ``args`` (from :func:`add_arguments`); raises
    :class:`~dtp_fast.report.ReportError` on bad input."""
    from ..report import make_report

    rep = make_report(args.runs, out=args.out, title=args.title, plots=args.plots)
    out = Path(rep["out"])
    print(f"report of {rep['n_runs']} run(s) in {len(rep['groups'])} group(s) written to {out}/ "
          f"(report.md, report.json{''.join(', ' + f for f in rep['figures'])})")
    return 0


COMMAND = Command(
    "report", help="markdown tables and PNG figures for finished runs, seeds grouped",
    description="Write report.md, report.json and PNG figures (accuracy and loss curves, alignment angles, "
                "feedback vs forward time, time to accuracy) for run folders, grouped by (preset, dataset, algo, "
                "feedback budget) with seeds as repeats.",
    add_arguments=add_arguments, run=run)
main = COMMAND.main
