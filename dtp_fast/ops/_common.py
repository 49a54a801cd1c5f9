"""What the op families share: activation codes, argument checks, the compiled / torch choice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import _ext

#: Activation names accepted by the ops, with the codes the C++ kernels use (csrc/pool_act.h).
ACTIVATIONS = ("identity", "elu", "relu", "tanh")
ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
IMPLS = ("auto", "compiled", "torch")
#: Every op of dtp_fast._C (by family); dtp_fast._ext refuses a build that lacks one.
OPS = ("act_pool2d", "unpool_act2d", "pool_unpool_diff", "noisy_unpool_diff", "noisy_unpool_diff_philox",
       "noisy_act_diff_philox", "philox_normal_", "philox_noisy_input", "momentum_sgd_", "ldrl_loss", "linear_chain_", "switch_lists", "pooled_conv_t", "pooled_wgrad",
       "pooled_chain_")
#: The dtypes of the compiled kernels.
COMPILED_DTYPES = (torch.float32, torch.float64)

IntPair = int | Sequence[int]


def act_code(act: str) -> int:
    if not isinstance(act, str) or act not in ACT_CODES:
        raise ValueError("unknown act %r; valid activations: %s" % (act, ", ".join(ACTIVATIONS)))
    return ACT_CODES[act]


def activate(x: torch.Tensor, act: str) -> torch.Tensor:
    """ACT(x) with ATen's activation ops (what the references use)."""
    if act == "elu":
        return F.elu(x)
    if act == "relu":
        return torch.relu(x)
    if act == "tanh":
        return torch.tanh(x)
    return x


def pair(value: IntPair, name: str) -> tuple[int, int]:
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


def pool_args(kernel_size, stride, padding):
    """(kernel, stride, padding) as pairs; stride None means kernel_size."""
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    return k, s, p


def plane_size(size) -> tuple[int, int]:
    """(H, W) from an (H, W) pair, an int or a full (N, C, H, W) shape."""
    if not isinstance(size, int):
        try:
            items = tuple(size)
        except TypeError:
            items = None
        if items is not None and len(items) == 4:  # accept a full (N, C, H, W) shape
            size = items[2:]
    return pair(size, "output_size")


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format ATen's suggest_memory_format() reports for x."""
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)


def copies(op: str, name_copies: str, n: int, name_batch: str, b: int) -> int:
    """M, from the M*B rows of `name_copies` and the batch B of `name_batch`."""
    if (b == 0 and n != 0) or (b > 0 and n % b != 0):
        raise ValueError(
            "%s: the batch size of %s (%d) must be a multiple of the batch size of %s (%d): "
            "%s holds M copies of a batch of %s" % (op, name_copies, n, name_batch, b, name_copies, name_batch)
        )
    return n // b if b > 0 else 0


def check_4d(op: str, name: str, shape: str, t: torch.Tensor) -> None:
    if t.dim() != 4:
        raise ValueError("%s: %s must be 4-D %s, got shape %s" % (op, name, shape, tuple(t.shape)))


def check_same_dtype(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dtype != b.dtype:
        raise ValueError("%s: %s and %s must have the same dtype, got %s and %s"
                         % (op, name_a, name_b, a.dtype, b.dtype))


def use_compiled(impl: str, *tensors: torch.Tensor, op: str) -> bool:
    """Whether a wrapper with an ``impl`` argument calls the compiled op ``op``:
    ``"torch"`` never, ``"compiled"`` always (raises when the extension is unavailable),
    ``"auto"`` for float32/float64 tensors on the CPU, or on a CUDA device when the
    build has a CUDA kernel of ``op``."""
    if impl not in IMPLS:
        raise ValueError("unknown impl %r; valid: %s" % (impl, ", ".join(IMPLS)))
    if impl == "torch":
        return False
    if impl == "compiled":
        require_compiled(op)
        return True
    device = tensors[0].device.type
    if any(t.device.type != device for t in tensors) or tensors[0].dtype not in COMPILED_DTYPES:
        return False
    if device == "cpu":
        return _ext.available()
    return (device == "cuda" and _ext.available()
            and torch._C._dispatch_has_kernel_for_dispatch_key("dtp_fast::" + op, "CUDA"))


def require_compiled(op: str) -> None:
    """Raise, with the reason and the fix, when the compiled ops are unavailable."""
    if not _ext.available():
        raise RuntimeError("%s needs the compiled ops: %s" % (op, _ext.load_error()))
