"""The ``pool`` family: fused activation + max-pool, compiled kernels and pure-PyTorch references.

Two ops, each with a compiled kernel (``torch.ops.dtp_fast.*``, from the
extension ``dtp_fast._C``) and a reference in plain PyTorch that defines its
result:

``act_pool2d(z, act, kernel_size, stride, padding)``
    ``max_pool2d(ACT(z), kernel_size, stride, padding, return_indices=True)``:
    the forward half of a conv block (conv -> ACT -> max-pool), returning the
    pooled values and the switches (int64 flat indices into each H*W plane).
``unpool_act2d(y, indices, act, output_size)``
    ``ACT(max_unpool2d(y, indices, output_size))``: the first half of a
    feedback block (unpool with the switches -> ACT).

``act`` is one of ``"identity"``, ``"elu"`` (alpha = 1), ``"relu"``, ``"tanh"``.

Tie rules (both implementations): in a pooling window the first maximum in
row-major order wins and a NaN always wins (the last NaN if several); the
activation is applied before comparing (ELU saturates to -1, which creates
ties absent from ``z``). The compiled CPU kernel computes ELU and tanh with
ATen, so its activated values are bit for bit those of ``F.elu`` /
``torch.tanh`` on the same tensor, and so are the ties (a correctly rounded
expm1 differs from ATen's vectorised one by an ulp near saturation).

When overlapping windows (e.g. kernel 3, stride 2, padding 1) give two pooled
positions the same index, unpooling keeps the value of the LAST of them in
row-major order, deterministically, like PyTorch's single-threaded CPU
``max_unpool2d`` (its multi-threaded CPU and its CUDA kernels are racy there).

``impl`` picks the implementation: ``"compiled"`` (raises when the extension
is unavailable), ``"torch"`` (the reference) or ``"auto"`` (compiled for CPU
float32/float64 tensors when available, else the reference). Both ops support
autograd with either implementation (the formulas of the compiled ops are
registered here, with their fake kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (ACT_CODES, COMPILED_DTYPES, IntPair, act_code, activate, plane_size, pool_args,
                      use_compiled)

__all__ = ["act_pool2d", "act_pool2d_ref", "unpool2d_last_wins", "unpool_act2d", "unpool_act2d_ref"]

# --------------------------------------------------------------------------
# references (pure PyTorch; they define the ops' results)
# --------------------------------------------------------------------------

def act_pool2d_ref(
    z: torch.Tensor,
    act: str,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`act_pool2d`: ``max_pool2d(ACT(z), ..., return_indices=True)``.

    Args:
        z: (N, C, H, W), any floating dtype and device.
        act: "identity", "elu", "relu" or "tanh".
        kernel_size, stride, padding: ints or pairs; stride None means kernel_size.
            Floor mode, dilation 1.

    Returns:
        values: (N, C, OH, OW), dtype of z, OH = (H + 2 * pH - kH) // sH + 1
            (OW alike); indices: (N, C, OH, OW) int64, flat indices into each
            H*W input plane (first maximum in row-major order; the last NaN wins).
    """
    act_code(act)
    k, s, p = pool_args(kernel_size, stride, padding)
    if z.dim() != 4:
        raise ValueError("act_pool2d: z must be 4-D (N, C, H, W), got shape %s" % (tuple(z.shape),))
    return F.max_pool2d(activate(z, act), k, s, p, return_indices=True)


def unpool_act2d_ref(
    y: torch.Tensor,
    indices: torch.Tensor,
    act: str,
    output_size: IntPair,
) -> torch.Tensor:
    """Reference of :func:`unpool_act2d`: ``ACT(max_unpool2d(y, indices, output_size))``.

    Args:
        y: (N, C, Hp, Wp), any floating dtype and device.
        indices: (N, C, Hp, Wp) int64, flat indices into each H*W output plane
            (the switches returned by :func:`act_pool2d`).
        act: "identity", "elu", "relu" or "tanh".
        output_size: (H, W) (or a full (N, C, H, W) shape).

    Returns:
        (N, C, H, W): ACT(y) scattered to the indices, zeros elsewhere. When
        several pooled positions of a plane share an index, the last one in
        row-major order wins (deterministic on every device).
    """
    act_code(act)
    H, W = plane_size(output_size)
    if y.dim() != 4:
        raise ValueError("unpool_act2d: y must be 4-D (N, C, Hp, Wp), got shape %s" % (tuple(y.shape),))
    if indices.shape != y.shape:
        raise ValueError(
            "unpool_act2d: indices must have the shape of y, got %s and %s"
            % (tuple(indices.shape), tuple(y.shape))
        )
    if indices.dtype != torch.int64:
        raise ValueError("unpool_act2d: indices must be int64, got %s" % indices.dtype)
    N, C, Hp, Wp = y.shape
    idx = indices.reshape(N, C, Hp * Wp)
    if idx.numel() > 0:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= H * W:
            bad = lo if lo < 0 else hi
            raise RuntimeError(
                "unpool_act2d: found an invalid max index %d (indices must lie in [0, H*W) "
                "with output_size %dx%d)" % (bad, H, W)
            )
    return activate(unpool2d_last_wins(y, indices, (H, W)), act)


def unpool2d_last_wins(y: torch.Tensor, indices: torch.Tensor, output_size: IntPair) -> torch.Tensor:
    """``max_unpool2d`` made deterministic, differentiable in ``y``, without argument checks.

    Where several pooled positions of a plane hold the same index (overlapping
    pools), the last one in row-major order wins, on every device and thread
    count (``F.max_unpool2d`` races there).
    """
    H, W = output_size
    N, C, Hp, Wp = y.shape
    idx = indices.reshape(N, C, Hp * Wp)
    # Winner of each output position = the last pooled position writing it.
    pos = torch.arange(Hp * Wp, device=y.device).expand(N, C, Hp * Wp)
    winner = torch.full((N, C, H * W), -1, dtype=torch.int64, device=y.device)
    winner.scatter_reduce_(2, idx, pos, reduce="amax")
    values = y.reshape(N, C, Hp * Wp).gather(2, winner.clamp_min(0))
    out = torch.where(winner >= 0, values, torch.zeros((), dtype=y.dtype, device=y.device))
    return out.reshape(N, C, H, W)


# --------------------------------------------------------------------------
# public ops (deliberately the signatures of their references, plus ``impl``)
# --------------------------------------------------------------------------

def act_pool2d(
    z: torch.Tensor,
    act: str,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_pool2d(ACT(z), kernel_size, stride, padding, return_indices=True)``.

    Args:
        z: (N, C, H, W). The compiled kernel takes CPU float32/float64 tensors
            of any strides; "auto" falls back to the reference otherwise.
        act: "identity", "elu", "relu" or "tanh".
        kernel_size, stride, padding: ints or pairs; stride None means kernel_size.
        impl: "auto", "compiled" or "torch" (see the module docstring).

    Returns:
        (values, indices), both (N, C, OH, OW); indices int64 into each H*W plane.
    """
    code = act_code(act)
    k, s, p = pool_args(kernel_size, stride, padding)
    if use_compiled(impl, z, op="act_pool2d"):
        return torch.ops.dtp_fast.act_pool2d(z, code, k, s, p)
    return act_pool2d_ref(z, act, k, s, p)


def unpool_act2d(
    y: torch.Tensor,
    indices: torch.Tensor,
    act: str,
    output_size: IntPair,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """``ACT(max_unpool2d(y, indices, output_size))``, last write wins on duplicates.

    Args:
        y: (N, C, Hp, Wp). The compiled kernel takes CPU float32/float64 tensors.
        indices: (N, C, Hp, Wp) int64 switches (from :func:`act_pool2d`).
        act: "identity", "elu", "relu" or "tanh".
        output_size: (H, W) of the unpooled planes (or a full (N, C, H, W) shape).
        impl: "auto", "compiled" or "torch" (see the module docstring).

    Returns:
        (N, C, H, W).
    """
    code = act_code(act)
    size = plane_size(output_size)
    if use_compiled(impl, y, indices, op="unpool_act2d"):
        return torch.ops.dtp_fast.unpool_act2d(y, indices, code, size)
    return unpool_act2d_ref(y, indices, act, size)



# --------------------------------------------------------------------------
# fake kernels (FAKES) and autograd (AUTOGRAD) of the compiled ops, registered by dtp_fast.ops
# --------------------------------------------------------------------------

def _act_grad_from_output(out: torch.Tensor, code: int) -> torch.Tensor:
    """dACT/dx expressed through the activation's output (ELU: exp(x) = out + 1)."""
    if code == ACT_CODES["elu"]:
        return torch.where(out > 0, torch.ones_like(out), out + 1)
    if code == ACT_CODES["relu"]:
        return (out > 0).to(out.dtype)
    if code == ACT_CODES["tanh"]:
        return 1 - out * out
    return torch.ones_like(out)


def _fake_pool_len(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _act_pool2d_fake(z, act, kernel_size, stride, padding):
    torch._check(z.dim() == 4, lambda: "dtp_fast::act_pool2d: z must be 4-D")
    torch._check(z.dtype in COMPILED_DTYPES, lambda: "dtp_fast::act_pool2d: float32/float64 only")
    N, C, H, W = z.shape
    OH = _fake_pool_len(H, kernel_size[0], stride[0], padding[0])
    OW = _fake_pool_len(W, kernel_size[1], stride[1], padding[1])
    return z.new_empty((N, C, OH, OW)), z.new_empty((N, C, OH, OW), dtype=torch.int64)


def _unpool_act2d_fake(y, indices, act, output_size):
    torch._check(y.dim() == 4, lambda: "dtp_fast::unpool_act2d: y must be 4-D")
    torch._check(indices.dtype == torch.int64, lambda: "dtp_fast::unpool_act2d: int64 indices")
    N, C = y.shape[0], y.shape[1]
    return y.new_empty((N, C, output_size[0], output_size[1]))


# act_pool2d: d values / d z scatters back to the switches (summing where
# overlapping windows pick the same input), times ACT'(z) there.
def _act_pool2d_setup(ctx, inputs, output):
    z, act = inputs[0], inputs[1]
    values, indices = output
    ctx.act = act
    ctx.z_shape = z.shape
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(z if act == ACT_CODES["elu"] else None, values, indices)


def _act_pool2d_backward(ctx, grad_values, grad_indices):
    z, values, indices = ctx.saved_tensors
    N, C, H, W = ctx.z_shape
    idx = indices.reshape(N, C, -1)
    if ctx.act == ACT_CODES["elu"]:
        # ELU'(z) = exp(z) for z <= 0, computed from z for accuracy near -1.
        zsel = z.reshape(N, C, H * W).gather(2, idx)
        d = torch.where(zsel > 0, torch.ones_like(zsel), torch.exp(zsel))
    else:
        d = _act_grad_from_output(values.reshape(N, C, -1), ctx.act)
    g = grad_values.reshape(N, C, -1) * d
    grad_z = g.new_zeros((N, C, H * W)).scatter_add_(2, idx, g)
    return grad_z.reshape(N, C, H, W), None, None, None, None


# unpool_act2d: only the pooled position that won an output position (the
# last writer) receives its gradient; overwritten ones get zero.
def _unpool_act2d_setup(ctx, inputs, output):
    y, indices, act = inputs[0], inputs[1], inputs[2]
    ctx.act = act
    ctx.y_shape = y.shape
    ctx.save_for_backward(indices, output)


def _unpool_act2d_backward(ctx, grad_out):
    indices, out = ctx.saved_tensors
    N, C, Hp, Wp = ctx.y_shape
    P = Hp * Wp
    idx = indices.reshape(N, C, P)
    out_flat = out.reshape(N, C, -1)
    grad_pre = grad_out.reshape(N, C, -1) * _act_grad_from_output(out_flat, ctx.act)
    pos = torch.arange(P, device=idx.device).expand(N, C, P)
    winner = torch.full_like(out_flat, -1, dtype=torch.int64).scatter_reduce_(
        2, idx, pos, reduce="amax"
    )
    is_winner = winner.gather(2, idx) == pos
    grad_y = torch.where(is_winner, grad_pre.gather(2, idx), torch.zeros_like(grad_pre[..., :1]))
    return grad_y.reshape(N, C, Hp, Wp), None, None, None


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::act_pool2d": _act_pool2d_fake,
    "dtp_fast::unpool_act2d": _unpool_act2d_fake,
}
#: Autograd formulas: op -> (backward, setup_context), registered by dtp_fast.ops.
AUTOGRAD = {
    "dtp_fast::act_pool2d": (_act_pool2d_backward, _act_pool2d_setup),
    "dtp_fast::unpool_act2d": (_unpool_act2d_backward, _unpool_act2d_setup),
}
