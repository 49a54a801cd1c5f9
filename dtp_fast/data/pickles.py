"""Safe reading of pickled batch files: CIFAR-10's ``cifar-10-batches-py`` and the older Imagenet32 release.

Both are pickles of a dict with ``data`` and ``labels`` entries; only the
classes such a file needs (dicts, lists, bytes, numpy arrays) are unpickled.
"""
from __future__ import annotations

import io
import pickle

import numpy as np

from .registry import DatasetError


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch files (dicts, lists, bytes, numpy arrays) and nothing else."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"), ("codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        # numpy 1.x pickles name numpy.core, numpy 2.x numpy._core: check one spelling, import the installed one
        canon = "numpy._core" + module[len("numpy.core"):] if module.startswith("numpy.core") else module
        if (canon, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch file")
        if canon.startswith("numpy._core") and not hasattr(np, "_core"):
            canon = "numpy.core" + canon[len("numpy._core"):]
        return super().find_class(canon, name)


def unpickle(blob: bytes, label: str):
    """The object pickled in ``blob`` (read from ``label``, named in errors)."""
    try:
        return _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:
        raise DatasetError(f"cannot read {label}: truncated or corrupt pickle "
                           f"({type(err).__name__}: {err})") from err


def get(d: dict, key: str):
    """Look ``key`` up in a dict unpickled with encoding='bytes' (keys are bytes) or not."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def batch_entries(d, label: str, kind: str) -> tuple:
    """The ``data`` and ``labels`` entries of an unpickled batch ``d`` (``kind``, e.g. "a CIFAR-10 batch",
    names what it should be in errors)."""
    if not isinstance(d, dict):
        raise DatasetError(f"{label} is not {kind}: it holds a {type(d).__name__}, not a dict")
    data, labels = get(d, "data"), get(d, "labels")
    if data is None or labels is None:
        raise DatasetError(f"{label} is not {kind}: it has no 'data'/'labels' entries "
                           f"(keys: {', '.join(map(repr, d))})")
    return data, labels
