"""The feedback engine: trains every feedback layer G_1 .. G_{N-1} for one batch.

One entry point, :func:`train_feedback`, and a registry of backends that
implement it. All backends share the hyperparameters (:class:`FeedbackConfig`),
the optimiser state (:class:`FeedbackState`, plain momentum buffers, so a run
can switch backends or resume) and the noise source (:mod:`dtp_fast.noise`).
"""
from __future__ import annotations

from .engine import (
    BackendUnavailableError,
    FeedbackConfig,
    FeedbackState,
    LayerHParams,
    available_backends,
    get_backend,
    momentum_sgd_,
    register_backend,
    resolve_backend,
    train_feedback,
)
from .reference import ReferenceBackend, ldrl_loss  # registers the backend
from .analytic import DEFAULT_MEMORY_BUDGET, AnalyticBackend  # registers the backend
from .fused import FusedCPUBackend  # registers the backend
from .triton import TritonBackend  # registers the backend (imports triton only when used)
from .cuda import CudaBackend  # registers the backend

__all__ = [
    "AnalyticBackend",
    "DEFAULT_MEMORY_BUDGET",
    "FusedCPUBackend",
    "TritonBackend",
    "BackendUnavailableError",
    "CudaBackend",
    "FeedbackConfig",
    "FeedbackState",
    "LayerHParams",
    "ReferenceBackend",
    "available_backends",
    "get_backend",
    "ldrl_loss",
    "momentum_sgd_",
    "register_backend",
    "resolve_backend",
    "train_feedback",
]
