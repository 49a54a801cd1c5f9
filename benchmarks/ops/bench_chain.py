"""Micro-benchmark of the ``chain`` family: ldrl_loss (a conv layer's loss) and linear_chain_ (a chunk of
iterations of a Linear feedback block).

    python benchmarks/ops/bench_chain.py [--device cpu|cuda] [--repeats 20] [--out results.json]
"""
import sys

import torch

import _harness as h

from dtp_fast import ops


def cases(args):
    if args.quick:
        convs, linears = [("tiny", (2, 4, 8, 8), (4, 4, 3, 3))], [("tiny", 3, 8, 4)]
    else:
        convs = [("SimpleVGG conv_1 B32", (32, 128, 32, 32), (128, 128, 3, 3)),
                 ("LeNet conv_1 B32", (32, 64, 16, 16), (64, 32, 5, 5))]
        linears = [("SimpleVGG fc B32, 10 iterations", 10, 512, 10), ("LeNet fc_0 B32, 10 iterations", 10, 4096, 512)]
    chain = h.triton_module("chain", args.device)
    sgd = h.triton_module("sgd", args.device)
    out = []
    for name, shape_r, shape_v in convs:
        r = h.randn(shape_r, args.device, seed=1).contiguous(memory_format=torch.channels_last)
        A, V = h.randn(shape_v, args.device, seed=2), h.randn(shape_v, args.device, seed=3)
        table = sgd.layer_scalars([(0.1, 0.9, 0.0, 0.1, 0.05)], V) if sgd is not None else None
        loss = torch.zeros(1, device=args.device)
        out.append(("ldrl_loss", "%s dr_y %s V %s" % (name, "x".join(map(str, shape_r)), "x".join(map(str, shape_v))), {
            "torch": lambda r=r, A=A, V=V: ops.ldrl_loss_ref(r, A, V, 0.05),
            "cpu": lambda r=r, A=A, V=V: ops.ldrl_loss(r, A, V, 0.05),
            "cuda": lambda r=r, A=A, V=V: ops.ldrl_loss(r, A, V, 0.05),
            "triton": lambda r=r, A=A, V=V, t=table, o=loss: chain.ldrl_loss_(o.zero_(), r, A, V, t[0]),
        }))
    for name, n, d_in, d_out in linears:
        V, buf = h.randn((d_in, d_out), args.device, seed=4), torch.zeros(d_in, d_out, device=args.device)
        A = h.randn((n, d_in, d_out), args.device, seed=5)
        X = h.randn((n, 32, d_out), args.device, seed=6)
        C = X.transpose(1, 2) @ X
        table = sgd.layer_scalars([(1e-4, 0.9, 0.0, 1 / 16, 1 / 32)], V) if sgd is not None else None
        losses = torch.zeros(n, device=args.device)
        hp = (1e-4, 0.9, 0.0, 1 / 32, n - 1)
        out.append(("linear_chain_", "%s V %dx%d" % (name, d_in, d_out), {
            "torch": lambda V=V, b=buf, A=A, C=C, hp=hp: ops.linear_chain_ref(V, b, A, C, *hp),
            "cpu": lambda V=V, b=buf, A=A, C=C, hp=hp: ops.linear_chain_(V, b, A, C, *hp),
            "cuda": lambda V=V, b=buf, A=A, C=C, hp=hp: ops.linear_chain_(V, b, A, C, *hp),
            "triton": lambda V=V, b=buf, A=A, C=C, t=table, o=losses, hp=hp: chain.linear_chain_(
                V, b, A, C, t[0], o.zero_(), hp[-1]),
        }))
    return out


def main(argv=None) -> int:
    return h.main("chain", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
