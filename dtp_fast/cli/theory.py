"""``dtp-fast theory``'s options (the experiments themselves are :mod:`dtp_fast.theory`)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..theory import GMP_METHODS, THEORY_PRESETS
from .common import Command, add_output_files, int_list, positive_float, positive_int

__all__ = ["COMMAND", "add_arguments", "run", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``theory`` options to ``p``."""
    p.add_argument("figure", choices=["jmc", "gmp"],
                   help="jmc: Jacobian matching of the last layer over iterations, L-DRL vs DRL (Fig. 4.2); "
                        "gmp: per-layer angle between DTP updates and BP gradients (Fig. 4.3)")
    p.add_argument("--dataset", default="digits", help="digits (default, embedded), cifar10 or imagenet32")
    p.add_argument("--data", default=None, help="data path for cifar10/imagenet32")
    p.add_argument("--preset", choices=list(THEORY_PRESETS), default=None,
                   help="settings: 'paper' (the official theorem_test.py: one batch of 256 per seed, 5,000 "
                        "iterations per layer, LeNet without biases; the default off the digits) or 'quick' "
                        "(the default on the digits: 1,000 jmc / 500 gmp iterations)")
    p.add_argument("--iterations", type=positive_int, default=None,
                   help="feedback iterations (per layer for gmp); default: the preset's")
    p.add_argument("--seeds", type=int_list("seeds"), default=None,
                   help="comma-separated seeds (default: the preset's; paper 0,1, quick 0,1,2)")
    p.add_argument("--methods", default=",".join(GMP_METHODS),
                   help=f"gmp only: comma-separated methods (default {','.join(GMP_METHODS)})")
    p.add_argument("--width", type=positive_float, default=1.0, help="LeNet channel/hidden multiplier (default 1)")
    add_output_files(p, json="write the result as JSON, after every seed; a run with the same settings and file "
                             "reuses the seeds already in it (resume)",
                     markdown="write a markdown table of the result beside the paper's values",
                     plot="write a PNG figure")
    p.add_argument("--merge", action="append", default=[], metavar="FILE",
                   help="also reuse the seeds of this earlier result file made with the same settings (for "
                        "example methods or seeds run in another process or on another machine); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _load_previous(path) -> dict | None:
    if not path or not Path(path).exists():
        return None
    try:
        previous = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} exists but is not a theory result ({err}): remove it or pick another file")
    return previous if isinstance(previous, dict) else None


def run(args: argparse.Namespace) -> int:
    """Run jmc or gmp for parsed ``args`` (from :func:`add_arguments`), write the files asked
    for and print the summary as JSON; raises on bad input."""
    from ..theory import gmp, gmp_markdown, jmc, jmc_markdown, plot_gmp, plot_jmc
    from ..utils import atomic_write_json, atomic_write_text

    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    save = (lambda result: atomic_write_json(result, args.json)) if args.json else None
    kw = dict(dataset=args.dataset, data=args.data, preset=args.preset, iterations=args.iterations,
              seeds=args.seeds, width=args.width, progress=say, resume=[_load_previous(args.json)], save=save)
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
    if save:
        save(result)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        (plot_jmc if args.figure == "jmc" else plot_gmp)(result, args.plot)
    if args.markdown:
        atomic_write_text((jmc_markdown if args.figure == "jmc" else gmp_markdown)(result), args.markdown)
    print(json.dumps(summary, indent=2))
    return 0


COMMAND = Command(
    "theory", help="the paper's theory figures: jmc (Fig. 4.2) and gmp (Fig. 4.3)",
    description="Reproduce the paper's theory figures at reduced settings: jmc follows the angle between J_G and "
                "J_F^T of LeNet's last layer over feedback iterations (L-DRL vs DRL); gmp measures, after "
                "feedback training, the angle between each layer's DTP update and its backprop gradient (L-DRL, "
                "DRL, random, symmetric).",
    add_arguments=add_arguments, run=run)
main = COMMAND.main
