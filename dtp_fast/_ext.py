"""Lazy, safe loading of the compiled extension ``dtp_fast._C``.

Nothing here runs at ``import dtp_fast``: the extension is imported the first
time :func:`available` (or :func:`load_error` / :func:`build_info`) is called,
and the outcome is cached. A missing or broken extension never raises; it
makes :func:`available` return False and :func:`load_error` say why and how to
fix it. Callers then use the pure-PyTorch paths.

Environment:
    DTP_FAST_DISABLE_EXT=1   treat the extension as unavailable (to test the
                             pure-PyTorch paths); read on every call.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
from typing import Any

import torch

__all__ = ["available", "load_error", "build_info"]

_REINSTALL = "reinstall dtp_fast against the installed torch: `pip install --no-build-isolation -e .`"
_NOT_BUILT = "dtp_fast._C is not built: run `pip install --no-build-isolation -e .`"

_lock = threading.Lock()
_state: tuple[bool, str | None, dict | None] | None = None  # (ok, error, info)


def _disabled() -> bool:
    return os.environ.get("DTP_FAST_DISABLE_EXT", "").strip().lower() in ("1", "true", "yes", "on")


def _major_minor(version: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", str(version))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _compiled_build_info() -> dict:
    """The build description the compiled module reports (JSON, parsed)."""
    return json.loads(torch.ops.dtp_fast.build_info())


def _version_problem(info: dict, runtime_torch: str, runtime_cuda: str | None) -> str | None:
    """Why a module built as ``info`` cannot run under this torch, or None."""
    built = (info.get("torch_major"), info.get("torch_minor"))
    runtime = _major_minor(runtime_torch)
    if runtime is not None and built != runtime:
        return (
            "dtp_fast._C was compiled against torch %s.%s but torch %s is installed "
            "(torch major.minor versions differ); %s"
            % (built[0], built[1], runtime_torch, _REINSTALL)
        )
    built_cuda = info.get("cuda_version") if info.get("with_cuda") else None
    if built_cuda is not None and runtime_cuda is not None:
        if _major_minor(built_cuda)[:1] != _major_minor(runtime_cuda)[:1]:
            return (
                "dtp_fast._C was compiled with CUDA %s but torch uses CUDA %s "
                "(CUDA major versions differ); %s" % (built_cuda, runtime_cuda, _REINSTALL)
            )
    return None


def _load() -> tuple[bool, str | None, dict | None]:
    try:
        importlib.import_module("dtp_fast._C")
    except ModuleNotFoundError as exc:
        if exc.name in ("dtp_fast._C", "dtp_fast"):
            return False, _NOT_BUILT, None
        return False, "dtp_fast._C failed to import (%s); %s" % (exc, _REINSTALL), None
    except (ImportError, OSError) as exc:
        msg = str(exc)
        if "undefined symbol" in msg:
            return False, (
                "dtp_fast._C does not match the installed torch (%s): it was built "
                "against another torch version; %s" % (msg, _REINSTALL)
            ), None
        return False, "dtp_fast._C failed to load (%s); %s" % (msg, _REINSTALL), None

    try:
        info = _compiled_build_info()
    except Exception as exc:  # a module without build_info: stale or foreign build
        return False, "dtp_fast._C loaded but build_info() failed (%s); %s" % (exc, _REINSTALL), None

    problem = _version_problem(info, torch.__version__, torch.version.cuda)
    if problem is not None:
        return False, problem, info

    from . import ops
    from .ops._common import OPS

    missing = [op for op in OPS if "dtp_fast::" + op not in info.get("ops", ())]
    if missing:
        return False, "dtp_fast._C lacks the ops %s (a stale build); %s" % (", ".join(missing), _REINSTALL), info

    # Fake (meta) kernels and autograd formulas live in Python (dtp_fast.ops).
    ops._register_python_impls()
    return True, None, info


def _get_state() -> tuple[bool, str | None, dict | None]:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state


def _reset_cache() -> None:
    """Forget the cached load result (tests; after rebuilding in-process)."""
    global _state
    with _lock:
        _state = None


def available() -> bool:
    """True when the compiled ops can be used (built, loaded, matching torch)."""
    if _disabled():
        return False
    return _get_state()[0]


def load_error() -> str | None:
    """Why the compiled ops cannot be used, with the fix; None when they can."""
    if _disabled():
        return "dtp_fast._C is disabled by the environment variable DTP_FAST_DISABLE_EXT=1"
    return _get_state()[1]


def build_info() -> dict[str, Any] | None:
    """How ``dtp_fast._C`` was compiled (torch/CUDA versions, OpenMP, compiler,
    op names), or None when it could not be loaded or is disabled."""
    if _disabled():
        return None
    info = _get_state()[2]
    return dict(info) if info is not None else None
