"""Small shared helpers: atomic file writes, devices, timing, versions."""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["positive_int", "atomic_save", "atomic_write_text", "atomic_write_json", "resolve_device", "Stopwatch", "versions"]


def _atomic(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    a crash mid-write never leaves a truncated checkpoint."""
    _atomic(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was requested but CUDA is not available "
                           f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
    return device


class Stopwatch:
    """Accumulates wall time per named phase, synchronising CUDA so GPU work is counted."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.totals: dict[str, float] = {}

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def get(self, name: str) -> float:
        return self.totals.get(name, 0.0)


def versions() -> dict:
    from . import __version__
    out = {"dtp_fast": __version__, "torch": torch.__version__, "python": platform.python_version(),
           "platform": platform.platform()}
    try:
        import numpy
        out["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import triton
        out["triton"] = triton.__version__
    except Exception:  # triton is optional at run time (absent on macOS/Windows)
        out["triton"] = None
    return out


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v
