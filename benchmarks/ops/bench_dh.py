"""Micro-benchmark of the ``dh`` family: pool_unpool_diff (dh1), noisy_unpool_diff (dh2) and
noisy_unpool_diff_philox (dh2, noise drawn in the kernel), ELU, M = 4 noisy copies of the batch.

    python benchmarks/ops/bench_dh.py [--device cpu|cuda] [--repeats 20] [--out results.json]
"""
import sys

import _harness as h

from dtp_fast import ops

M = 4  # noisy copies: feedback iterations x noise samples of a precomputed chunk
KEY = (0x12345678, 0x9ABCDEF0)


def cases(args):
    shapes = ([("tiny", (2, 4, 8, 8), (2, 2, 0))] if args.quick else
              [("SimpleVGG conv_1 B32", (32, 128, 32, 32), (2, 2, 0)),
               ("LeNet conv_1 B32", (32, 32, 32, 32), (3, 2, 1))])
    tri = h.triton_module("dh", args.device)
    out = []
    for name, shape, pool in shapes:
        label = "%s %s M%d k%ds%dp%d" % (name, "x".join(map(str, shape)), M, *pool)
        B, C, H, W = shape
        k, s, p = pool
        geo = ((k, k), (s, s), (p, p))
        z1 = h.randn((M * B, C, H, W), args.device, seed=1)
        y, i = ops.act_pool2d_ref(h.randn(shape, args.device, seed=2), "elu", *pool)
        h0 = ops.unpool_act2d_ref(y, i, "elu", (H, W))
        eps = h.randn((M * B, *y.shape[1:]), args.device, seed=3)
        out.append(("pool_unpool_diff", label, {
            "torch": lambda z1=z1, h0=h0, p=pool: ops.pool_unpool_diff_ref(z1, h0, "elu", *p),
            "cpu": lambda z1=z1, h0=h0, p=pool: ops.pool_unpool_diff(z1, h0, "elu", *p, impl="compiled"),
            "cuda": lambda z1=z1, h0=h0, p=pool: ops.pool_unpool_diff(z1, h0, "elu", *p, impl="compiled"),
            "triton": lambda z1=z1, h0=h0, p=pool: tri.pool_unpool_diff(z1, h0, "elu", *p),
        }))
        dh2 = (y, eps, 0.1, i, h0, "elu", (H, W))
        out.append(("noisy_unpool_diff", label, {
            "torch": lambda a=dh2: ops.noisy_unpool_diff_ref(*a),
            "cpu": lambda a=dh2: ops.noisy_unpool_diff(*a, impl="compiled"),
            "cuda": lambda a=dh2: ops.noisy_unpool_diff(*a, impl="compiled"),
            "triton": lambda a=dh2, g=geo: tri.noisy_unpool_diff(a[0], a[3], a[4], "elu", g, 0.1, M, eps=a[1]),
        }))
        philox = (y, 0.1, i, h0, "elu", (H, W), KEY, 0, 0, 2, M)
        out.append(("noisy_unpool_diff_philox", label, {
            "torch": lambda a=philox: ops.noisy_unpool_diff_philox_ref(*a),
            "cpu": lambda a=philox: ops.noisy_unpool_diff_philox(*a),
            "cuda": lambda a=philox: ops.noisy_unpool_diff_philox(*a),
            "triton": lambda a=philox, g=geo: tri.noisy_unpool_diff(a[0], a[2], a[3], "elu", g, 0.1, M,
                                                                     noise=(KEY, 0, 0, 2)),
        }))
    return out


def main(argv=None) -> int:
    return h.main("dh", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
