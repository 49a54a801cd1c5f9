"""Micro-benchmark of the ``sparse`` family: one iteration of a pooled conv feedback layer's chain
(the transposed convolution and weight gradient from dh2 at pooled resolution) against unpooling and the
dense kernels (``torch``: pooled_chain_ref), each op alone against the dense kernel on dh2 already unpooled,
and the per-batch index lists (switch_lists).

    python benchmarks/ops/bench_sparse.py [--repeats 20] [--out results.json]
"""
import sys

import torch
import torch.nn.functional as F

import _harness as h

from dtp_fast import ops


def cases(args):
    # (name, batch, channels of dh2, channels of dr_y, pre-pool plane)
    if args.quick:
        layers = [("tiny", 2, 4, 3, 8)]
    else:
        layers = [("SimpleVGG w0.25 B32 conv_1", 32, 32, 32, 16), ("SimpleVGG w0.25 B32 conv_2", 32, 64, 32, 8),
                  ("SimpleVGG w0.25 B32 conv_3", 32, 64, 64, 4), ("SimpleVGG w0.25 B32 conv_4", 32, 128, 64, 2),
                  ("SimpleVGG B32 conv_1", 32, 128, 128, 16)]
    out = []
    for name, B, C, Cx, H in layers:
        z = h.randn((B, C, H, H), args.device, seed=1)
        _, idx = F.max_pool2d(z, 2, 2, return_indices=True)
        d2 = h.randn(tuple(idx.shape), args.device, seed=2)
        V = h.randn((C, Cx, 3, 3), args.device, seed=3).contiguous(memory_format=torch.channels_last)
        pool = ((2, 2), (2, 2), (0, 0))
        label = "%s dh2 %dx%dx%d -> %d" % (name, C, H, H, Cx)
        if h.available_impls(args.device)["cpu"] is None:
            lists = ops.switch_lists(idx, (H, H), V.shape, 1, 1, (H, H), 1, V.dtype)
        else:
            lists = None

        def sparse(d2=d2, lists=lists, V=V):
            dr = ops.pooled_conv_t(d2, lists, V)
            return ops.pooled_wgrad(d2, lists, dr)

        out.append(("chain iteration", label, {
            "torch": lambda d2=d2, idx=idx, V=V, H=H: ops.pooled_chain_ref(d2, idx, pool, (H, H), V, 1, 1),
            "cpu": sparse,
        }))
        # each op alone: torch = the dense kernel on dh2 already unpooled (channels_last, as the engine has it)
        h2 = ops.unpool2d(d2, idx, *pool, output_size=(H, H)).contiguous(memory_format=torch.channels_last)
        dr = F.conv_transpose2d(h2, V, None, 1, 1)
        dr_pad = ops.pooled_conv_t(d2, lists, V) if lists is not None else None
        out.append(("transposed convolution", label, {
            "torch": lambda h2=h2, V=V: F.conv_transpose2d(h2, V, None, 1, 1),
            "cpu": lambda d2=d2, lists=lists, V=V: ops.pooled_conv_t(d2, lists, V),
        }))
        out.append(("weight gradient", label, {
            "torch": lambda h2=h2, dr=dr, V=V: torch.ops.aten.convolution_backward(
                h2, dr, V, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])[1],
            "cpu": lambda d2=d2, lists=lists, dr_pad=dr_pad: ops.pooled_wgrad(d2, lists, dr_pad),
        }))
        out.append(("switch_lists", label, {
            "cpu": lambda idx=idx, V=V, H=H: ops.switch_lists(idx, (H, H), V.shape, 1, 1, (H, H), 1, V.dtype),
        }))
    return out


def main(argv=None) -> int:
    return h.main("sparse", cases, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
