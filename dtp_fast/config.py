"""The settings of a training run: :class:`TrainConfig`, checked by its ``validate``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .feedback import FeedbackConfig
from .feedback.budget import BUDGETS, AdaptiveBudget
from .utils import is_int, is_real

__all__ = ["ALGOS", "TrainConfig"]

ALGOS = ("ldrl", "bp", "parallel", "dtp", "tp", "drl")


@dataclass
class TrainConfig:
    """Everything that defines a training run (besides the network and the data).

    Per-layer feedback settings (``feedback_iters``, ``feedback_lr``, ``noise``)
    take one value per trainable feedback layer, in forward order, or a single
    value for all of them.
    """
    algo: str = "ldrl"
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    t_max: int | None = None          # cosine period in epochs; None: the number of epochs
    eta_min: float = 1e-5
    beta: float = 0.7
    feedback_iters: int | Sequence[int] = 10
    feedback_lr: float | Sequence[float] = 1e-3
    noise: float | Sequence[float] = 0.1
    feedback_momentum: float = 0.9
    feedback_weight_decay: float = 0.0
    feedback_samples: int = 1
    feedback_budget: str = "paper"    # "paper": every layer's iterations on every batch; "adaptive": see budget_*
    budget_floor: float = AdaptiveBudget.floor            # adaptive: least share of a layer's iterations
    budget_lr_scale: float = AdaptiveBudget.lr_scale      # adaptive: iterations / and feedback lr x this
    budget_warmup: int = AdaptiveBudget.warmup            # adaptive: batches at the full budget first
    feedback_memory: float | None = None   # MiB for precomputed perturbations (fast backends); None: default
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    limit_batches: int | None = None
    augment: bool | None = None       # None: the data set's default
    diagnostics: bool = True          # alignment angles after every epoch
    progress: bool = True
    tensorboard: bool = False         # also log to out/tensorboard (needs the tensorboard package)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every setting's type and range; the error names the setting, the value and what it takes."""
        def bad(name, value, what):
            raise ValueError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")

        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; choose one of {', '.join(ALGOS)}")
        for name in ("epochs", "batch_size", "feedback_samples"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, getattr(self, name), "an integer >= 1")
        for name in ("limit_batches", "t_max"):
            v = getattr(self, name)
            if v is not None and (not is_int(v) or v < 1):
                bad(name, v, "an integer >= 1 or None")
        if not is_int(self.seed):
            bad("seed", self.seed, "an integer")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if not is_real(self.lr) or self.lr <= 0:
            bad("lr", self.lr, "a finite number > 0")
        for name in ("momentum", "feedback_momentum"):
            if not is_real(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                bad(name, getattr(self, name), "a number in [0, 1)")
        for name in ("weight_decay", "feedback_weight_decay", "eta_min", "beta"):
            if not is_real(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, getattr(self, name), "a finite number >= 0")
        if self.feedback_memory is not None and (not is_real(self.feedback_memory) or self.feedback_memory <= 0):
            bad("feedback_memory", self.feedback_memory, "a number of MiB > 0 or None")
        for name, check, what in (("feedback_iters", is_int, "an integer"), ("feedback_lr", is_real, "a number"),
                                  ("noise", is_real, "a number")):
            v = getattr(self, name)
            values = list(v) if isinstance(v, (list, tuple)) else [v]
            if isinstance(v, str) or not values or not all(check(x) for x in values):
                bad(name, v, f"{what} or a list of them, one per feedback layer")

        if self.feedback_budget not in BUDGETS:
            raise ValueError(f"feedback_budget must be one of {', '.join(map(repr, BUDGETS))}, got "
                             f"{self.feedback_budget!r}")
        if self.feedback_budget == "adaptive" and self.algo != "ldrl":
            raise ValueError(f"feedback_budget 'adaptive' applies to algo 'ldrl' (it paces the L-DRL feedback "
                             f"training), not {self.algo!r}; use "
                             f"feedback_budget 'paper'")
        try:
            self.budget_policy()
        except ValueError as err:
            raise ValueError(str(err).replace("budget ", "budget_", 1)) from None

    def budget_policy(self) -> AdaptiveBudget | None:
        """The feedback budget policy of a run (None: the paper's fixed budget)."""
        knobs = AdaptiveBudget(floor=self.budget_floor, lr_scale=self.budget_lr_scale, warmup=self.budget_warmup)
        return knobs if self.feedback_budget == "adaptive" else None

    def feedback_config(self) -> FeedbackConfig:
        return FeedbackConfig(iterations=self.feedback_iters, lr=self.feedback_lr, noise=self.noise,
                              momentum=self.feedback_momentum, weight_decay=self.feedback_weight_decay,
                              samples=self.feedback_samples)
