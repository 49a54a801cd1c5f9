"""Forward/feedback block pairs and networks built from them.

A block pairs a forward map F and a feedback map G (ALGORITHM.md section 1):

    F(x)    = pool(act(op(x)))                  -> (y, switches)
    G(y, I) = op^T(act(unpool(y, I))) + c       -> x_hat

where ``op`` is a Conv2d or a Linear layer (optionally preceded by a flatten),
``act`` is ELU, ReLU, tanh or the identity, and ``pool`` an optional max-pool.
``op^T`` is the matching ConvTranspose2d or Linear(d_out -> d_in). Pooling
switches are returned by ``f`` and passed to ``g`` explicitly; a block keeps no
hidden state between calls.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .ops.sparse import unpool2d

__all__ = [
    "ACTIVATIONS",
    "Block",
    "DTPNet",
    "UnsupportedLayerError",
    "conv_block",
    "linear_block",
    "from_sequential",
]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


ACTIVATIONS = {"identity": _identity, "elu": F.elu, "relu": F.relu, "tanh": torch.tanh}


class UnsupportedLayerError(ValueError):
    """A layer of a user's network that DTP cannot build a feedback path for."""


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Block(nn.Module):
    """One forward block F and its feedback block G.

    Args:
        op: the forward ``nn.Conv2d`` or ``nn.Linear`` (its weights are used as is).
        act: ``"elu"``, ``"relu"``, ``"tanh"`` or ``"identity"``.
        pool: ``(kernel, stride, padding)`` of a max-pool after the activation
            (conv blocks only), or ``None``.
        flatten: flatten the input before a Linear op (and reshape G's output back).
        in_shape: the shape of one input sample, e.g. ``(3, 32, 32)``.
        feedback: build the feedback layer (False for the first block, whose
            feedback block is never used for learning).
    """

    def __init__(self, op: nn.Module, act: str = "identity", pool=None, flatten: bool = False,
                 in_shape: Sequence[int] = (), feedback: bool = True):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; choose one of {sorted(ACTIVATIONS)}")
        if isinstance(op, nn.Conv2d):
            self.kind = "conv"
            if pool is not None:
                pool = tuple(_pair(p) for p in pool)
        elif isinstance(op, nn.Linear):
            self.kind = "linear"
            if pool is not None:
                raise ValueError("max-pooling is only supported after a Conv2d")
        else:
            raise UnsupportedLayerError(f"a block's op must be nn.Conv2d or nn.Linear, got {op!r}")
        self.f_op = op
        self.act = act
        self.pool = pool
        self.flatten = flatten
        self.in_shape = tuple(int(s) for s in in_shape)
        # shapes of one sample after op (before pooling) and after the block
        self.pre_pool_shape, self.out_shape = self._infer_shapes()
        self.g_op = self._make_feedback() if feedback else None

    # ------------------------------------------------------------------ shapes
    def _infer_shapes(self):
        with torch.no_grad():
            w = self.f_op.weight
            x = torch.zeros((1, *self.in_shape), dtype=w.dtype, device=w.device)
            if self.flatten:
                x = x.flatten(1)
            try:
                z = self.f_op(x)
                y = F.max_pool2d(z, *self.pool) if self.pool else z
            except RuntimeError as err:
                raise ValueError(
                    f"input of shape {self.in_shape} does not fit {self.f_op}"
                    + (f" followed by max-pool {self.pool}" if self.pool else "")
                    + f": {err}") from err
        return tuple(z.shape[1:]), tuple(y.shape[1:])

    def _make_feedback(self) -> nn.Module:
        w = self.f_op.weight
        kw = dict(device=w.device, dtype=w.dtype)
        if self.kind == "linear":
            return nn.Linear(self.f_op.out_features, self.f_op.in_features, bias=True, **kw)
        op = self.f_op
        # output_padding so that G maps the op's output size back to exactly the input size
        h, w_ = self.in_shape[1:]
        ho, wo = self.pre_pool_shape[1:]
        outpad = []
        for size, osize, k, s, p, d in zip((h, w_), (ho, wo), op.kernel_size, op.stride, op.padding, op.dilation):
            outpad.append(size - ((osize - 1) * s - 2 * p + d * (k - 1) + 1))
        return nn.ConvTranspose2d(op.out_channels, op.in_channels, op.kernel_size, stride=op.stride,
                                  padding=op.padding, output_padding=tuple(outpad), dilation=op.dilation,
                                  bias=True, **kw)

    # ------------------------------------------------------------------ maps
    def f(self, x: torch.Tensor):
        """Forward map. Returns ``(y, switches)``; switches is None without pooling."""
        if self.flatten:
            x = x.flatten(1)
        a = ACTIVATIONS[self.act](self.f_op(x))
        if self.pool is None:
            return a, None
        k, s, p = self.pool
        return F.max_pool2d(a, k, s, p, return_indices=True)

    def h(self, y: torch.Tensor, switches) -> torch.Tensor:
        """The part of G before its linear op: ``act(unpool(y, switches))``.

        With overlapping pools (e.g. 3/2/1) two windows can hold the same
        switch; unpooling then keeps the value of the last window in row-major
        order (``F.max_unpool2d`` leaves this to a race between threads).
        """
        return ACTIVATIONS[self.act](self.unpool(y, switches))

    def unpool(self, y: torch.Tensor, switches) -> torch.Tensor:
        """``y`` placed at its switches in a zero plane of the pre-pool shape (``y`` itself without a
        pool); where overlapping windows share a switch the last window in row-major order wins."""
        if self.pool is None:
            return y
        return unpool2d(y, switches, *self.pool, output_size=self.pre_pool_shape[1:])

    def g_linear(self, h: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """G's linear op applied to ``h`` (``V * h + c``), reshaped to the block's input shape."""
        V = self.g_op
        c = V.bias if bias else None
        if self.kind == "linear":
            out = F.linear(h, V.weight, c)
            return out.view(-1, *self.in_shape) if self.flatten else out
        return F.conv_transpose2d(h, V.weight, c, V.stride, V.padding, V.output_padding, 1, V.dilation)

    def g(self, y: torch.Tensor, switches) -> torch.Tensor:
        """Feedback map ``G(y; switches)``, mapping the block's output space to its input space."""
        if self.g_op is None:
            raise RuntimeError("this block has no feedback layer (the first block of a network has none)")
        return self.g_linear(self.h(y, switches))

    def forward(self, x):
        return self.f(x)[0]

    def extra_repr(self) -> str:
        return f"act={self.act}, pool={self.pool}, flatten={self.flatten}, in_shape={self.in_shape}"


def conv_block(in_shape, out_channels: int, kernel_size: int = 3, padding: int | None = None,
               act: str = "elu", pool=(2, 2, 0), feedback: bool = True) -> Block:
    """Conv2d(k, stride 1, 'same' padding by default) -> act -> MaxPool2d(pool)."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(in_shape[0], out_channels, kernel_size, padding=padding)
    return Block(conv, act, pool, in_shape=in_shape, feedback=feedback)


def linear_block(in_shape, out_features: int, act: str = "identity", feedback: bool = True) -> Block:
    """[Flatten ->] Linear -> act (an MLP hidden block, or the output layer with act='identity')."""
    in_shape = tuple(in_shape)
    d_in = 1
    for s in in_shape:
        d_in *= s
    return Block(nn.Linear(d_in, out_features), act, None, flatten=len(in_shape) > 1,
                 in_shape=in_shape, feedback=feedback)


class DTPNet(nn.Module):
    """An ordered chain of named blocks; ``net(x)`` gives the logits.

    The feedback layers ``G_1 .. G_{N-1}`` are the trainable feedback layers;
    block 0 has none.
    """

    def __init__(self, blocks: "OrderedDict[str, Block] | Iterable[tuple[str, Block]]", in_shape=None):
        super().__init__()
        self.blocks = nn.ModuleDict(OrderedDict(blocks))
        if len(self.blocks) < 2:
            raise ValueError("a DTP network needs at least two blocks")
        names = list(self.blocks)
        first = self.blocks[names[0]]
        self.in_shape = tuple(in_shape) if in_shape is not None else first.in_shape
        prev = self.in_shape
        for i, (name, b) in enumerate(self.blocks.items()):
            if b.in_shape != prev:
                raise ValueError(f"block {name!r} expects input shape {b.in_shape} but receives {prev}")
            if i > 0 and b.g_op is None:
                raise ValueError(f"block {name!r} has no feedback layer; only the first block may omit it")
            prev = b.out_shape
        if len(prev) != 1:
            raise ValueError(f"the last block must output logits of shape (classes,), got {prev}")
        self.num_classes = prev[0]

    # ------------------------------------------------------------------ access
    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    @property
    def feedback_names(self) -> list[str]:
        """Names of the blocks whose feedback layer is trained (all but the first)."""
        return self.names[1:]

    def block_list(self) -> list[Block]:
        return list(self.blocks.values())

    def forward_parameters(self):
        for b in self.blocks.values():
            yield from b.f_op.parameters()

    def feedback_parameters(self):
        for b in self.block_list()[1:]:
            yield from b.g_op.parameters()

    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != len(self.in_shape) + 1 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not fit the network, which expects "
                f"(batch, {', '.join(map(str, self.in_shape))})")

    # ------------------------------------------------------------------ passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        for b in self.blocks.values():
            x = b.f(x)[0]
        return x

    def activations(self, x: torch.Tensor, detach_inputs: bool = False):
        """All block outputs ``s_0 .. s_{N-1}`` and their pooling switches.

        With ``detach_inputs`` each block's input is detached, so a loss on
        ``s_i`` only reaches block i's parameters (the DTP forward phase).
        """
        self.check_input(x)
        acts, switches = [], []
        for b in self.blocks.values():
            x, idx = b.f(x.detach() if detach_inputs else x)
            acts.append(x)
            switches.append(idx)
        return acts, switches


_ACT_MODULES = {nn.ELU: "elu", nn.ReLU: "relu", nn.Tanh: "tanh"}
SUPPORTED_LAYERS = "Conv2d, Linear, Flatten, MaxPool2d, ELU (alpha=1), ReLU, Tanh, Identity"


def _check_sequential(module: nn.Module, where: str) -> None:
    """The network is its children in order only when ``module`` computes what nn.Sequential computes: a
    module with a forward of its own (even a subclass of nn.Sequential) may compute something else."""
    if type(module).forward is not nn.Sequential.forward:
        raise UnsupportedLayerError(
            f"{where} ({type(module).__name__}) has a forward of its own, which from_sequential cannot read: it "
            f"builds the network from the children in order, which would compute something else. Write the model "
            f"as an nn.Sequential (nesting is fine)")


def _flatten_modules(seq: nn.Module, prefix: str = ""):
    for name, m in seq.named_children():
        if isinstance(m, nn.Sequential):
            _check_sequential(m, f"layer {prefix}{name}")
            yield from _flatten_modules(m, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", m


def from_sequential(seq: nn.Sequential, in_shape: Sequence[int], names: Sequence[str] | None = None) -> DTPNet:
    """Build a :class:`DTPNet` (forward blocks and feedback blocks) from an ``nn.Sequential``.

    The sequence is cut into blocks at every Conv2d or Linear: each block is
    ``[Flatten] -> Conv2d|Linear -> [activation] -> [MaxPool2d]`` (an
    activation after the pool is accepted too: max-pool and a monotone
    activation commute). The forward layers are used as they are (with their
    current weights); feedback layers get PyTorch's default initialisation.
    Blocks are named ``conv_0, conv_1, ..., fc_0, fc_1, ...`` unless ``names``
    is given. Raises :class:`UnsupportedLayerError` naming any layer that
    cannot be inverted.
    """
    if not isinstance(seq, nn.Module):
        raise TypeError(f"from_sequential expects an nn.Sequential, got {type(seq).__name__}")
    _check_sequential(seq, "the model")
    in_shape = tuple(int(s) for s in in_shape)
    specs = []  # dicts: op, act, pool, flatten, names
    pending_flatten = None
    for lname, m in _flatten_modules(seq):
        where = f"layer {lname!r} ({m})"
        cur = specs[-1] if specs else None
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Conv2d):
                if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise UnsupportedLayerError(
                        f"{where}: only Conv2d with groups=1, padding_mode='zeros' and numeric padding is supported")
                if pending_flatten:
                    raise UnsupportedLayerError(f"{where}: a Conv2d cannot follow nn.Flatten")
            specs.append(dict(op=m, act=None, pool=None, pool_first=False,
                              flatten=bool(pending_flatten), layers=[lname]))
            pending_flatten = None
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise UnsupportedLayerError(f"{where}: only nn.Flatten(start_dim=1, end_dim=-1) is supported")
            pending_flatten = lname
        elif isinstance(m, nn.Identity):
            continue
        elif type(m) in _ACT_MODULES or isinstance(m, nn.MaxPool2d):
            if cur is None or pending_flatten:
                raise UnsupportedLayerError(f"{where}: must follow a Conv2d or Linear layer")
            if isinstance(m, nn.MaxPool2d):
                if cur["pool"] is not None or not isinstance(cur["op"], nn.Conv2d):
                    raise UnsupportedLayerError(f"{where}: one MaxPool2d per Conv2d block, after the Conv2d")
                if _pair(m.dilation) != (1, 1) or m.ceil_mode:
                    raise UnsupportedLayerError(f"{where}: MaxPool2d with dilation or ceil_mode is not supported")
                stride = m.stride if m.stride is not None else m.kernel_size
                cur["pool"] = (m.kernel_size, stride, m.padding)
                cur["pool_first"] = cur["act"] is None
            else:
                if isinstance(m, nn.ELU) and m.alpha != 1.0:
                    raise UnsupportedLayerError(f"{where}: only ELU with alpha=1 is supported")
                if cur["act"] is not None:
                    raise UnsupportedLayerError(f"{where}: one activation per block")
                cur["act"] = _ACT_MODULES[type(m)]
            cur["layers"].append(lname)
        else:
            raise UnsupportedLayerError(
                f"dtp_fast cannot build a feedback block for {where}. Supported layers: {SUPPORTED_LAYERS}.")
    if pending_flatten:
        raise UnsupportedLayerError(f"layer {pending_flatten!r} (Flatten) must be followed by a Linear layer")
    if len(specs) < 2:
        raise ValueError("a DTP network needs at least two Conv2d/Linear layers")
    if names is not None and len(names) != len(specs):
        raise ValueError(f"{len(names)} names given for {len(specs)} blocks")
    if specs[0]["op"].weight.dim() == 2 and len(in_shape) > 1 and not specs[0]["flatten"]:
        raise UnsupportedLayerError("the first layer is Linear but the input is an image: add nn.Flatten() before it")

    blocks, counts, shape = [], {"conv": 0, "fc": 0}, in_shape
    for i, spec in enumerate(specs):
        kind = "conv" if isinstance(spec["op"], nn.Conv2d) else "fc"
        name = names[i] if names is not None else f"{kind}_{counts[kind]}"
        counts[kind] += 1
        op = spec["op"]
        if kind == "fc" and len(shape) > 1 and not spec["flatten"]:
            raise UnsupportedLayerError(
                f"layer {spec['layers'][0]!r} ({op}) receives an image of shape {shape}: add nn.Flatten() before it")
        try:
            b = Block(op, spec["act"] or "identity", spec["pool"], flatten=spec["flatten"],
                      in_shape=shape, feedback=i > 0)
        except ValueError as err:
            raise ValueError(f"block {name!r} (layers {', '.join(spec['layers'])}): {err}") from err
        blocks.append((name, b))
        shape = b.out_shape
    return DTPNet(blocks, in_shape)
