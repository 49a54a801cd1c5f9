"""``dtp-fast scaling``'s options (the measurement itself is :mod:`dtp_fast.scaling`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ALGOS
from .common import Command, add_device, add_output_files, int_list, parse_set, positive_int

__all__ = ["COMMAND", "add_arguments", "run", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``scaling`` options to ``p``."""
    p.add_argument("--ranks", type=int_list("rank counts", minimum=1), default=[1, 2],
                   help="rank counts to run, e.g. 1,2,4 (default 1,2)")
    p.add_argument("--preset", default="simple_vgg", help="network preset (default simple_vgg)")
    p.add_argument("--dataset", default="digits", help="data set (default digits; cifar10/imagenet32 need --data)")
    p.add_argument("--data", default=None, help="where the data set lives")
    p.add_argument("--batch-per-rank", type=positive_int, default=32, help="images per rank per batch (default 32)")
    p.add_argument("--batches", type=positive_int, default=10, help="training batches per run (default 10)")
    p.add_argument("--algo", choices=ALGOS, default="ldrl", help="training algorithm (default ldrl)")
    p.add_argument("--backend", default="auto", help="feedback backend (default auto)")
    add_device(p)
    p.add_argument("--set", action="append", type=parse_set, default=[], metavar="KEY=VALUE",
                   help="any other training setting, passed on to dtp-fast train")
    add_output_files(p, json="write the results to this JSON file", markdown="write a markdown table to this file")


def run(args: argparse.Namespace) -> int:
    """Measure the scaling for parsed ``args`` (from :func:`add_arguments`), print the table and
    write the files asked for; raises on a bad setting or a failed run."""
    from ..presets import resolve_preset
    from ..scaling import scaling, to_markdown
    from ..utils import atomic_write_json

    resolve_preset(args.preset, args.dataset)  # a bad preset fails here, before torchrun starts
    result = scaling(sorted(set(args.ranks)), args.preset, args.dataset, args.data, args.batch_per_rank,
                     args.batches, args.algo, args.backend, args.device, args.set,
                     log=lambda msg: print(msg, file=sys.stderr, flush=True))
    table = to_markdown(result)
    print(table)
    if args.json:
        atomic_write_json(result, args.json)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


COMMAND = Command(
    "scaling", help="data-parallel scaling efficiency: images/s with N ranks vs N x one rank",
    description="Launch `dtp-fast train` under torchrun for each rank count (a few batches, a fixed batch per "
                "rank) and report images/s, the efficiency against N times one rank, and the time spent in "
                "communication.",
    add_arguments=add_arguments, run=run)
main = COMMAND.main
