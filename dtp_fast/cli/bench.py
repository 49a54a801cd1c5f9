"""``dtp-fast bench``'s options (the benchmark itself is :mod:`dtp_fast.bench`)."""
from __future__ import annotations

import argparse

from ..bench import NETS
from .common import (Command, add_device, add_output_files, int_list, positive_float, positive_int,
                     require_matplotlib)

__all__ = ["COMMAND", "add_arguments", "run", "main"]


def _memory_budget(text: str):
    low = text.strip().lower()
    if low == "default":
        return "default"
    if low in ("none", "unlimited"):
        return None
    try:
        return int(positive_float(text) * 2**20)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected MiB (a number > 0), 'default' or 'none', got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser``."""
    g = parser.add_argument_group("what to time")
    g.add_argument("--net", choices=NETS, default="simple_vgg", help="network (default simple_vgg)")
    g.add_argument("--width", type=positive_float, default=1.0,
                   help="channel multiplier on the paper's widths (SimpleVGG 128,128,256,256,512; LeNet "
                        "channels 32,64 and hidden 512); 0.25 runs in minutes on a laptop CPU (default 1)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    g.add_argument("--iterations", type=int_list("integers", minimum=0), default=None,
                   help="feedback iterations per layer, comma-separated, or one for all (default: the paper's, "
                        "SimpleVGG 20,30,35,55,20, LeNet 41,51,24)")
    g.add_argument("--backends", default=None,
                   help="feedback backends, comma-separated (default: every usable one on --device); "
                        "'reference' is always added, as ratios are to it")
    g.add_argument("--per-layer", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each layer alone (default on)")
    g = parser.add_argument_group("how")
    g.add_argument("--repeats", type=positive_int, default=5,
                   help="timed runs per measurement after 1 warm-up; the median is reported (default 5)")
    add_device(g, default="cpu", help="cpu (default), cuda, cuda:1, ...")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="default float32")
    g.add_argument("--memory-budget", type=_memory_budget, default="default", metavar="MiB",
                   help="memory the precomputed perturbations may take, in MiB, passed to the backends as "
                        "memory_budget; 'none' for no limit (default: each backend's default)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    g.add_argument("--seed", type=int, default=0, help="seed for weights, inputs and noise (default 0)")
    g = parser.add_argument_group("output (the markdown table always goes to stdout)")
    add_output_files(g, json="write the results as JSON", markdown="write the markdown tables",
                     plot="write a PNG bar chart (needs matplotlib)")
    g.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark for parsed ``args`` (from :func:`add_arguments`), print the markdown
    tables and write the files asked for; raises :class:`~dtp_fast.bench.BenchError` on a bad setting."""
    from ..bench import _Bench, to_markdown, write_plot
    from ..utils import atomic_write_json, atomic_write_text

    if args.plot:  # fail before minutes of timing, not after
        require_matplotlib("--plot")
    res = _Bench(args).run()
    md = to_markdown(res)
    if args.json:
        atomic_write_json(res, args.json)
    if args.markdown:
        atomic_write_text(md, args.markdown)
    if args.plot:
        write_plot(res, args.plot)
    print(md, end="")
    return 0


COMMAND = Command(
    "bench", help="time the feedback phase of one batch per backend, and the backprop step",
    description="Time the feedback phase of one batch (in total and per layer) for every usable backend at the "
                "paper's iteration counts, next to the backprop step of the same network; medians of several "
                "repeats, ratios to `reference` measured in the same run, peak memory, machine and versions.",
    add_arguments=add_arguments, run=run)
main = COMMAND.main
