"""The ``dh`` family: the L-DRL perturbations dh1 and dh2 of a pooled block, compiled and in PyTorch.

The ops serve the L-DRL feedback engine (ALGORITHM.md section 5). They
take M noisy copies of a batch of B at once (M*B samples, copy m of sample b
at row m * B + b) and the clean pass's ``h0 = unpool_act2d(y, I0, act)`` of
shape (B, C, H, W), repeated over the copies:

``pool_unpool_diff(z1, h0, act, kernel_size, stride, padding)``
    dh1 = ``unpool_act2d(*act_pool2d(z1, ...), act, (H, W)) - h0``, without
    materialising the pooled values or the switches.
``noisy_unpool_diff(y, eps, sigma, indices, h0, act, output_size)``
    dh2 = ``unpool_act2d(y + sigma * eps, indices, act, output_size) - h0``.
``noisy_unpool_diff_philox(y, sigma, indices, h0, act, output_size, key, ...)``
    dh2 with the noise drawn in the kernel from the counter-based stream of
    :mod:`dtp_fast.ops.noise` (never stored); compiled only (CPU and CUDA).

Tie rules are those of :mod:`dtp_fast.ops.pool`. They run under no_grad (no
autograd formula) and return their result in the memory format of ``z1`` /
``eps`` / ``y`` (NCHW or channels_last). Their compiled CPU
kernels reproduce the references bit for bit, with one exception of ATen's
own making: ATen's CPU ELU computes the last ``n % (2 * vector width)``
elements of each thread's chunk with std::expm1 and all others with Sleef's
vectorised expm1, which differ by one ulp on about 0.5% (float32) / 8%
(float64) of negative inputs. The kernels apply the vectorised ELU to every
element, so where the reference's ELU *after* the unpooling fell into that
remainder, the two may differ by one ulp (tanh, ReLU and identity: no
exception).

``impl`` picks the implementation of the first two: ``"compiled"`` (raises
when the extension is unavailable), ``"torch"`` (the reference) or ``"auto"``
(compiled for CPU float32/float64 tensors when available, and for CUDA
tensors when the build has CUDA kernels; else the reference).
"""

from __future__ import annotations

import torch

from ._common import (COMPILED_DTYPES, IntPair, act_code, check_4d, check_same_dtype, copies, memory_format,
                      plane_size, pool_args, require_compiled, use_compiled)
from .noise import philox_normal
from .pool import act_pool2d_ref, unpool_act2d_ref

__all__ = ["noisy_unpool_diff", "noisy_unpool_diff_philox", "noisy_unpool_diff_philox_ref", "noisy_unpool_diff_ref",
           "pool_unpool_diff", "pool_unpool_diff_ref"]


# --------------------------------------------------------------------------
# references (pure PyTorch; they define the ops' results)
# --------------------------------------------------------------------------

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
    act_code(act)
    k, s, p = pool_args(kernel_size, stride, padding)
    check_4d(op, "z1", "(M*B, C, H, W)", z1)
    check_4d(op, "h0", "(B, C, H, W)", h0)
    check_same_dtype(op, "z1", z1, "h0", h0)
    if tuple(h0.shape[1:]) != tuple(z1.shape[1:]):
        raise ValueError(
            "%s: h0 must be (B, C, H, W) with the C, H, W of z1, got h0 of shape %s and z1 of shape %s"
            % (op, tuple(h0.shape), tuple(z1.shape))
        )
    M = copies(op, "z1", z1.shape[0], "h0", h0.shape[0])
    H, W = z1.shape[2:]
    y1, i1 = act_pool2d_ref(z1, act, k, s, p)
    dh1 = unpool_act2d_ref(y1, i1, act, (H, W)) - h0.repeat(M, 1, 1, 1)
    return dh1.contiguous(memory_format=memory_format(z1))


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
    act_code(act)
    H, W = plane_size(output_size)
    check_4d(op, "y", "(B, C, Hp, Wp)", y)
    check_4d(op, "eps", "(M*B, C, Hp, Wp)", eps)
    check_4d(op, "h0", "(B, C, H, W)", h0)
    check_same_dtype(op, "y", y, "eps", eps)
    check_same_dtype(op, "y", y, "h0", h0)
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
    M = copies(op, "eps", eps.shape[0], "y", y.shape[0])
    noisy = y.repeat(M, 1, 1, 1) + sigma * eps
    dh2 = unpool_act2d_ref(noisy, indices.repeat(M, 1, 1, 1), act, (H, W)) - h0.repeat(M, 1, 1, 1)
    return dh2.contiguous(memory_format=memory_format(eps))



# --------------------------------------------------------------------------
# public ops (deliberately the signatures of their references, plus ``impl``)
# --------------------------------------------------------------------------

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
    code = act_code(act)
    k, s, p = pool_args(kernel_size, stride, padding)
    if use_compiled(impl, z1, h0, op="pool_unpool_diff"):
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
    code = act_code(act)
    size = plane_size(output_size)
    if use_compiled(impl, y, eps, indices, h0, op="noisy_unpool_diff"):
        return torch.ops.dtp_fast.noisy_unpool_diff(y, eps, float(sigma), indices, h0, code, size)
    return noisy_unpool_diff_ref(y, eps, sigma, indices, h0, act, size)


def noisy_unpool_diff_philox(y: torch.Tensor, sigma: float, indices: torch.Tensor, h0: torch.Tensor, act: str,
                             output_size: IntPair, key: tuple[int, int], offset: int, iteration: int, samples: int,
                             copies: int) -> torch.Tensor:
    """``noisy_unpool_diff`` with the noise of a :class:`~dtp_fast.noise.NoiseBlock` drawn in the kernel: for
    ``copies`` = M blocks of the B rows of y, block m has iteration ``iteration + m // samples`` and
    noise sample ``m % samples`` of the counter-based stream under ``key`` (row b: sample index
    ``offset + b``). Compiled op (CPU or CUDA); returns (M*B, C, H, W) in the memory format of y."""
    require_compiled("noisy_unpool_diff_philox")
    return torch.ops.dtp_fast.noisy_unpool_diff_philox(
        y, float(sigma), indices, h0, act_code(act), list(plane_size(output_size)), int(key[0]),
        int(key[1]), int(offset), int(iteration), int(samples), int(copies))


def noisy_act_diff_philox(y: torch.Tensor, sigma: float, a0: torch.Tensor, act: str, key: tuple[int, int],
                          offset: int, iteration: int, samples: int, copies: int) -> torch.Tensor:
    """``act(y + sigma * eps) - a0`` at y's own resolution (dh2 held pooled), the noise drawn in the kernel as
    in :func:`noisy_unpool_diff_philox`, whose result with the identity as switches it is (bit for bit). y,
    a0 = act(y) (B, C, H, W); returns (copies * B, C, H, W) in the memory format of y. Compiled op (CPU; on
    CUDA that op with the identity as switches)."""
    if y.device.type != "cpu":
        ident = torch.arange(y.shape[2] * y.shape[3], device=y.device).view(1, 1, *y.shape[2:]).expand(y.shape)
        return noisy_unpool_diff_philox(y, sigma, ident, a0, act, y.shape[2:], key, offset, iteration, samples,
                                        copies)
    require_compiled("noisy_act_diff_philox")
    return torch.ops.dtp_fast.noisy_act_diff_philox(y, float(sigma), a0, act_code(act), int(key[0]), int(key[1]),
                                                    int(offset), int(iteration), int(samples), int(copies))


def noisy_unpool_diff_philox_ref(y: torch.Tensor, sigma: float, indices: torch.Tensor, h0: torch.Tensor, act: str,
                                 output_size: IntPair, key: tuple[int, int], offset: int, iteration: int,
                                 samples: int, copies: int) -> torch.Tensor:
    """Reference of :func:`noisy_unpool_diff_philox` in plain PyTorch (any device): the noise block
    from the PyTorch mirror of the generator, then :func:`noisy_unpool_diff_ref`."""
    B = y.shape[0]
    eps = torch.stack([philox_normal(y.shape, key, offset, iteration + m // samples, m % samples, y.device)
                       for m in range(copies)]) if copies else y.new_empty((0, *y.shape), dtype=torch.float32)
    eps = eps.reshape(copies * B, *y.shape[1:]).to(y.dtype)
    out = noisy_unpool_diff_ref(y, eps, sigma, indices, h0, act, output_size)
    return out.contiguous(memory_format=memory_format(y))


# --------------------------------------------------------------------------
# fake kernels (FAKES) of the compiled ops, registered by dtp_fast.ops (no autograd: they run under no_grad)
# --------------------------------------------------------------------------

def _pool_unpool_diff_fake(z1, h0, act, kernel_size, stride, padding):
    op = "dtp_fast::pool_unpool_diff"
    torch._check(z1.dim() == 4, lambda: op + ": z1 must be 4-D (M*B, C, H, W)")
    torch._check(h0.dim() == 4, lambda: op + ": h0 must be 4-D (B, C, H, W)")
    torch._check(z1.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    torch._check(z1.dtype == h0.dtype, lambda: op + ": z1 and h0 must have the same dtype")
    torch._check(h0.shape[1:] == z1.shape[1:], lambda: op + ": h0 must have the C, H, W of z1")
    torch._check(
        z1.shape[0] == 0 if h0.shape[0] == 0 else z1.shape[0] % h0.shape[0] == 0,
        lambda: op + ": the batch size of z1 must be a multiple of the batch size of h0",
    )
    return torch.empty(
        z1.shape, dtype=z1.dtype, device=z1.device, memory_format=memory_format(z1)
    )


def _noisy_unpool_diff_fake(y, eps, sigma, indices, h0, act, output_size):
    op = "dtp_fast::noisy_unpool_diff"
    torch._check(y.dim() == 4 and eps.dim() == 4 and h0.dim() == 4, lambda: op + ": 4-D tensors only")
    torch._check(indices.dtype == torch.int64, lambda: op + ": int64 indices")
    torch._check(y.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    torch._check(y.dtype == eps.dtype and y.dtype == h0.dtype, lambda: op + ": one dtype for y, eps, h0")
    torch._check(eps.shape[1:] == y.shape[1:], lambda: op + ": eps must have the C, Hp, Wp of y")
    torch._check(
        eps.shape[0] == 0 if y.shape[0] == 0 else eps.shape[0] % y.shape[0] == 0,
        lambda: op + ": the batch size of eps must be a multiple of the batch size of y",
    )
    shape = (eps.shape[0], y.shape[1], output_size[0], output_size[1])
    return torch.empty(shape, dtype=y.dtype, device=eps.device, memory_format=memory_format(eps))


def _noisy_unpool_diff_philox_fake(y, sigma, indices, h0, act, output_size, key0, key1, offset, iteration,
                                   samples, copies):
    op = "dtp_fast::noisy_unpool_diff_philox"
    torch._check(y.dim() == 4 and h0.dim() == 4, lambda: op + ": 4-D tensors only")
    torch._check(y.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    shape = (copies * y.shape[0], y.shape[1], output_size[0], output_size[1])
    return torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=memory_format(y))


def _noisy_act_diff_philox_fake(y, sigma, a0, act, key0, key1, offset, iteration, samples, copies):
    op = "dtp_fast::noisy_act_diff_philox"
    torch._check(y.dim() == 4 and a0.shape == y.shape, lambda: op + ": y and a0 (B, C, H, W) of one shape")
    torch._check(y.dtype in COMPILED_DTYPES, lambda: op + ": float32/float64 only")
    return torch.empty((copies * y.shape[0], *y.shape[1:]), dtype=y.dtype, device=y.device,
                       memory_format=memory_format(y))


#: The fake kernels of the family's compiled ops, registered by dtp_fast.ops (see its doc).
FAKES = {
    "dtp_fast::pool_unpool_diff": _pool_unpool_diff_fake,
    "dtp_fast::noisy_unpool_diff": _noisy_unpool_diff_fake,
    "dtp_fast::noisy_unpool_diff_philox": _noisy_unpool_diff_philox_fake,
    "dtp_fast::noisy_act_diff_philox": _noisy_act_diff_philox_fake,
}
AUTOGRAD: dict = {}
