"""Fused activation + max-pool ops: compiled kernels and pure-PyTorch references.

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

Two more ops serve the L-DRL feedback engine (ALGORITHM.md section 5). They
take M noisy copies of a batch of B at once (M*B samples, copy m of sample b
at row m * B + b) and the clean pass's ``h0 = unpool_act2d(y, I0, act)`` of
shape (B, C, H, W), repeated over the copies:

``pool_unpool_diff(z1, h0, act, kernel_size, stride, padding)``
    dh1 = ``unpool_act2d(*act_pool2d(z1, ...), act, (H, W)) - h0``, without
    materialising the pooled values or the switches.
``noisy_unpool_diff(y, eps, sigma, indices, h0, act, output_size)``
    dh2 = ``unpool_act2d(y + sigma * eps, indices, act, output_size) - h0``.

They run under no_grad (no autograd formula) and return their result in the
memory format of ``z1`` / ``eps`` (NCHW or channels_last). Their compiled CPU
kernels reproduce the references bit for bit, with one exception of ATen's
own making: ATen's CPU ELU computes the last ``n % (2 * vector width)``
elements of each thread's chunk with std::expm1 and all others with Sleef's
vectorised expm1, which differ by one ulp on about 0.5% (float32) / 8%
(float64) of negative inputs. The kernels apply the vectorised ELU to every
element, so where the reference's ELU *after* the unpooling fell into that
remainder, the two may differ by one ulp (tanh, ReLU and identity: no
exception).

``impl`` picks the implementation: ``"compiled"`` (raises when the extension
is unavailable), ``"torch"`` (the reference) or ``"auto"`` (compiled for CPU
float32/float64 tensors when available, else the reference). Both ops support
autograd with either implementation.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from . import _ext

__all__ = [
    "ACTIVATIONS",
    "act_pool2d",
    "act_pool2d_ref",
    "noisy_unpool_diff",
    "noisy_unpool_diff_ref",
    "pool_unpool_diff",
    "pool_unpool_diff_ref",
    "unpool_act2d",
    "unpool_act2d_ref",
]

#: Activation names accepted by the ops, with the codes the C++ kernels use.
ACTIVATIONS = ("identity", "elu", "relu", "tanh")
_ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
_IMPLS = ("auto", "compiled", "torch")
_COMPILED_DTYPES = (torch.float32, torch.float64)

IntPair = int | Sequence[int]


# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------

def _act_code(act: str) -> int:
    if not isinstance(act, str) or act not in _ACT_CODES:
        raise ValueError("unknown act %r; valid activations: %s" % (act, ", ".join(ACTIVATIONS)))
    return _ACT_CODES[act]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    if isinstance(value, (int, torch.SymInt)) and not isinstance(value, bool):
        return (value, value)
    try:
        items = tuple(value)
    except TypeError:
        items = None
    if items is None or len(items) != 2 or not all(
        isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in items
    ):
        raise ValueError("%s must be an int or a pair of ints, got %r" % (name, value))
    return items


def _pool_args(kernel_size, stride, padding):
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    return k, s, p


def _output_size(output_size) -> tuple[int, int]:
    if not isinstance(output_size, int):
        try:
            size = tuple(output_size)
        except TypeError:
            size = None
        if size is not None and len(size) == 4:  # accept a full (N, C, H, W) shape
            output_size = size[2:]
    return _pair(output_size, "output_size")


def _check_impl(impl: str) -> None:
    if impl not in _IMPLS:
        raise ValueError("unknown impl %r; valid: %s" % (impl, ", ".join(_IMPLS)))


def _use_compiled(impl: str, *tensors: torch.Tensor, op: str | None = None) -> bool:
    """Whether to call the compiled kernel: ``impl="auto"`` picks it for float32/float64
    tensors on the CPU, or on a CUDA device when the build has a CUDA kernel of ``op``."""
    _check_impl(impl)
    if impl == "torch":
        return False
    if impl == "compiled":
        if not _ext.available():
            raise RuntimeError("impl='compiled' asked for, but %s" % _ext.load_error())
        return True
    device = tensors[0].device.type
    if any(t.device.type != device for t in tensors) or tensors[0].dtype not in _COMPILED_DTYPES:
        return False
    if device == "cpu":
        return _ext.available()
    return (device == "cuda" and op is not None and _ext.available()
            and torch._C._dispatch_has_kernel_for_dispatch_key("dtp_fast::" + op, "CUDA"))


def _has_compiled_op(name: str) -> bool:
    """Whether the loaded extension defines torch.ops.dtp_fast.<name> (a stale
    build may predate an op)."""
    try:
        getattr(torch.ops.dtp_fast, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _use_compiled_op(name: str, impl: str, *tensors: torch.Tensor) -> bool:
    """_use_compiled, and the op must exist in the loaded extension."""
    if not _has_compiled_op(name) and impl != "compiled":
        return False
    if not _use_compiled(impl, *tensors, op=name):
        return False
    if _has_compiled_op(name):
        return True
    if impl == "compiled":
        raise RuntimeError(
            "impl='compiled' asked for, but the loaded dtp_fast._C has no op %s: it "
            "predates it; rebuild with `pip install --no-build-isolation -e .`" % name
        )
    return False


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ATen's suggest_memory_format() reports for x."""
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)


def _copies(op: str, name_copies: str, n: int, name_batch: str, b: int) -> int:
    """M, from the M*B rows of `name_copies` and the batch B of `name_batch`."""
    if (b == 0 and n != 0) or (b > 0 and n % b != 0):
        raise ValueError(
            "%s: the batch size of %s (%d) must be a multiple of the batch size of %s (%d): "
            "%s holds M copies of a batch of %s" % (op, name_copies, n, name_batch, b, name_copies, name_batch)
        )
    return n // b if b > 0 else 0


def _check_4d(op: str, name: str, shape: str, t: torch.Tensor) -> None:
    if t.dim() != 4:
        raise ValueError("%s: %s must be 4-D %s, got shape %s" % (op, name, shape, tuple(t.shape)))


def _check_same_dtype(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise ValueError("%s: %s and %s must have the same dtype, got %s and %s" % (op, name_a, name_b, a.dtype, b.dtype))


def _activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == "elu":
        return F.elu(x)
    if act == "relu":
        return torch.relu(x)
    if act == "tanh":
        return torch.tanh(x)
    return x


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
    _act_code(act)
    k, s, p = _pool_args(kernel_size, stride, padding)
    if z.dim() != 4:
        raise ValueError("act_pool2d: z must be 4-D (N, C, H, W), got shape %s" % (tuple(z.shape),))
    return F.max_pool2d(_activate(z, act), k, s, p, return_indices=True)


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
    _act_code(act)
    H, W = _output_size(output_size)
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
    return _activate(unpool2d_last_wins(y, indices, (H, W)), act)


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


def pool_unpool_diff_ref(
    z1: torch.Tensor,
    h0: torch.Tensor,
    act: str,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
) -> torch.Tensor:
    """Reference of :func:`pool_unpool_diff`:
    ``unpool_act2d_ref(*act_pool2d_ref(z1, act, ...), act, (H, W)) - h0.repeat(M, 1, 1, 1)``.

    Args:
        z1: (M*B, C, H, W), the pre-activations of M noisy copies of a batch of
            B (copy m of sample b at row m * B + b); any floating dtype and device.
        h0: (B, C, H, W), same dtype: the clean pass's ACT(unpool(y, I0)).
        act: "identity", "elu", "relu" or "tanh" (applied before the pool and
            again after the unpooling, as in a forward block then its feedback block).
        kernel_size, stride, padding: ints or pairs; stride None means kernel_size.

    Returns:
        dh1, (M*B, C, H, W), dtype of z1, in the memory format of z1.
    """
    op = "pool_unpool_diff"
    _act_code(act)
    k, s, p = _pool_args(kernel_size, stride, padding)
    _check_4d(op, "z1", "(M*B, C, H, W)", z1)
    _check_4d(op, "h0", "(B, C, H, W)", h0)
    _check_same_dtype(op, "z1", z1, "h0", h0)
    if tuple(h0.shape[1:]) != tuple(z1.shape[1:]):
        raise ValueError(
            "%s: h0 must be (B, C, H, W) with the C, H, W of z1, got h0 of shape %s and z1 of shape %s"
            % (op, tuple(h0.shape), tuple(z1.shape))
        )
    M = _copies(op, "z1", z1.shape[0], "h0", h0.shape[0])
    H, W = z1.shape[2:]
    y1, i1 = act_pool2d_ref(z1, act, k, s, p)
    dh1 = unpool_act2d_ref(y1, i1, act, (H, W)) - h0.repeat(M, 1, 1, 1)
    return dh1.contiguous(memory_format=_memory_format(z1))


def noisy_unpool_diff_ref(
    y: torch.Tensor,
    eps: torch.Tensor,
    sigma: float,
    indices: torch.Tensor,
    h0: torch.Tensor,
    act: str,
    output_size: IntPair,
) -> torch.Tensor:
    """Reference of :func:`noisy_unpool_diff`:
    ``unpool_act2d_ref(y.repeat(M, 1, 1, 1) + sigma * eps, indices.repeat(M, 1, 1, 1), act, (H, W))
    - h0.repeat(M, 1, 1, 1)``.

    Args:
        y: (B, C, Hp, Wp), the clean pooled values; any floating dtype and device.
        eps: (M*B, C, Hp, Wp), same dtype: the noise of M copies of the batch
            (copy m of sample b at row m * B + b).
        sigma: the noise scale (a Python float).
        indices: (B, C, Hp, Wp) int64, the clean switches I0 (flat into H*W).
        h0: (B, C, H, W), same dtype: the clean ``unpool_act2d(y, indices, act)``.
        act: "identity", "elu", "relu" or "tanh".
        output_size: (H, W) (or a full (N, C, H, W) shape).

    Returns:
        dh2, (M*B, C, H, W), dtype of y, in the memory format of eps. Where
        several pooled positions of a plane share an index, the last one in
        row-major order wins.
    """
    op = "noisy_unpool_diff"
    _act_code(act)
    H, W = _output_size(output_size)
    _check_4d(op, "y", "(B, C, Hp, Wp)", y)
    _check_4d(op, "eps", "(M*B, C, Hp, Wp)", eps)
    _check_4d(op, "h0", "(B, C, H, W)", h0)
    _check_same_dtype(op, "y", y, "eps", eps)
    _check_same_dtype(op, "y", y, "h0", h0)
    if tuple(eps.shape[1:]) != tuple(y.shape[1:]):
        raise ValueError(
            "%s: eps must be (M*B, C, Hp, Wp) with the C, Hp, Wp of y, got eps of shape %s and y of shape %s"
            % (op, tuple(eps.shape), tuple(y.shape))
        )
    if tuple(h0.shape) != (y.shape[0], y.shape[1], H, W):
        raise ValueError(
            "%s: h0 must be (B, C, H, W) = %s (the B, C of y and output_size), got %s"
            % (op, (y.shape[0], y.shape[1], H, W), tuple(h0.shape))
        )
    M = _copies(op, "eps", eps.shape[0], "y", y.shape[0])
    noisy = y.repeat(M, 1, 1, 1) + sigma * eps
    dh2 = unpool_act2d_ref(noisy, indices.repeat(M, 1, 1, 1), act, (H, W)) - h0.repeat(M, 1, 1, 1)
    return dh2.contiguous(memory_format=_memory_format(eps))


# --------------------------------------------------------------------------
# public ops
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
    code = _act_code(act)
    k, s, p = _pool_args(kernel_size, stride, padding)
    if _use_compiled(impl, z):
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
    code = _act_code(act)
    size = _output_size(output_size)
    if _use_compiled(impl, y, indices):
        return torch.ops.dtp_fast.unpool_act2d(y, indices, code, size)
    return unpool_act2d_ref(y, indices, act, size)


def pool_unpool_diff(
    z1: torch.Tensor,
    h0: torch.Tensor,
    act: str,
    kernel_size: IntPair,
    stride: IntPair | None = None,
    padding: IntPair = 0,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """dh1 = ``unpool_act2d(*act_pool2d(z1, act, ...), act, (H, W)) - h0`` over M copies.

    The L-DRL term ``h(y1; I1) - h(y; I0)`` for M copies at once, where
    ``(y1, I1) = act_pool2d(z1)``, fused: no pooled tensor or switches are
    materialised. Every window writes ACT(its max) at its argmax (tie rules of
    :func:`act_pool2d`); positions no window selects hold ``-h0``.

    Args:
        z1: (M*B, C, H, W) pre-activations of the M noisy copies (copy m of
            sample b at row m * B + b); NCHW, channels_last or any strides.
            The compiled kernel takes CPU float32/float64 tensors.
        h0: (B, C, H, W), same dtype, any layout: ``unpool_act2d(y, I0, act)``
            of the clean pass, repeated over the M copies.
        act: "identity", "elu", "relu" or "tanh".
        kernel_size, stride, padding: ints or pairs; stride None means kernel_size.
        impl: "auto", "compiled" or "torch" (see the module docstring).

    Returns:
        (M*B, C, H, W), dtype of z1, in the memory format of z1. No autograd.
    """
    code = _act_code(act)
    k, s, p = _pool_args(kernel_size, stride, padding)
    if _use_compiled_op("pool_unpool_diff", impl, z1, h0):
        return torch.ops.dtp_fast.pool_unpool_diff(z1, h0, code, k, s, p)
    return pool_unpool_diff_ref(z1, h0, act, k, s, p)


def noisy_unpool_diff(
    y: torch.Tensor,
    eps: torch.Tensor,
    sigma: float,
    indices: torch.Tensor,
    h0: torch.Tensor,
    act: str,
    output_size: IntPair,
    *,
    impl: str = "auto",
) -> torch.Tensor:
    """dh2 = ``unpool_act2d(y + sigma * eps, indices, act, output_size) - h0`` over M copies.

    The L-DRL term ``h(y + dy; I0) - h(y; I0)`` for M copies at once; y,
    indices and h0 are repeated over the copies, ``y + sigma * eps`` is
    rounded as PyTorch's expression is (the product, then the sum). Where two
    pooled positions of a plane share an index, the last in row-major order wins.

    Args:
        y: (B, C, Hp, Wp) clean pooled values. The compiled kernel takes CPU
            float32/float64 tensors, NCHW, channels_last or any strides.
        eps: (M*B, C, Hp, Wp), same dtype: the noise (copy m of sample b at
            row m * B + b).
        sigma: the noise scale (a Python float; cast to the tensor dtype).
        indices: (B, C, Hp, Wp) int64, the clean switches I0 (flat into H*W).
        h0: (B, C, H, W), same dtype: ``unpool_act2d(y, indices, act)``.
        act: "identity", "elu", "relu" or "tanh".
        output_size: (H, W) (or a full (N, C, H, W) shape).
        impl: "auto", "compiled" or "torch" (see the module docstring).

    Returns:
        (M*B, C, H, W), dtype of y, in the memory format of eps. No autograd.
    """
    code = _act_code(act)
    size = _output_size(output_size)
    if _use_compiled_op("noisy_unpool_diff", impl, y, eps, indices, h0):
        return torch.ops.dtp_fast.noisy_unpool_diff(y, eps, float(sigma), indices, h0, code, size)
    return noisy_unpool_diff_ref(y, eps, sigma, indices, h0, act, size)


# --------------------------------------------------------------------------
# fake kernels and autograd of the compiled ops (registered once loaded)
# --------------------------------------------------------------------------

_python_impls_registered = False


def _act_grad_from_output(out: torch.Tensor, code: int) -> torch.Tensor:
    """dACT/dx expressed through the activation's output (ELU: exp(x) = out + 1)."""
    if code == _ACT_CODES["elu"]:
        return torch.where(out > 0, torch.ones_like(out), out + 1)
    if code == _ACT_CODES["relu"]:
        return (out > 0).to(out.dtype)
    if code == _ACT_CODES["tanh"]:
        return 1 - out * out
    return torch.ones_like(out)


def _fake_pool_len(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _register_python_impls() -> None:
    """Register fake kernels and autograd formulas for torch.ops.dtp_fast.*.

    Called by dtp_fast._ext after the extension loaded (and by this module's
    import when it already was); idempotent.
    """
    global _python_impls_registered
    if _python_impls_registered:
        return
    _python_impls_registered = True

    @torch.library.register_fake("dtp_fast::act_pool2d")
    def _act_pool2d_fake(z, act, kernel_size, stride, padding):
        torch._check(z.dim() == 4, lambda: "dtp_fast::act_pool2d: z must be 4-D")
        torch._check(z.dtype in _COMPILED_DTYPES, lambda: "dtp_fast::act_pool2d: float32/float64 only")
        N, C, H, W = z.shape
        OH = _fake_pool_len(H, kernel_size[0], stride[0], padding[0])
        OW = _fake_pool_len(W, kernel_size[1], stride[1], padding[1])
        return z.new_empty((N, C, OH, OW)), z.new_empty((N, C, OH, OW), dtype=torch.int64)

    @torch.library.register_fake("dtp_fast::unpool_act2d")
    def _unpool_act2d_fake(y, indices, act, output_size):
        torch._check(y.dim() == 4, lambda: "dtp_fast::unpool_act2d: y must be 4-D")
        torch._check(indices.dtype == torch.int64, lambda: "dtp_fast::unpool_act2d: int64 indices")
        N, C = y.shape[0], y.shape[1]
        return y.new_empty((N, C, output_size[0], output_size[1]))

    if _has_compiled_op("pool_unpool_diff"):

        @torch.library.register_fake("dtp_fast::pool_unpool_diff")
        def _pool_unpool_diff_fake(z1, h0, act, kernel_size, stride, padding):
            op = "dtp_fast::pool_unpool_diff"
            torch._check(z1.dim() == 4, lambda: op + ": z1 must be 4-D (M*B, C, H, W)")
            torch._check(h0.dim() == 4, lambda: op + ": h0 must be 4-D (B, C, H, W)")
            torch._check(z1.dtype in _COMPILED_DTYPES, lambda: op + ": float32/float64 only")
            torch._check(z1.dtype == h0.dtype, lambda: op + ": z1 and h0 must have the same dtype")
            torch._check(h0.shape[1:] == z1.shape[1:], lambda: op + ": h0 must have the C, H, W of z1")
            torch._check(
                z1.shape[0] == 0 if h0.shape[0] == 0 else z1.shape[0] % h0.shape[0] == 0,
                lambda: op + ": the batch size of z1 must be a multiple of the batch size of h0",
            )
            return torch.empty(
                z1.shape, dtype=z1.dtype, device=z1.device, memory_format=_memory_format(z1)
            )

    if _has_compiled_op("noisy_unpool_diff"):

        @torch.library.register_fake("dtp_fast::noisy_unpool_diff")
        def _noisy_unpool_diff_fake(y, eps, sigma, indices, h0, act, output_size):
            op = "dtp_fast::noisy_unpool_diff"
            torch._check(y.dim() == 4 and eps.dim() == 4 and h0.dim() == 4, lambda: op + ": 4-D tensors only")
            torch._check(indices.dtype == torch.int64, lambda: op + ": int64 indices")
            torch._check(y.dtype in _COMPILED_DTYPES, lambda: op + ": float32/float64 only")
            torch._check(y.dtype == eps.dtype and y.dtype == h0.dtype, lambda: op + ": one dtype for y, eps, h0")
            torch._check(eps.shape[1:] == y.shape[1:], lambda: op + ": eps must have the C, Hp, Wp of y")
            torch._check(
                eps.shape[0] == 0 if y.shape[0] == 0 else eps.shape[0] % y.shape[0] == 0,
                lambda: op + ": the batch size of eps must be a multiple of the batch size of y",
            )
            shape = (eps.shape[0], y.shape[1], output_size[0], output_size[1])
            return torch.empty(shape, dtype=y.dtype, device=eps.device, memory_format=_memory_format(eps))

    if _has_compiled_op("noisy_unpool_diff_philox"):

        @torch.library.register_fake("dtp_fast::noisy_unpool_diff_philox")
        def _noisy_unpool_diff_philox_fake(y, sigma, indices, h0, act, output_size, key0, key1, offset, iteration,
                                           samples, copies):
            op = "dtp_fast::noisy_unpool_diff_philox"
            torch._check(y.dim() == 4 and h0.dim() == 4, lambda: op + ": 4-D tensors only")
            torch._check(y.dtype in _COMPILED_DTYPES, lambda: op + ": float32/float64 only")
            shape = (copies * y.shape[0], y.shape[1], output_size[0], output_size[1])
            return torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=_memory_format(y))

    if _has_compiled_op("momentum_sgd_"):

        @torch.library.register_fake("dtp_fast::momentum_sgd_")
        def _momentum_sgd_fake(params, grads, bufs, lr, momentum, weight_decay):
            torch._check(len(params) == len(grads) == len(bufs) == len(lr) == len(momentum) == len(weight_decay),
                         lambda: "dtp_fast::momentum_sgd_: one grad, buffer and setting per parameter")

    if _has_compiled_op("ldrl_loss"):

        @torch.library.register_fake("dtp_fast::ldrl_loss")
        def _ldrl_loss_fake(dr_y, A, V, scale):
            op = "dtp_fast::ldrl_loss"
            torch._check(V.dtype in _COMPILED_DTYPES, lambda: op + ": float32/float64 only")
            torch._check(dr_y.dtype == V.dtype and A.dtype == V.dtype, lambda: op + ": one dtype for dr_y, A, V")
            torch._check(A.shape == V.shape, lambda: op + ": A must have the shape of V")
            return V.new_empty(())

    if _has_compiled_op("linear_chain_"):

        @torch.library.register_fake("dtp_fast::linear_chain_")
        def _linear_chain_fake(V, buf, A, C, lr, momentum, weight_decay, scale, loss_from):
            op = "dtp_fast::linear_chain_"
            torch._check(V.dim() == 2 and A.dim() == 3 and C.dim() == 3, lambda: op + ": V 2-D, A and C 3-D")
            torch._check(V.dtype in _COMPILED_DTYPES, lambda: op + ": float32/float64 only")
            torch._check(buf.dtype == V.dtype and A.dtype == V.dtype and C.dtype == V.dtype,
                         lambda: op + ": one dtype for V, buf, A, C")
            n = A.shape[0]
            torch._check(A.shape[1:] == V.shape and buf.shape == V.shape, lambda: op + ": A (n, *V.shape), buf V's")
            torch._check(C.shape == (n, V.shape[1], V.shape[1]), lambda: op + ": C must be (n, d_out, d_out)")
            torch._check(0 <= loss_from <= n, lambda: op + ": loss_from must be in [0, n]")
            return V.new_empty((n - loss_from,))

    if _has_compiled_op("philox_normal_"):

        @torch.library.register_fake("dtp_fast::philox_normal_")
        def _philox_normal_fake(out, key0, key1, offset, iteration, sample):
            torch._check(out.dtype in _COMPILED_DTYPES, lambda: "dtp_fast::philox_normal_: float32/float64 only")

    # act_pool2d: d values / d z scatters back to the switches (summing where
    # overlapping windows pick the same input), times ACT'(z) there.
    def _act_pool2d_setup(ctx, inputs, output):
        z, act = inputs[0], inputs[1]
        values, indices = output
        ctx.act = act
        ctx.z_shape = z.shape
        ctx.mark_non_differentiable(indices)
        ctx.save_for_backward(z if act == _ACT_CODES["elu"] else None, values, indices)

    def _act_pool2d_backward(ctx, grad_values, grad_indices):
        z, values, indices = ctx.saved_tensors
        N, C, H, W = ctx.z_shape
        idx = indices.reshape(N, C, -1)
        if ctx.act == _ACT_CODES["elu"]:
            # ELU'(z) = exp(z) for z <= 0, computed from z for accuracy near -1.
            zsel = z.reshape(N, C, H * W).gather(2, idx)
            d = torch.where(zsel > 0, torch.ones_like(zsel), torch.exp(zsel))
        else:
            d = _act_grad_from_output(values.reshape(N, C, -1), ctx.act)
        g = grad_values.reshape(N, C, -1) * d
        grad_z = g.new_zeros((N, C, H * W)).scatter_add_(2, idx, g)
        return grad_z.reshape(N, C, H, W), None, None, None, None

    torch.library.register_autograd(
        "dtp_fast::act_pool2d", _act_pool2d_backward, setup_context=_act_pool2d_setup
    )

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

    torch.library.register_autograd(
        "dtp_fast::unpool_act2d", _unpool_act2d_backward, setup_context=_unpool_act2d_setup
    )


if "dtp_fast._C" in sys.modules:  # loaded before this module (e.g. by torch's pystub lookup)
    _register_python_impls()
