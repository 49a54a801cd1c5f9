"""The ``sparse`` family: the chain of a pooled conv feedback layer from dh2 held at pooled resolution.

Behind a max-pool, ``dh2 = unpool(d2, I0)`` with ``d2 = ACT(y + dy) - ACT(y)`` at the block's (pooled)
output resolution and the clean switches ``I0``, fixed for the whole feedback phase of a batch (ACT(0) = 0
for every supported activation). The feedback chain needs, per iteration, the transposed convolution
``dr_y = V * dh2`` and the weight gradient ``wgrad(dh2, dr_y)``; one position in four of dh2 (2x2 pools)
is non-zero. The compiled ops compute both from d2 and index lists of the non-zeros built once per batch:

``switch_lists(indices, input_size, weight_shape, padding, dilation, output_size, copies)``
    The lists (a :class:`SwitchLists`) for switches ``indices`` (B, C, Hp, Wp) of an ``input_size``
    plane, ``copies`` copies of the batch (noise samples), and a stride-1 transposed convolution with a
    weight of ``weight_shape`` (C, Cx, KH, KW).
``pooled_conv_t(values, lists, weight)``
    ``dr_y`` of one iteration's d2 ``values`` (rows, C, Hp, Wp), in a zero-padded buffer (what
    :func:`pooled_wgrad` reads); :func:`interior` is the (rows, Cx, Hx, Wx) view of dr_y in it.
``pooled_wgrad(values, lists, dr_pad)``
    ``wgrad(unpool(values), dr_y)``, shaped like the weight (C, Cx, KH, KW), in its channels_last layout.
``pooled_chain_(values, lists, A, weight, momentum_buffer, ...)``
    Every iteration of a precomputed chunk in one call: both of the above and the feedback engine's
    momentum-SGD step of the weight, in place (the ``cpp`` backend's chain of a pooled conv layer).

:func:`pooled_chain_ref` defines the results: unpool (the last window in row-major order wins where
overlapping pools share a switch), then the dense ops. CPU only (float32, float64); the sums run in another
order than the dense kernels', so results agree up to rounding.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import pair, require_compiled
from .pool import unpool2d_last_wins

__all__ = ["SwitchLists", "switch_lists", "pooled_conv_t", "pooled_wgrad", "pooled_chain_", "interior", "unpool2d",
           "pooled_chain_ref"]

#: Bytes of one 512-bit vector: the kernels pad the output channels to a multiple of it.
_VECTOR_BYTES = 64


class SwitchLists(NamedTuple):
    """Index lists of the non-zeros of ``unpool(d2, switches)`` for one layer and batch (see the module doc)."""
    pix_ptr: torch.Tensor
    pix_ent: torch.Tensor
    ch_ptr: torch.Tensor
    ch_ent: torch.Tensor
    rows: int
    kernel_size: tuple
    padding: tuple
    dilation: tuple
    output_size: tuple
    padded_size: tuple
    channels_out: int
    channels_padded: int


def padded_channels(cx: int, dtype: torch.dtype) -> int:
    """Cx rounded up to a whole number of vectors of ``dtype``."""
    lanes = _VECTOR_BYTES // torch.empty((), dtype=dtype).element_size()
    return -(-cx // lanes) * lanes


def switch_lists(indices: torch.Tensor, input_size, weight_shape, padding, dilation, output_size,
                 copies: int = 1, dtype: torch.dtype = torch.float32) -> SwitchLists:
    """The lists of :mod:`this family <dtp_fast.ops.sparse>` for switches ``indices`` (B, C, Hp, Wp, int64,
    flat indices into ``input_size`` planes, from ``max_pool2d``) and a stride-1 transposed convolution
    with a weight of ``weight_shape`` (C, Cx, KH, KW), ``padding``, ``dilation`` and ``output_size``,
    for ``copies`` copies of the batch and values of ``dtype``."""
    require_compiled("switch_lists")
    (H, W), (ph, pw), (dh, dw), (Hx, Wx) = (pair(v, n) for v, n in (
        (input_size, "input_size"), (padding, "padding"), (dilation, "dilation"), (output_size, "output_size")))
    C, cx, KH, KW = weight_shape
    if indices.dim() != 4 or indices.shape[1] != C:
        raise ValueError(f"switch_lists: indices must be (B, {C}, Hp, Wp) for a weight of shape "
                         f"{tuple(weight_shape)}, got {tuple(indices.shape)}")
    cxp = padded_channels(cx, dtype)
    lists = torch.ops.dtp_fast.switch_lists(indices, [H, W], [KH, KW], [ph, pw], [dh, dw], [Hx, Wx], int(copies),
                                            cxp)
    padded = (max(H + (KH - 1) * dh, ph + Hx), max(W + (KW - 1) * dw, pw + Wx))
    return SwitchLists(*lists, rows=copies * indices.shape[0], kernel_size=(KH, KW), padding=(ph, pw),
                       dilation=(dh, dw), output_size=(Hx, Wx), padded_size=padded, channels_out=cx,
                       channels_padded=cxp)


def _packed_weight(weight: torch.Tensor, cxp: int) -> torch.Tensor:
    """V (C, Cx, KH, KW) as [c][kh][kw][co], co padded with zeros to cxp (no copy when it already is)."""
    w = weight.permute(0, 2, 3, 1)
    if w.shape[3] == cxp and w.is_contiguous():
        return w
    out = weight.new_zeros(*w.shape[:3], cxp)
    out[..., :w.shape[3]] = w
    return out


def _flat_values(values: torch.Tensor, lists: SwitchLists) -> torch.Tensor:
    if values.dim() != 4 or values.shape[0] != lists.rows or values.shape[1] != lists.ch_ptr.numel() - 1:
        raise ValueError(f"sparse ops: values must be (rows={lists.rows}, C={lists.ch_ptr.numel() - 1}, Hp, Wp), "
                         f"got {tuple(values.shape)}")
    return values.contiguous().view(-1)


def pooled_conv_t(values: torch.Tensor, lists: SwitchLists, weight: torch.Tensor) -> torch.Tensor:
    """``V * unpool(values)`` into a zero-padded (rows, Hb, Wb, Cxp) buffer (see the module doc)."""
    require_compiled("pooled_conv_t")
    return torch.ops.dtp_fast.pooled_conv_t(_flat_values(values, lists), lists.pix_ptr, lists.pix_ent,
                                            _packed_weight(weight, lists.channels_padded), lists.rows,
                                            list(lists.output_size), list(lists.padded_size), list(lists.padding))


def interior(dr_pad: torch.Tensor, lists: SwitchLists) -> torch.Tensor:
    """The (rows, Cx, Hx, Wx) view of dr_y inside :func:`pooled_conv_t`'s padded buffer."""
    (ph, pw), (Hx, Wx) = lists.padding, lists.output_size
    return dr_pad[:, ph:ph + Hx, pw:pw + Wx, :lists.channels_out].permute(0, 3, 1, 2)


def pooled_wgrad(values: torch.Tensor, lists: SwitchLists, dr_pad: torch.Tensor) -> torch.Tensor:
    """``wgrad(unpool(values), dr_y)`` from :func:`pooled_conv_t`'s buffer: (C, Cx, KH, KW), channels_last."""
    require_compiled("pooled_wgrad")
    out = torch.ops.dtp_fast.pooled_wgrad(_flat_values(values, lists), lists.ch_ptr, lists.ch_ent,
                                          dr_pad.contiguous(), list(lists.kernel_size), list(lists.dilation))
    KH, KW = lists.kernel_size
    return out.view(-1, KH, KW, lists.channels_padded)[..., :lists.channels_out].permute(0, 3, 1, 2)


def pooled_chain_(values: torch.Tensor, lists: SwitchLists, A: torch.Tensor, weight: torch.Tensor,
                  momentum_buffer: torch.Tensor, scale: float, lr: float, momentum: float, weight_decay: float,
                  loss_from: int) -> torch.Tensor:
    """Every iteration j of a precomputed chunk, in order, as the feedback engine runs them one by one:
    ``dr_y = V * unpool(values[j])``, ``grad = 2 * scale * (wgrad(unpool(values[j]), dr_y) - A[j])`` (plus
    ``weight_decay * V``), then ``buf = momentum * buf + grad; V -= lr * buf`` on ``weight`` and
    ``momentum_buffer`` in place. values (n, rows, C, Hp, Wp), A (n, *weight.shape). Returns the losses
    ``scale * (||dr_y||^2 - 2 <A[j], V>)`` (V before its step) of iterations ``loss_from`` .. n - 1."""
    require_compiled("pooled_chain_")
    if values.dim() != 5 or values.shape[1] != lists.rows:
        raise ValueError(f"pooled_chain_: values must be (n, rows={lists.rows}, C, Hp, Wp), got {tuple(values.shape)}")
    return torch.ops.dtp_fast.pooled_chain_(values, lists.pix_ptr, lists.pix_ent, lists.ch_ptr, lists.ch_ent, A,
                                            weight, momentum_buffer, list(lists.output_size),
                                            list(lists.padded_size), list(lists.padding), list(lists.dilation),
                                            float(scale), float(lr), float(momentum), float(weight_decay),
                                            int(loss_from))


def unpool2d(y: torch.Tensor, indices: torch.Tensor, kernel_size, stride, padding, output_size) -> torch.Tensor:
    """``max_unpool2d`` of ``y`` at ``indices``, deterministic where overlapping windows share a switch
    (the last window in row-major order wins)."""
    k, s = pair(kernel_size, "kernel_size"), pair(stride, "stride")
    if k[0] <= s[0] and k[1] <= s[1]:  # windows do not overlap: every index is unique
        return F.max_unpool2d(y, indices, k, s, padding, output_size=output_size)
    return unpool2d_last_wins(y, indices, output_size)


def pooled_chain_ref(values, indices, pool, input_size, weight, padding, dilation):
    """Reference of the family: ``(dr_y, wgrad(dh2, dr_y))`` with ``dh2 = unpool(values)`` and the dense
    ops of the feedback engine (a stride-1 transposed convolution); ``indices`` (B, C, Hp, Wp) repeated
    over the copies in ``values`` (rows, C, Hp, Wp); ``pool`` = (kernel_size, stride, padding) of the
    max-pool."""
    copies = values.shape[0] // indices.shape[0]
    dh2 = unpool2d(values, indices.repeat(copies, 1, 1, 1), *pool, output_size=tuple(input_size))
    padding, dilation = list(pair(padding, "padding")), list(pair(dilation, "dilation"))
    dr_y = F.conv_transpose2d(dh2, weight, None, 1, padding, 0, 1, dilation)
    grad = torch.ops.aten.convolution_backward(dh2, dr_y, weight, None, [1, 1], padding, dilation, False, [0, 0], 1,
                                               [False, True, False])[1]
    return dr_y, grad


def _switch_lists_fake(indices, input_size, kernel_size, padding, dilation, output_size, copies, cx_padded):
    ctx = torch.library.get_ctx()
    rows = copies * indices.shape[0]
    opt = dict(dtype=torch.int32, device=indices.device)
    return (indices.new_empty(rows * output_size[0] * output_size[1] + 1, **opt),
            indices.new_empty(ctx.new_dynamic_size(), 2, **opt), indices.new_empty(indices.shape[1] + 1, **opt),
            indices.new_empty(ctx.new_dynamic_size(), 2, **opt))


def _pooled_conv_t_fake(values, pix_ptr, pix_ent, weight, rows, output_size, padded_size, padding):
    return values.new_empty(rows, padded_size[0], padded_size[1], weight.shape[3])


def _pooled_wgrad_fake(values, ch_ptr, ch_ent, dr_pad, kernel_size, dilation):
    return values.new_empty(ch_ptr.shape[0] - 1, kernel_size[0] * kernel_size[1], dr_pad.shape[3])


def _pooled_chain_fake(values, pix_ptr, pix_ent, ch_ptr, ch_ent, A, weight, momentum_buffer, output_size,
                       padded_size, padding, dilation, scale, lr, momentum, weight_decay, loss_from):
    return values.new_empty(max(0, values.shape[0] - loss_from))


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::switch_lists": _switch_lists_fake,
    "dtp_fast::pooled_conv_t": _pooled_conv_t_fake,
    "dtp_fast::pooled_wgrad": _pooled_wgrad_fake,
    "dtp_fast::pooled_chain_": _pooled_chain_fake,
}
AUTOGRAD: dict = {}
