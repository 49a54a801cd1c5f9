"""The feedback engine: trains every feedback layer G_1 .. G_{N-1} for one batch.

One entry point, :func:`train_feedback`, and a registry of backends that
implement it (:mod:`.backends`, one module per backend). All backends share the
hyperparameters (:class:`FeedbackConfig`), the optimiser state
(:class:`FeedbackState`, plain momentum buffers, so a run can switch backends or
resume) and the noise source (:mod:`dtp_fast.noise`). The precomputing
backends share the memory planner (:mod:`.memory`) and the per-layer state
their hooks see (:class:`LayerState`, :mod:`.layer`).
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
from . import gpu  # noqa: F401  (dtp_fast.feedback.gpu: the GPU policy)
from .layer import LayerState
from .memory import (DEFAULT_MEMORY_BUDGET, auto_memory_budget, chunk_memory_budget, minimum_memory_budget,
                     plan_chunk, resolve_budget)
from .backends import (AnalyticBackend, CppBackend, CudaBackend, FusedCPUBackend, ReferenceBackend, TorchBackend,
                       TritonBackend, ldrl_loss)  # importing them registers them

__all__ = [
    "AnalyticBackend",
    "BackendUnavailableError",
    "CppBackend",
    "CudaBackend",
    "DEFAULT_MEMORY_BUDGET",
    "FeedbackConfig",
    "FeedbackState",
    "FusedCPUBackend",
    "LayerHParams",
    "LayerState",
    "ReferenceBackend",
    "TorchBackend",
    "TritonBackend",
    "auto_memory_budget",
    "available_backends",
    "get_backend",
    "ldrl_loss",
    "minimum_memory_budget",
    "momentum_sgd_",
    "plan_chunk",
    "register_backend",
    "resolve_backend",
    "resolve_budget",
    "chunk_memory_budget",
    "train_feedback",
]
