"""DTP behind the training loop people already have: :class:`DTP` wraps a network so that the
user's own ``loss.backward()`` fills the forward weights' ``.grad`` with the DTP update, for any
``torch.optim`` optimiser and scheduler."""
from __future__ import annotations

import torch
import torch.nn as nn

from .blocks import DTPNet, from_sequential
from .config import TrainConfig
from .dtp import local_losses
from .feedback import FeedbackState, resolve_backend, train_feedback
from .noise import CounterNoise

__all__ = ["DTP"]

# the TrainConfig settings the wrapper uses; the others (lr, epochs, ...) belong to the user's own loop
_SETTINGS = ("beta", "feedback_iters", "feedback_lr", "noise", "feedback_momentum", "feedback_weight_decay",
             "feedback_samples", "feedback_memory", "backend", "feedback_budget", "budget_floor", "budget_lr_scale",
             "budget_warmup", "seed")


class _Pending:
    """One training forward waiting for its backward."""

    def __init__(self, acts, switches):
        self.acts, self.switches, self.done = acts, switches, False


class _DTPStep(torch.autograd.Function):
    """The logits (detached) as a node whose backward runs the DTP step. Its only differentiable input is
    a scalar leaf of its own (the ``anchor``), so the user's backward reaches this node and nothing of the
    forward graph, which the DTP step differentiates itself (layer-local losses)."""

    @staticmethod
    def forward(ctx, anchor, logits, owner, pending):
        ctx.owner, ctx.pending = owner, pending
        return logits.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.owner._dtp_step(ctx.pending, grad)
        return None, None, None, None


class DTP(nn.Module):
    """Train ``model`` with DTP and L-DRL feedback training from an ordinary PyTorch loop.

    ``model``: an ``nn.Sequential`` of supported layers (read by :func:`~dtp_fast.from_sequential`,
    which needs ``in_shape``, the shape of one input without the batch dimension) or a
    :class:`~dtp_fast.DTPNet`. The forward layers are the model's own modules; feedback layers
    are added. Settings: those of :class:`~dtp_fast.TrainConfig` that DTP itself uses (``beta``,
    ``feedback_iters``, ``feedback_lr``, ``noise``, ``feedback_momentum``,
    ``feedback_weight_decay``, ``feedback_samples``, ``feedback_memory``, ``backend``,
    ``feedback_budget`` and its ``budget_*`` knobs, ``seed`` for the noise).

    In training mode with gradients enabled, ``dtp(x)`` returns the logits, and the backward of a
    loss computed from them (``loss.backward()``) runs one DTP step: the feedback phase on this
    batch, then the targets, from the output target ``logits - beta * B * dloss/dlogits`` (``B``
    the batch size, so that ``F.cross_entropy``'s mean gives the paper's summed cross-entropy)
    down through the feedback layers, and the layer-local losses' gradients, added to the forward
    weights' ``.grad``. ``dtp.parameters()`` are the forward weights only: give them to any
    optimiser. In ``eval()`` mode or under ``torch.no_grad()`` the forward is the plain network.
    The feedback optimiser's state, the step count (part of the noise key) and the budget
    policy's state are in ``state_dict()``.

    One backward per training forward; data-parallel runs are not supported by the wrapper (use
    :class:`~dtp_fast.Trainer` or ``dtp-fast train`` under ``torchrun``).
    """

    def __init__(self, model: nn.Module, in_shape=None, **settings):
        super().__init__()
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise TypeError(f"DTP does not take {', '.join(unknown)}: the forward optimiser, its schedule and the "
                            f"data are your loop's (torch.optim, ...); DTP takes {', '.join(_SETTINGS)}")
        if isinstance(model, DTPNet):
            net = model
        else:
            if in_shape is None:
                raise TypeError("DTP needs in_shape, the shape of one input without the batch dimension (e.g. "
                                "(3, 32, 32)), to build the feedback layers of an nn.Sequential")
            net = from_sequential(model, in_shape)
        self.net = net
        self.config = TrainConfig(algo="ldrl", **settings)
        self.fb_hparams = self.config.feedback_config().resolve(net.feedback_names)
        self.budget = self.config.budget_policy()
        self.fb_state = FeedbackState()
        self.noise = CounterNoise(self.config.seed)
        self.memory_budget = ("default" if self.config.feedback_memory is None
                              else int(self.config.feedback_memory * 2**20))
        self.step = 0
        self.last_step: dict = {}     # the last DTP step: {"loss", "feedback": {layer: {"iterations", "loss"}}}
        self._pending: _Pending | None = None

    @classmethod
    def from_config(cls, model: nn.Module, config: TrainConfig, in_shape=None) -> "DTP":
        """The wrapper with the DTP settings of a :class:`~dtp_fast.TrainConfig` (the others are the loop's)."""
        return cls(model, in_shape, **{k: getattr(config, k) for k in _SETTINGS})

    # ------------------------------------------------------------------ parameters
    def parameters(self, recurse: bool = True):
        """The forward weights (what the user's optimiser trains); the feedback weights are DTP's."""
        return self.net.forward_parameters()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        forward = {id(p) for p in self.net.forward_parameters()}
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            if id(p) in forward:
                yield name, p

    def feedback_parameters(self):
        """The feedback weights, trained by the feedback phase inside ``backward``."""
        return self.net.feedback_parameters()

    def get_extra_state(self) -> dict:
        return {"step": self.step, "feedback_state": self.fb_state.state_dict(),
                "budget": self.budget.state_dict() if self.budget is not None else None}

    def set_extra_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.fb_state.load_state_dict(state["feedback_state"])
        if self.budget is not None and state.get("budget") is not None:
            self.budget.load_state_dict(state["budget"])

    # ------------------------------------------------------------------ passes
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.net(x)
        if self._pending is not None and not self._pending.done:
            raise RuntimeError(
                "DTP: the output of the previous training forward never got a gradient, so no DTP step ran for "
                "it. Compute the loss from the logits dtp(x) returns and call loss.backward() once per forward; "
                "run forwards that should not train under torch.no_grad() or after dtp.eval()")
        if any(p.grad is not None for p in self.net.feedback_parameters()):
            raise RuntimeError(
                "DTP: the feedback weights have a .grad, so something computed gradients for them; they are trained "
                "by DTP's feedback phase, not by an optimiser: build the optimiser from dtp.parameters() (the "
                "forward weights) and set the feedback weights' .grad to None")
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise RuntimeError("DTP (the module wrapper) does not support data-parallel runs: use dtp_fast.Trainer "
                               "or `dtp-fast train` under torchrun, which keep the global-batch semantics")
        acts, switches = self.net.activations(x, detach_inputs=True)
        self._pending = _Pending(acts, switches)
        anchor = torch.zeros((), device=x.device, requires_grad=True)
        return _DTPStep.apply(anchor, acts[-1].detach(), self, self._pending)

    def _dtp_step(self, pending: _Pending, grad: torch.Tensor) -> None:
        from .trainer import NonFiniteLossError

        if pending.done:
            raise RuntimeError("DTP: backward ran twice on one forward; a DTP step trains the feedback weights, so "
                               "each batch needs its own forward: call dtp(x) again before the next backward")
        pending.done = True
        acts, switches = pending.acts, pending.switches
        with torch.no_grad():
            hparams = self.fb_hparams if self.budget is None else self.budget.plan(self.net, self.fb_hparams)
            backend = resolve_backend(self.config.backend, acts[0].device)
            stats = train_feedback(self.net, acts, switches, hparams, self.fb_state, self.noise, self.step,
                                   backend=backend, report="last", memory_budget=self.memory_budget)
            for name, s in stats.items():
                if s["loss"] is not None and not torch.isfinite(torch.as_tensor(s["loss"])):
                    raise NonFiniteLossError(f"the feedback loss of layer {name!r} is {s['loss']} at step "
                                             f"{self.step}: lower feedback_lr or noise")
        top = acts[-1].detach() - self.config.beta * len(grad) * grad
        with torch.enable_grad():
            loss = local_losses(self.net, acts, switches, top)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"the DTP loss is {float(loss)} at step {self.step}: lower the learning "
                                         f"rates (your optimiser's, feedback_lr) or beta")
            torch.autograd.backward(loss, inputs=[p for p in self.net.forward_parameters() if p.requires_grad])
        self.step += 1
        self.last_step = {"loss": float(loss), "feedback": stats}
