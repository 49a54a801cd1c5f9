"""Micro-benchmark of the ``pool`` family: act_pool2d and unpool_act2d (ELU), reference vs compiled.

    python benchmarks/ops/bench_pool.py [--device cpu|cuda] [--repeats 20] [--out results.json]
"""
import sys

import _harness as h

from dtp_fast import ops


def cases(args):
    shapes = ([("tiny", (2, 4, 8, 8), (2, 2, 0))] if args.quick else
              [("SimpleVGG conv_1 B32", (32, 128, 32, 32), (2, 2, 0)),
               ("LeNet conv_1 B32", (32, 32, 32, 32), (3, 2, 1))])
    out = []
    for name, shape, pool in shapes:
        label = "%s %s k%ds%dp%d" % (name, "x".join(map(str, shape)), *pool)
        z = h.randn(shape, args.device)
        y, i = ops.act_pool2d_ref(z, "elu", *pool)
        size = shape[2:]
        out.append(("act_pool2d", label, {
            "torch": lambda z=z, p=pool: ops.act_pool2d_ref(z, "elu", *p),
            "cpu": lambda z=z, p=pool: ops.act_pool2d(z, "elu", *p, impl="compiled"),
        }))
        out.append(("unpool_act2d", label, {
            "torch": lambda y=y, i=i, s=size: ops.unpool_act2d_ref(y, i, "elu", s),
            "cpu": lambda y=y, i=i, s=size: ops.unpool_act2d(y, i, "elu", s, impl="compiled"),
        }))
    return out


def main(argv=None) -> int:
    return h.main("pool", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
