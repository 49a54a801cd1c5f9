"""Micro-benchmark of the ``noise`` family: philox_normal_ (counter-based normals) against its PyTorch mirror.

    python benchmarks/ops/bench_noise.py [--device cpu|cuda] [--repeats 20] [--out results.json]
"""
import sys

import torch

import _harness as h

from dtp_fast import ops

KEY = (0x12345678, 0x9ABCDEF0)


def cases(args):
    shapes = ([("tiny", (2, 4, 8, 8))] if args.quick else
              [("SimpleVGG conv_1 input B32", (32, 128, 32, 32)), ("LeNet conv_1 input B32", (32, 3, 32, 32))])
    tri = h.triton_module("noise", args.device)
    out = []
    for name, shape in shapes:
        buf = torch.empty(shape, device=args.device)
        out.append(("philox_normal_", "%s %s" % (name, "x".join(map(str, shape))), {
            "torch": lambda s=shape: ops.philox_normal(s, KEY, 0, 1, 0, args.device),
            "cpu": lambda b=buf: ops.philox_normal_(b, KEY, 0, 1, 0),
            "cuda": lambda b=buf: ops.philox_normal_(b, KEY, 0, 1, 0),
            "triton": lambda b=buf: tri.noise_fill_(b, KEY, 1.0, batch=b.shape[0], iteration=1),
        }))
    return out


def main(argv=None) -> int:
    return h.main("noise", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
