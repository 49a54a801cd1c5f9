"""Micro-benchmark of the ``sgd`` family: one momentum-SGD step of every feedback weight of a network.

    python benchmarks/ops/bench_sgd.py [--device cpu|cuda] [--repeats 20] [--out results.json]
"""
import sys

import torch

import _harness as h

from dtp_fast import ops


def cases(args):
    nets = ([("tiny", [(4, 4, 3, 3), (10, 16)])] if args.quick else
            [("SimpleVGG feedback weights", [(128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3), (512, 256, 3, 3),
                                             (10, 512)]),
             ("LeNet feedback weights", [(64, 32, 5, 5), (512, 4096), (10, 512)])])
    tri = h.triton_module("sgd", args.device)
    out = []
    for name, shapes in nets:
        params = [h.randn(s, args.device, seed=k) for k, s in enumerate(shapes)]
        grads = [h.randn(s, args.device, seed=10 + k) for k, s in enumerate(shapes)]
        bufs = [torch.zeros_like(p) for p in params]
        n = len(params)
        table = tri.layer_scalars([(1e-3, 0.9, 1e-4, 1.0, 1.0)] * n, params[0]) if tri is not None else None
        label = "%s (%d tensors)" % (name, n)
        t = (params, grads, bufs)
        out.append(("momentum_sgd_", label, {
            "torch": lambda t=t: [ops.momentum_sgd_ref([p], [g], [b], 1e-3, 0.9, 1e-4) for p, g, b in zip(*t)],
            "cpu": lambda t=t: ops.momentum_sgd_(*t, 1e-3, 0.9, 1e-4),
            "cuda": lambda t=t: ops.momentum_sgd_(*t, 1e-3, 0.9, 1e-4),
            "triton": lambda t=t, table=table: tri.momentum_step_(t[0], t[2], t[1], table),
        }))
    return out


def main(argv=None) -> int:
    return h.main("sgd", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
