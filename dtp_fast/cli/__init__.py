"""The ``dtp-fast`` command line (also ``python -m dtp_fast.cli``).

One module per command family holds its options and the function that runs
them; the work itself is in the library modules (:mod:`dtp_fast.bench`,
:mod:`dtp_fast.sweep`, :mod:`dtp_fast.report`, :mod:`dtp_fast.theory`,
:mod:`dtp_fast.scaling`, :mod:`dtp_fast.api`). Every command runs under the
error policy of :mod:`dtp_fast.cli.common`.
"""
from __future__ import annotations

from .common import Command, ToolParser, run_command

__all__ = ["main", "build_parser", "commands"]


def commands() -> tuple[Command, ...]:
    """The subcommands, in the order ``dtp-fast --help`` lists them."""
    from . import bench, report, scaling, sweep, theory
    from .train import DEMO, INFO, TRAIN

    return TRAIN, DEMO, bench.COMMAND, sweep.COMMAND, report.COMMAND, theory.COMMAND, scaling.COMMAND, INFO


def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="dtp-fast",
        description="Difference Target Propagation with L-DRL feedback training (Ernoult et al., ICML 2022).")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands():
        command.add_to(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(f"dtp-fast {args.command}", args.func, args)
