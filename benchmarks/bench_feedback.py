"""Time the L-DRL feedback phase per backend; the same as ``dtp-fast bench``.

    python benchmarks/bench_feedback.py --net simple_vgg --width 0.25 --batch-size 32 --repeats 5
    python benchmarks/bench_feedback.py --help
"""
import sys

from dtp_fast.cli.bench import COMMAND

if __name__ == "__main__":
    sys.exit(COMMAND.main(prog="bench_feedback"))
