"""The :class:`Dataset` type, the registry of data set loaders and :func:`load_dataset`.

Also the few helpers every loader uses to find its files: :func:`data_path`
(the ``--data`` path or ``$DTP_FAST_DATA``) and :func:`hidden` (names to skip
when listing folders and archives).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

DATA_ENV = "DTP_FAST_DATA"            # fallback for the data path (the CLI's --data)
SPLITS = ("train", "test")


class DatasetError(ValueError):
    """A data source exists but cannot be used: corrupt, truncated or inconsistent."""


def canonical_device(device) -> torch.device:
    """``device`` as a :class:`torch.device`, with the current CUDA device's index filled in."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


# ====================================================================== Dataset
@dataclass(eq=False, repr=False)
class Dataset:
    """A whole data set in memory (or memory-mapped from a cache file: ``memory_mapped``).

    ``train_x``/``test_x`` are uint8 tensors (N, C, H, W); ``train_y``/``test_y``
    int64 tensors (N,).  A pixel ``v`` is normalised to ``(v / scale - mean[c]) / std[c]``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    source: str | None = None   # where it was read from (for logging)
    memory_mapped: bool = False  # the image tensors are memory maps of cache files (see imagenet32)
    _device_cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.mean = tuple(float(m) for m in self.mean)
        self.std = tuple(float(s) for s in self.std)
        self.scale = float(self.scale)
        self.validate()

    # ------------------------------------------------------------------ shape
    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        if split == "train":
            return self.train_x, self.train_y
        if split == "test":
            return self.test_x, self.test_y
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")

    def on_device(self, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's uint8 images and labels on ``device``, moved there once and kept."""
        device = canonical_device(device)
        key = (split, str(device))
        if key not in self._device_cache:
            x, y = self.split(split)
            self._device_cache[key] = (x.to(device), y.to(device))
        return self._device_cache[key]

    def release_device_copies(self) -> None:
        """Drop the copies made by :meth:`on_device` (frees device memory)."""
        self._device_cache.clear()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`DatasetError` if the tensors are not a consistent data set."""
        where = f"data set {self.name!r}" + (f" (from {self.source})" if self.source else "")
        for split in SPLITS:
            x, y = self.split(split)
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
                raise DatasetError(f"{where}: {split}_x must be a uint8 tensor (N, C, H, W), got "
                                   f"{getattr(x, 'dtype', type(x))} of shape {tuple(getattr(x, 'shape', ()))}")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise DatasetError(f"{where}: {split}_y must be an int64 tensor (N,), got "
                                   f"{getattr(y, 'dtype', type(y))} of shape {tuple(getattr(y, 'shape', ()))}")
            if len(x) != len(y):
                raise DatasetError(f"{where}: {split} has {len(x)} images but {len(y)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DatasetError(f"{where}: {split} labels range over [{int(y.min())}, {int(y.max())}] "
                                   f"but there are {self.num_classes} classes")
        if tuple(self.test_x.shape[1:]) != tuple(self.train_x.shape[1:]):
            raise DatasetError(f"{where}: train images are {tuple(self.train_x.shape[1:])} but test images "
                               f"are {tuple(self.test_x.shape[1:])}")
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(f"{where}: mean/std need one value per channel ({channels}), got "
                               f"{len(self.mean)}/{len(self.std)}")
        if not all(s > 0 for s in self.std) or not self.scale > 0:
            raise DatasetError(f"{where}: scale and std must be positive")
        if self.num_classes == 0:
            raise DatasetError(f"{where}: no classes")

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
                f"shape={self.in_shape}, classes={self.num_classes}, augment={self.augment})")


def describe(dataset: Dataset) -> dict:
    """A small JSON-able summary of a data set, for logs."""
    return {
        "name": dataset.name,
        "train_size": int(len(dataset.train_y)),
        "test_size": int(len(dataset.test_y)),
        "shape": list(dataset.in_shape),
        "num_classes": dataset.num_classes,
        "classes": list(dataset.classes),
        "scale": dataset.scale,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "augment": bool(dataset.augment),
        "source": dataset.source,
    }


# ====================================================================== registry
_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str, loader: Callable[..., Dataset] | None = None):
    """Register ``loader(path: Path | None, *, cache_dir) -> Dataset`` under ``name``.

    Usable as a decorator (``@register_dataset("name")``) or a call.
    """
    def deco(fn):
        _REGISTRY[name.lower()] = fn
        return fn
    return deco(loader) if loader is not None else deco


def available_datasets() -> list[str]:
    return sorted(_REGISTRY)


def load_dataset(name: str, path: str | os.PathLike | None = None, *, cache_dir=None) -> Dataset:
    """Load the data set ``name`` (see :func:`available_datasets`).

    ``path`` is where its files live (not needed for ``"digits"``); when it is
    None the environment variable ``DTP_FAST_DATA`` is used.  ``cache_dir`` is
    where decoded arrays are cached (default ``$DTP_FAST_CACHE`` or
    ``~/.cache/dtp_fast``); ``False`` turns the cache off.
    """
    key = str(name).lower().strip()
    if key not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(available_datasets())}")
    return _REGISTRY[key](Path(path).expanduser() if path is not None else None, cache_dir=cache_dir)


# ====================================================================== finding files
def data_path(path: Path | None, name: str, expected: str) -> Path:
    """``path``, else ``$DTP_FAST_DATA``; else a FileNotFoundError that ends with ``expected``
    (the layouts the loader ``name`` accepts)."""
    if path is not None:
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    raise FileNotFoundError(f"{name}: no data path given. Pass --data PATH on the command line (path=... in "
                            f"Python) or set the environment variable {DATA_ENV}. {expected}")


def hidden(name: str) -> bool:
    """Whether a file or folder name is skipped when looking for data (dot files, macOS metadata)."""
    return name.startswith(".") or name == "__MACOSX"
