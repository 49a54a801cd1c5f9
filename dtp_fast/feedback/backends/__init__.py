"""The feedback backends, one module each, named after the backend.

Importing this package registers them all (``triton`` imports triton only
when it is used). ``reference`` is the oracle; ``torch`` is the analytic
engine and the base class of the fast ones (``cpp``, ``triton``, ``cuda``),
which override its hooks (README "Write a backend").
"""
from .reference import ReferenceBackend, ldrl_loss
from .torch import AnalyticBackend, TorchBackend
from .cpp import CppBackend, FusedCPUBackend
from .triton import TritonBackend
from .cuda import CudaBackend

__all__ = ["AnalyticBackend", "CppBackend", "CudaBackend", "FusedCPUBackend", "ReferenceBackend", "TorchBackend",
           "TritonBackend", "ldrl_loss"]
