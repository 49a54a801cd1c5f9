"""Data-parallel scaling efficiency; the same as ``dtp-fast scaling``.

    python benchmarks/bench_scaling.py --ranks 1,2 --preset simple_vgg --batch-per-rank 32 --batches 10
    python benchmarks/bench_scaling.py --help
"""
import sys

from dtp_fast.cli.scaling import COMMAND

if __name__ == "__main__":
    sys.exit(COMMAND.main(prog="bench_scaling"))
