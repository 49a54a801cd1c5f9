"""``dtp-fast sweep``'s options (the sweep itself is :mod:`dtp_fast.sweep`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..sweep import _RESERVED, DEFAULT_ALGOS, SweepError
from .common import Command, add_device, int_list, parse_set, positive_int

__all__ = ["COMMAND", "add_arguments", "run", "main"]


def _algos(text: str) -> list[str]:
    from ..config import ALGOS

    algos = [v.strip() for v in text.split(",") if v.strip()]
    bad = [a for a in algos if a not in ALGOS]
    if bad or not algos:
        raise argparse.ArgumentTypeError(f"expected comma-separated algorithms out of {', '.join(ALGOS)}, "
                                         f"got {text!r}")
    if len(set(algos)) != len(algos):
        raise argparse.ArgumentTypeError(f"an algorithm is listed twice in {text!r}")
    return algos


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``sweep`` options to ``parser``: a few of ``dtp-fast train``'s (help texts for a sweep; --seeds and
    --algos instead of --seed and --algo; the others through --set)."""
    g = parser.add_argument_group("what to train")
    g.add_argument("--preset", required=True,
                   help="a network with default settings per data set (simple_vgg, lenet, mlp) or a paper "
                        "experiment (cifar10-vgg-ldrl, ...: its data set and settings; --algos still decides "
                        "the algorithms); `dtp-fast train --list-presets` lists them")
    g.add_argument("--dataset", default=None,
                   help="digits (embedded), cifar10 (needs --data), ... (default: the paper experiment's, or "
                        "digits)")
    g.add_argument("--data", default=None, help="where the data set lives (see `dtp-fast train --help`)")
    g.add_argument("--algos", type=_algos, default=list(DEFAULT_ALGOS), metavar="A,B",
                   help="algorithms, comma-separated: ldrl, bp, or the other DTP variants of `dtp-fast train "
                        "--algo` (default ldrl,bp)")
    g.add_argument("--seeds", type=int_list("seeds", distinct=True), default=[0], metavar="S,S,...",
                   help="seeds, comma-separated (default 0); each seed is one repeat")
    g.add_argument("--out", required=True, metavar="DIR",
                   help="output folder: one sub-folder <algo>-seed<seed> per run, and the report")
    g = parser.add_argument_group("settings (default: the preset's for the data set)")
    g.add_argument("--epochs", type=positive_int, default=None, help="epochs per run")
    g.add_argument("--batch-size", type=positive_int, default=None, help="training batch size")
    g.add_argument("--limit-batches", type=positive_int, default=None,
                   help="train on at most this many batches per epoch (quick checks)")
    g.add_argument("--backend", default=None, help="feedback backend (default auto)")
    add_device(g, default=None)
    g.add_argument("--set", dest="settings", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of `dtp-fast train` (TrainConfig field, channels, hidden, or a "
                        "reference-implementation name such as b_optim.lr), repeatable; VALUE is read as JSON "
                        "when it parses, a comma-separated list of numbers as a list, else as a string: "
                        "--set lr=0.01 --set feedback_iters=[20,30] --set channels=16,32")
    g = parser.add_argument_group("output")
    g.add_argument("--progress", action="store_true", help="show each run's progress bar and epoch lines")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write the report (report.md, report.json, PNGs) at the end")
    g.add_argument("--title", default=None, help="title of the report")


def _settings(args) -> dict:
    from ..presets import normalize_settings

    settings = {}
    for key, flag in (("epochs", "--epochs"), ("batch_size", "--batch-size"), ("limit_batches", "--limit-batches"),
                      ("backend", "--backend"), ("device", "--device")):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    given = normalize_settings(dict(args.settings))  # a key set twice by --set: the last one wins
    for key in given:
        if key in _RESERVED:
            raise SweepError(f"--set {key}=... is not allowed: use {_RESERVED[key]}")
        if key in settings:
            raise SweepError(f"{key} is given twice, by --{key.replace('_', '-')} and by --set")
    return {**settings, **given}


def run(args: argparse.Namespace) -> int:
    """Run the sweep for parsed ``args`` (from :func:`add_arguments`); raises on bad input
    (:class:`~dtp_fast.sweep.SweepError`) and when a loss becomes NaN or infinite."""
    from ..sweep import sweep

    sweep(args.preset, args.dataset, args.data, out=Path(args.out), algos=args.algos, seeds=args.seeds,
          settings=_settings(args), progress=args.progress, report=args.report, title=args.title)
    return 0


COMMAND = Command(
    "sweep", help="train a preset for several algorithms and seeds, then report",
    description="Train every (algo, seed) into OUT/<algo>-seed<seed>/ (finished runs are skipped, interrupted "
                "ones resumed), then write the report.",
    add_arguments=add_arguments, run=run)
main = COMMAND.main
