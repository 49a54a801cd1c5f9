"""Hyperparameters, optimiser state, the backend registry and the entry point."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..noise import NoiseSource
from ..utils import is_int, is_real
from ..ops.sgd import momentum_sgd_ref as momentum_sgd_

__all__ = ["BackendUnavailableError", "FeedbackConfig", "FeedbackState", "LayerHParams", "register_backend", "get_backend",
           "available_backends", "resolve_backend", "train_feedback", "momentum_sgd_"]


class BackendUnavailableError(RuntimeError):
    """An explicitly requested feedback backend cannot run here (the message says why)."""


@dataclass(frozen=True)
class LayerHParams:
    """Feedback-training settings of one layer."""
    iterations: int
    lr: float
    noise: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    samples: int = 1


def _per_layer(name: str, value, layers: Sequence[str]) -> list:
    if isinstance(value, (int, float)):
        return [value] * len(layers)
    value = list(value)
    if len(value) == 1:
        return value * len(layers)
    if len(value) != len(layers):
        raise ValueError(
            f"feedback {name} has {len(value)} value(s) {value} but the network has {len(layers)} trainable "
            f"feedback layer(s): {', '.join(layers)}. Give one value per layer, in this order, or a single value "
            f"for all.")
    return value


@dataclass
class FeedbackConfig:
    """L-DRL feedback-training hyperparameters.

    ``iterations``, ``lr`` and ``noise`` take one value for every trainable
    feedback layer (in forward order, G_1 .. G_{N-1}) or a single value for all.
    ``samples`` is the number of noise samples averaged per iteration.
    """
    iterations: int | Sequence[int] = 10
    lr: float | Sequence[float] = 1e-3
    noise: float | Sequence[float] = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    samples: int = 1

    def __post_init__(self):
        """Types (and finiteness) at construction; the per-layer counts and ranges are checked by
        :meth:`resolve`, whose messages name the layer."""
        for name, check, what in (("iterations", is_int, "an integer"), ("lr", is_real, "a finite number"),
                                  ("noise", is_real, "a finite number")):
            value = getattr(self, name)
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if isinstance(value, str) or not values or not all(check(v) for v in values):
                raise ValueError(f"feedback {name} must be {what} or a list of them (one per feedback layer), "
                                 f"got {value!r}")
        if not is_real(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"feedback momentum must be in [0, 1), got {self.momentum!r}")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"feedback weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not is_int(self.samples) or self.samples < 1:
            raise ValueError(f"feedback samples must be an integer >= 1, got {self.samples!r}")

    def resolve(self, layers: Sequence[str]) -> list[LayerHParams]:
        """Per-layer settings for the named trainable layers, validated."""
        iters = _per_layer("iterations", self.iterations, layers)
        lrs = _per_layer("lr", self.lr, layers)
        noise = _per_layer("noise", self.noise, layers)
        if self.samples < 1:
            raise ValueError(f"feedback samples must be >= 1, got {self.samples}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"feedback momentum must be in [0, 1), got {self.momentum}")
        out = []
        for name, k, lr, sigma in zip(layers, iters, lrs, noise):
            if int(k) != k or k < 0:
                raise ValueError(f"feedback iterations of layer {name!r} must be a non-negative integer, got {k}")
            if lr < 0:
                raise ValueError(f"feedback lr of layer {name!r} must be >= 0, got {lr}")
            if sigma <= 0:
                raise ValueError(f"feedback noise of layer {name!r} must be > 0, got {sigma}")
            out.append(LayerHParams(int(k), float(lr), float(sigma), float(self.momentum),
                                    float(self.weight_decay), int(self.samples)))
        return out


@dataclass
class FeedbackState:
    """Momentum buffers of the feedback optimiser, per layer and parameter.

    Plain tensors keyed by ``(layer name, "weight" | "bias")``: every backend
    reads and writes the same state, and it goes into checkpoints as is.
    """
    buffers: dict = field(default_factory=dict)

    def buffer(self, layer: str, param: str, like: torch.Tensor) -> torch.Tensor:
        key = f"{layer}.{param}"
        buf = self.buffers.get(key)
        if buf is None or buf.shape != like.shape:
            buf = torch.zeros_like(like)
            self.buffers[key] = buf
        elif buf.device != like.device or buf.dtype != like.dtype:
            buf = buf.to(like)
            self.buffers[key] = buf
        return buf

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.buffers.items()}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {k: v.clone() for k, v in state.items()}


# ---------------------------------------------------------------------------- registry
_BACKENDS: dict[str, object] = {}
# preference order for backend="auto", fastest first
_AUTO_ORDER: list[str] = []


def register_backend(backend, priority: int = 0) -> None:
    """Register a feedback backend under ``backend.name``; ``backend="auto"`` picks the usable one of
    highest priority (built in: cuda 15 < cpp 20 < triton 30 on their devices; torch 10, reference 0).

    A backend is an object with ``name``, ``availability(device) -> (usable, reason)`` and
    ``train(net, acts, switches, hparams, state, noise, step, report, *, memory_budget, sample_offset,
    reduce) -> stats`` with the contract of :func:`train_feedback` (``hparams``: resolved
    :class:`LayerHParams`). The usual way to write one is to subclass
    :class:`~dtp_fast.feedback.TorchBackend` and override its hooks (README "Write a backend")."""
    _BACKENDS[backend.name] = (priority, backend)
    _AUTO_ORDER[:] = sorted(_BACKENDS, key=lambda n: -_BACKENDS[n][0])


def available_backends(device="cpu") -> dict[str, tuple[bool, str]]:
    """``{name: (usable, reason)}`` for every registered backend on ``device``."""
    device = torch.device(device)
    return {name: _BACKENDS[name][1].availability(device) for name in _AUTO_ORDER}


def resolve_backend(name: str, device="cpu") -> str:
    """The backend that ``name`` means on ``device`` ("auto" picks the fastest usable one)."""
    device = torch.device(device)
    if name == "auto":
        for cand in _AUTO_ORDER:
            if _BACKENDS[cand][1].availability(device)[0]:
                return cand
        raise BackendUnavailableError(f"no feedback backend is usable on {device}")
    if name not in _BACKENDS:
        raise ValueError(f"unknown feedback backend {name!r}; choose one of: auto, {', '.join(_AUTO_ORDER)}")
    ok, reason = _BACKENDS[name][1].availability(device)
    if not ok:
        raise BackendUnavailableError(f"feedback backend {name!r} cannot run on {device}: {reason}")
    return name


def get_backend(name: str, device="cpu"):
    return _BACKENDS[resolve_backend(name, device)][1]


def train_feedback(net, acts, switches, config: FeedbackConfig | Sequence[LayerHParams], state: FeedbackState,
                   noise: NoiseSource, step: int, *, backend: str = "reference", report: str = "last",
                   memory_budget: int | None | str = "default", sample_offset: int = 0,
                   reduce=None) -> dict:
    """Train all feedback layers of ``net`` on one batch (the feedback phase).

    Args:
        net: a :class:`dtp_fast.DTPNet`; its forward weights are not touched.
        acts, switches: the block outputs ``s_0 .. s_{N-1}`` and their pooling
            switches, from ``net.activations(x)`` (detached).
        config: a :class:`FeedbackConfig` or its resolved per-layer settings.
        state: the momentum buffers, updated in place.
        noise: where the Gaussian noise comes from.
        step: the training step, part of the noise key.
        backend: a registered backend name or ``"auto"``.
        report: ``"last"`` (loss of each layer's last iteration), ``"all"``
            (every iteration's loss) or ``"none"``.
        memory_budget: bytes the precomputed perturbations of all layers may
            take at once (backends that precompute; ``None``: no limit,
            ``"default"``: the backend's default).
        sample_offset: the index of the batch's first sample in the global batch
            (data-parallel runs: the noise of a sample depends on this index).
        reduce: data-parallel runs: a callable that averages a list of tensors in
            place across processes. Called once per feedback iteration with the
            gradients (and reported losses) of the layers stepping then, in the
            same order on every process. It may return a function that completes
            the averaging (an all-reduce in flight): the backend calls it before
            using the tensors, and may compute meanwhile (the ``torch`` engine
            precomputes the next chunks of perturbations).

    Returns ``{layer name: {"iterations": int, "loss": float | list | None}}``.
    """
    if report not in ("last", "all", "none"):
        raise ValueError(f"report must be 'last', 'all' or 'none', got {report!r}")
    hparams = config.resolve(net.feedback_names) if isinstance(config, FeedbackConfig) else list(config)
    if len(acts) != len(net.blocks) or len(switches) != len(net.blocks):
        raise ValueError(f"expected {len(net.blocks)} activations and switches, got {len(acts)} and {len(switches)}")
    impl = get_backend(backend, acts[0].device)
    return impl.train(net, [a.detach() for a in acts], switches, hparams, state, noise, step, report,
                      memory_budget=memory_budget, sample_offset=sample_offset, reduce=reduce)
