"""The data layer: whole data sets held in memory, batched on the training device.

* :class:`Dataset` holds a data set as uint8 image tensors (N, C, H, W) plus
  int64 labels, with what is needed to normalise it (``scale``, ``mean``,
  ``std``) and whether the paper's augmentation applies by default.
* :func:`load_dataset` reads a data set by name (``"digits"``, ``"cifar10"``,
  ``"imagenet32"``; more can be added with :func:`register_dataset`).  CIFAR-10
  is read from the pickled ``cifar-10-batches-py`` folder, an ImageFolder tree
  (``ROOT/train/<class>/*.jpg``, ``ROOT/test/<class>/...``) or a tar archive of
  either.  Decoded arrays are cached as an uncompressed ``.npz``.  ImageNet
  32x32 is read from its ``train_data_batch_1..10.npz`` + ``val_data.npz``
  files and converted once, batch by batch, into one raw ``.npy`` per split
  that is memory-mapped (the 3.9 GB of images are never all in memory).
* :class:`Loader` yields normalised float batches on the device.  The shuffle
  order and the augmentation of an epoch depend only on ``(seed, epoch)``
  (drawn on the CPU), so a resumed run sees exactly the batches an
  uninterrupted one would, on any device.  Small splits are moved to the
  device once; large (or memory-mapped) ones are gathered batch by batch on
  the CPU, one batch ahead in a background thread, and copied over.
* :func:`augment_batch` is the paper's augmentation (random horizontal flip,
  then a random crop of the original size from the image padded by 4 pixels
  with edge replication), batched on the device.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing
import os
import pickle
import shutil
import struct
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

__all__ = [
    "DATA_ENV", "CACHE_ENV", "DatasetError", "Dataset", "load_dataset", "register_dataset",
    "available_datasets", "default_cache_dir", "Loader", "augment_batch", "draw_augmentation",
    "random_augment", "epoch_seed", "describe", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
    "IMAGENET_MEAN", "IMAGENET_STD",
]

DATA_ENV = "DTP_FAST_DATA"            # fallback for the data path (the CLI's --data)
CACHE_ENV = "DTP_FAST_CACHE"          # where decoded arrays are cached
WORKERS_ENV = "DTP_FAST_DECODE_WORKERS"  # processes used to decode images (0/1: none)
CACHE_VERSION = 1

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_SPLITS = ("train", "test")
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_PICKLE_FILES = _CIFAR10_TRAIN_BATCHES + ("test_batch", "batches.meta")

_LAYOUTS = (
    "(a) the pickled 'cifar-10-batches-py' folder (data_batch_1..5, test_batch, batches.meta) or a folder "
    "that contains it; (b) an ImageFolder tree ROOT/train/<class>/*.{jpg,jpeg,png} + ROOT/test/<class>/... "
    "or a folder that contains exactly one such ROOT; (c) a .tar.gz/.tgz/.tar archive of (a) or (b), "
    "or a folder that contains one")

# images per decoding task; the process pool starts once one full chunk is queued
_DECODE_CHUNK = 2048


class DatasetError(ValueError):
    """A data source exists but cannot be used: corrupt, truncated or inconsistent."""


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
        device = _canonical_device(device)
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
        for split in _SPLITS:
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


def _data_path(path: Path | None, name: str) -> Path:
    if path is not None:
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    raise FileNotFoundError(f"{name}: no data path given. Pass --data PATH on the command line (path=... in "
                            f"Python) or set the environment variable {DATA_ENV}. Accepted layouts: {_LAYOUTS}")


# ====================================================================== digits
@register_dataset("digits")
def _load_digits(path: Path | None = None, *, cache_dir=None) -> Dataset:
    """scikit-learn's embedded 8x8 handwritten digits: 1437 train / 360 test (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images).astype(np.uint8)[:, None]        # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=360, random_state=0, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    train01 = x[tr].astype(np.float64) / 16.0
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(x[tr])), train_y=torch.from_numpy(y[tr]),
        test_x=torch.from_numpy(np.ascontiguousarray(x[te])), test_y=torch.from_numpy(y[te]),
        classes=[str(i) for i in range(10)], scale=16.0,
        mean=(float(train01.mean()),), std=(float(train01.std()),), augment=False,
        source="sklearn.datasets.load_digits",
    )


# ====================================================================== cifar10
@register_dataset("cifar10")
def _load_cifar10(path: Path | None = None, *, cache_dir=None) -> Dataset:
    src = _resolve_source("cifar10", _data_path(path, "cifar10"), hint="cifar10")
    arrays = _load_arrays("cifar10", src, cache_dir)
    ds = Dataset(
        name="cifar10",
        train_x=torch.from_numpy(arrays["train_x"]), train_y=torch.from_numpy(arrays["train_y"]),
        test_x=torch.from_numpy(arrays["test_x"]), test_y=torch.from_numpy(arrays["test_y"]),
        classes=list(arrays["classes"]), scale=255.0, mean=CIFAR10_MEAN, std=CIFAR10_STD, augment=True,
        source=str(src.path),
    )
    if ds.num_classes != 10:
        raise DatasetError(f"cifar10: expected 10 classes, found {ds.num_classes} ({', '.join(ds.classes)}) "
                           f"in {src.path}")
    if ds.in_shape != (3, 32, 32):
        raise DatasetError(f"cifar10: expected 3x32x32 images, found {'x'.join(map(str, ds.in_shape))} "
                           f"in {src.path}")
    return ds


# ====================================================================== sources
@dataclass(frozen=True)
class _Source:
    kind: str       # "pickle" (cifar-10-batches-py folder), "folder" (ImageFolder ROOT) or "archive"
    path: Path


def _is_archive_name(p: Path) -> bool:
    return p.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_pickle_dir(p: Path) -> bool:
    return (p / "test_batch").is_file() or (p / "data_batch_1").is_file()


def _is_image_root(p: Path) -> bool:
    return (p / "train").is_dir() and (p / "test").is_dir()


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _resolve_source(name: str, path: Path, *, hint: str | None = None) -> _Source:
    """Find which of the supported layouts ``path`` is (or contains)."""
    if not path.exists():
        raise FileNotFoundError(f"{name}: data path {path} does not exist. Looked for: {_LAYOUTS}")
    if path.is_file():
        if _is_archive_name(path):
            return _Source("archive", path.resolve())
        if path.name in _CIFAR10_PICKLE_FILES:          # a file of the pickled folder: use the folder
            return _Source("pickle", path.parent.resolve())
        raise DatasetError(f"{name}: {path} is a file but not a tar archive "
                           f"({', '.join(ARCHIVE_SUFFIXES)}). Looked for: {_LAYOUTS}")
    if _is_pickle_dir(path):
        return _Source("pickle", path.resolve())
    if _is_image_root(path):
        return _Source("folder", path.resolve())
    found: list[_Source] = []
    try:
        children = sorted(path.iterdir())
    except OSError as err:
        raise DatasetError(f"{name}: cannot list the folder {path}: {err}") from err
    for child in children:
        if _hidden(child.name):
            continue
        if child.is_dir():
            if _is_pickle_dir(child):
                found.append(_Source("pickle", child.resolve()))
            elif _is_image_root(child):
                found.append(_Source("folder", child.resolve()))
        elif child.is_file() and _is_archive_name(child):
            found.append(_Source("archive", child.resolve()))
    if len(found) > 1 and hint:
        # several candidates (a shared data folder): keep those named after the data set
        squash = hint.replace("-", "").replace("_", "").lower()
        named = [s for s in found if squash in s.path.name.replace("-", "").replace("_", "").lower()]
        if named:
            found = named
    if len(found) > 1:
        # prefer an unpacked folder to an archive of it
        unpacked = [s for s in found if s.kind != "archive"]
        if len(unpacked) == 1:
            found = unpacked
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{name}: found no data set in {path}. Looked for: {_LAYOUTS}")
    raise DatasetError(f"{name}: {path} holds several candidate data sets ("
                       + ", ".join(str(s.path) for s in found) + "); pass one of them")


def _source_state(src: _Source) -> list:
    """Cheap fingerprint of the source files: (relative name, size, mtime_ns) for each."""
    def stat_of(p: Path, rel: str) -> list:
        st = p.stat()
        return [rel, st.st_size, st.st_mtime_ns]

    if src.kind == "archive":
        return [stat_of(src.path, src.path.name)]
    if src.kind == "pickle":
        return [stat_of(src.path / f, f) for f in _CIFAR10_PICKLE_FILES if (src.path / f).is_file()]
    state = []
    for split in _SPLITS:
        for cls, entries in _scan_split_dir(src.path / split):
            for e in entries:
                st = e.stat()
                state.append([f"{split}/{cls}/{e.name}", st.st_size, st.st_mtime_ns])
    return state


def _read_source(src: _Source) -> dict:
    """Decode a source to arrays: train_x/test_x uint8 (N, C, H, W), train_y/test_y int64, classes."""
    if src.kind == "pickle":
        return _read_pickle_dir(src.path)
    if src.kind == "folder":
        return _read_image_folder(src.path)
    if src.kind == "archive":
        return _read_archive(src.path)
    raise AssertionError(src.kind)


# ---------------------------------------------------------------------- pickled batches
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


def _unpickle(blob: bytes, label: str):
    try:
        return _SafeUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as err:
        raise DatasetError(f"cannot read {label}: truncated or corrupt pickle "
                           f"({type(err).__name__}: {err})") from err


def _get(d: dict, key: str):
    """Look ``key`` up in a dict unpickled with encoding='bytes' (keys are bytes) or not."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _cifar_batch(blob: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(blob, label)
    if not isinstance(d, dict):
        raise DatasetError(f"{label} is not a CIFAR batch: it holds a {type(d).__name__}, not a dict")
    data, labels = _get(d, "data"), _get(d, "labels")
    if data is None or labels is None:
        raise DatasetError(f"{label} is not a CIFAR-10 batch: it has no 'data'/'labels' entries "
                           f"(keys: {', '.join(map(repr, d))})")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{label}: 'data' should be uint8 of shape (N, 3072), got {data.dtype} "
                           f"{tuple(data.shape)}")
    if len(labels) != len(data):
        raise DatasetError(f"{label}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_from_blobs(blobs: dict[str, tuple[str, bytes]], where: str) -> dict:
    """Arrays from the pickled batch files: ``blobs[file name] = (label for errors, bytes)``."""
    missing = [f for f in _CIFAR10_TRAIN_BATCHES + ("test_batch",) if f not in blobs]
    if missing:
        raise DatasetError(f"the pickled CIFAR-10 folder {where} is incomplete: missing {', '.join(missing)}")
    xs, ys = zip(*(_cifar_batch(blobs[f][1], blobs[f][0]) for f in _CIFAR10_TRAIN_BATCHES))
    test_x, test_y = _cifar_batch(blobs["test_batch"][1], blobs["test_batch"][0])
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in blobs:
        label, blob = blobs["batches.meta"]
        meta = _unpickle(blob, label)
        names = _get(meta, "label_names") if isinstance(meta, dict) else None
        if names is None:
            raise DatasetError(f"{label} has no 'label_names' entry")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return {"train_x": np.ascontiguousarray(np.concatenate(xs)), "train_y": np.concatenate(ys),
            "test_x": np.ascontiguousarray(test_x), "test_y": test_y, "classes": classes}


def _read_pickle_dir(folder: Path) -> dict:
    blobs = {}
    for f in _CIFAR10_PICKLE_FILES:
        p = folder / f
        if p.is_file():
            try:
                blobs[f] = (str(p), p.read_bytes())
            except OSError as err:
                raise DatasetError(f"cannot read {p}: {err}") from err
    return _cifar_from_blobs(blobs, str(folder))


# ---------------------------------------------------------------------- image decoding
def _decode_image(payload) -> np.ndarray:
    """One image file (bytes, or a path to read) -> uint8 array (H, W, 3)."""
    from PIL import Image

    fp = io.BytesIO(payload) if isinstance(payload, (bytes, bytearray)) else payload
    with Image.open(fp) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8)


def _decode_chunk(items: list, ref) -> tuple[np.ndarray | None, str | None]:
    """Decode ``items`` [(label, payload)]; every image must be ``ref = (h, w, label)`` sized.

    Returns (array (n, h, w, 3), None) or (None, error message).  Runs in worker processes.
    """
    h, w, ref_label = ref
    out = np.empty((len(items), h, w, 3), np.uint8)
    for i, (label, payload) in enumerate(items):
        try:
            arr = _decode_image(payload)
        except Exception as err:  # noqa: BLE001 - any decoder failure names the file
            return None, f"cannot decode image {label}: {type(err).__name__}: {err}"
        if arr.shape != (h, w, 3):
            return None, (f"image {label} is {arr.shape[1]}x{arr.shape[0]} pixels but {ref_label} is {w}x{h}: "
                          f"all images of a data set must have the same size")
        out[i] = arr
    return out, None


def _decode_workers() -> int:
    env = os.environ.get(WORKERS_ENV)
    if env is not None and env.strip():
        try:
            return max(0, int(env))
        except ValueError:
            warnings.warn(f"ignoring {WORKERS_ENV}={env!r}: not an integer")
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return min(n, 8)


class _ImageDecoder:
    """Decodes images added one at a time, in chunks, on a process pool when that pays.

    The pool (fork start method, Linux only) starts once a full chunk is queued,
    so small data sets are decoded in this process.
    """

    def __init__(self) -> None:
        self.workers = _decode_workers() if sys.platform.startswith("linux") else 1
        self.chunk = _DECODE_CHUNK
        self.pending: list = []
        self.parts: list = []       # per chunk: [items, future or None, result or None]
        self.ref = None
        self.pool = None
        self.count = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def add(self, label: str, payload) -> None:
        if self.ref is None:                    # the first image fixes the size
            try:
                arr = _decode_image(payload)
            except Exception as err:  # noqa: BLE001
                raise DatasetError(f"cannot decode image {label}: {type(err).__name__}: {err}") from err
            self.ref = (arr.shape[0], arr.shape[1], label)
        self.pending.append((label, payload))
        self.count += 1
        if len(self.pending) >= self.chunk:
            self._flush()

    def _submit(self, items):
        if self.workers <= 1:
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # fork() of a threaded process
                if self.pool is None:
                    self.pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
                return self.pool.submit(_decode_chunk, items, self.ref)
        except Exception as err:  # noqa: BLE001 - no pool: decode here
            warnings.warn(f"cannot start image decoding processes ({err}); decoding in this process")
            self.workers = 1
            self.close()
            return None

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        if items:
            fut = self._submit(items)
            self.parts.append([items, fut, None if fut is not None else _decode_chunk(items, self.ref)])

    def finish(self) -> np.ndarray:
        """All images, in the order added, as uint8 (N, H, W, 3)."""
        self._flush()
        try:
            arrays = []
            for part in self.parts:
                items, fut, result = part
                if result is None:
                    try:
                        result = fut.result()
                    except Exception as err:  # noqa: BLE001 - a broken pool: decode here
                        warnings.warn(f"image decoding process failed ({type(err).__name__}: {err}); "
                                      f"decoding in this process")
                        result = _decode_chunk(items, self.ref)
                arr, error = result
                if error is not None:
                    raise DatasetError(error)
                arrays.append(arr)
                part[0] = part[1] = part[2] = None
        finally:
            self.close()
        if not arrays:
            return np.empty((0, 0, 0, 3), np.uint8)
        return np.concatenate(arrays)


def _assemble(records: list, images: np.ndarray, where: str, classes_by_split: dict | None = None) -> dict:
    """Arrays from decoded images; ``records[i] = (split, class, file name)`` of ``images[i]``.

    Samples are ordered by (class, file name) within a split; classes are the
    sorted class folder names (``classes_by_split`` when given, else those seen).
    """
    if classes_by_split is None:
        classes_by_split = {s: sorted({c for sp, c, _ in records if sp == s}) for s in _SPLITS}
    for s in _SPLITS:
        if not classes_by_split[s]:
            raise DatasetError(f"{where}: the {s} split has no images in class subfolders "
                               f"({s}/<class>/*.{{jpg,jpeg,png}})")
    train_c, test_c = classes_by_split["train"], classes_by_split["test"]
    if train_c != test_c:
        only_train = sorted(set(train_c) - set(test_c))
        only_test = sorted(set(test_c) - set(train_c))
        raise DatasetError(f"{where}: train and test have different classes (only in train: "
                           f"{', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'})")
    index = {c: i for i, c in enumerate(train_c)}
    out: dict = {"classes": list(train_c)}
    for s in _SPLITS:
        order = sorted((i for i, r in enumerate(records) if r[0] == s), key=lambda i: records[i][1:])
        idx = np.asarray(order, dtype=np.int64)
        out[f"{s}_x"] = np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2))
        out[f"{s}_y"] = np.asarray([index[records[i][1]] for i in order], dtype=np.int64)
    return out


# ---------------------------------------------------------------------- ImageFolder tree
def _scan_split_dir(split_dir: Path) -> list[tuple[str, list]]:
    """[(class name, sorted image DirEntries)] of ``split_dir``, classes sorted."""
    try:
        class_dirs = sorted((e for e in os.scandir(split_dir) if e.is_dir() and not _hidden(e.name)),
                            key=lambda e: e.name)
        out = []
        for c in class_dirs:
            files = sorted((e for e in os.scandir(c.path)
                            if not _hidden(e.name) and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()),
                           key=lambda e: e.name)
            out.append((c.name, files))
        return out
    except OSError as err:
        raise DatasetError(f"cannot list {split_dir}: {err}") from err


def _read_image_folder(root: Path) -> dict:
    records, classes = [], {}
    with _ImageDecoder() as dec:
        for split in _SPLITS:
            listing = _scan_split_dir(root / split)
            classes[split] = [c for c, _ in listing]
            for cls, files in listing:
                if not files:
                    raise DatasetError(f"the class folder {root / split / cls} holds no images "
                                       f"({', '.join(IMAGE_EXTENSIONS)})")
                for e in files:
                    records.append((split, cls, e.name))
                    dec.add(e.path, e.path)
        images = dec.finish()
    return _assemble(records, images, str(root), classes)


# ---------------------------------------------------------------------- tar archive
def _archive_errors() -> tuple:
    errors = [tarfile.TarError, EOFError, OSError, zlib.error]
    try:
        import lzma
        errors.append(lzma.LZMAError)
    except ImportError:
        pass
    return tuple(errors)


_ARCHIVE_ERRORS = _archive_errors()


def _read_archive(path: Path) -> dict:
    records, roots, blobs = [], set(), {}
    try:
        with _ImageDecoder() as dec, tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or any(_hidden(p) for p in parts):
                    continue
                base = parts[-1]
                label = f"{path}:{m.name}"
                if base in _CIFAR10_PICKLE_FILES:
                    blobs.setdefault(base, (label, tf.extractfile(m).read()))
                elif (len(parts) >= 3 and parts[-3] in _SPLITS and base.lower().endswith(IMAGE_EXTENSIONS)):
                    roots.add("/".join(parts[:-3]))
                    records.append((parts[-3], parts[-2], base))
                    dec.add(label, tf.extractfile(m).read())
            if all(f in blobs for f in _CIFAR10_TRAIN_BATCHES + ("test_batch",)) or (blobs and not records):
                return _cifar_from_blobs(blobs, f"{path} (archive)")
            if not records:
                raise DatasetError(f"the archive {path} holds no data set. Looked for: {_LAYOUTS}")
            if len(roots) > 1:
                raise DatasetError(f"the archive {path} holds several ImageFolder trees ("
                                   + ", ".join(sorted(r or "<top level>" for r in roots)) + "); expected one")
            images = dec.finish()
    except DatasetError:
        raise
    except _ARCHIVE_ERRORS as err:
        raise DatasetError(f"cannot read the archive {path}: it is truncated or corrupt "
                           f"({type(err).__name__}: {err})") from err
    return _assemble(records, images, f"{path} (archive)")


# ====================================================================== cache
def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dtp_fast"


_ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")


def _cache_paths(name: str, src: _Source, cache_dir: Path) -> tuple[Path, str]:
    """(cache file, prefix shared by all cache files of this source path)."""
    path_key = hashlib.sha256(f"{src.kind}:{src.path}".encode()).hexdigest()[:12]
    state = json.dumps({"version": CACHE_VERSION, "name": name, "kind": src.kind, "path": str(src.path),
                        "files": _source_state(src)}, separators=(",", ":"))
    state_key = hashlib.sha256(state.encode()).hexdigest()[:20]
    prefix = f"{name}-{path_key}-"
    return cache_dir / f"{prefix}{state_key}.npz", prefix


def _read_cache(file: Path) -> dict:
    with np.load(file, allow_pickle=False) as z:
        out = {k: np.ascontiguousarray(z[k]) for k in _ARRAY_KEYS}
        out["classes"] = [str(c) for c in z["classes"]]
    for s in _SPLITS:
        x, y = out[f"{s}_x"], out[f"{s}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != (len(x),):
            raise ValueError(f"unexpected {s} arrays {x.dtype}{x.shape} / {y.dtype}{y.shape}")
    return out


def _write_cache(file: Path, arrays: dict, prefix: str) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: arrays[k] for k in _ARRAY_KEYS}, classes=np.asarray(arrays["classes"], dtype=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
        tmp = None
        for old in file.parent.glob(f"{prefix}*.npz"):   # caches of older versions of the same source
            if old != file:
                try:
                    old.unlink()
                except OSError:
                    pass
    except OSError as err:
        warnings.warn(f"cannot write the data cache {file} ({err}); the data set will be decoded again next time")
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _load_arrays(name: str, src: _Source, cache_dir) -> dict:
    """Decode ``src`` (see :func:`_read_source`), through the ``.npz`` cache unless ``cache_dir is False``."""
    if cache_dir is False:
        return _read_source(src)
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    try:
        file, prefix = _cache_paths(name, src, cdir)
    except OSError as err:
        raise DatasetError(f"{name}: cannot read {src.path}: {err}") from err
    if file.exists():
        try:
            return _read_cache(file)
        except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt
            warnings.warn(f"ignoring the corrupt data cache {file} ({type(err).__name__}: {err}); "
                          f"decoding {src.path} again")
    arrays = _read_source(src)
    _write_cache(file, arrays, prefix)
    return arrays


# ====================================================================== imagenet32
# Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov & Hutter 2017; image-net.org "Imagenet32"):
# train_data_batch_1..10.npz + val_data.npz, each holding 'data' (N, 3072) uint8 whose rows are the
# R, G and B planes of a 32x32 image (row-major), 'labels' (N,) in 1..1000 and an optional 'mean'.
# The older release ships the same files without the .npz suffix as Python pickles of a dict.
IMAGENET32_CACHE_VERSION = 1
_IN32_TRAIN = tuple(f"train_data_batch_{i}" for i in range(1, 11))
_IN32_VAL = "val_data"
_IN32_FILES = _IN32_TRAIN + (_IN32_VAL,)
_IN32_CLASSES = 1000
_IN32_SHAPE = (3, 32, 32)
_IN32_ROW = 3 * 32 * 32
_IN32_CLASS_MAP = "map_clsloc.txt"
_IN32_LAYOUT = (
    "the Imagenet32 files train_data_batch_1.npz .. train_data_batch_10.npz and val_data.npz (unpack "
    "Imagenet32_train_npz.zip and Imagenet32_val_npz.zip from image-net.org's downsampled ImageNet), directly in "
    "PATH or in subfolders of PATH (e.g. PATH/Imagenet32_train_npz/ + PATH/Imagenet32_val_npz/); the pickled "
    "release (the same names without .npz) is accepted too")
_NPY_HEADER_BYTES = 128      # fixed header size of the image caches, so it can be rewritten once N is known


@dataclass(frozen=True)
class _In32File:
    stem: str       # e.g. "train_data_batch_3"
    path: Path
    kind: str       # "npz" or "pickle"

    @property
    def display(self) -> str:
        return self.path.name


def _in32_expected(stem: str) -> str:
    return f"{stem}.npz"


def _in32_files_in(folder: Path) -> dict[str, _In32File]:
    """The Imagenet32 files in ``folder`` (the .npz of a name is preferred to its pickle)."""
    found = {}
    for stem in _IN32_FILES:
        for name, kind in ((f"{stem}.npz", "npz"), (stem, "pickle")):
            p = folder / name
            if p.is_file():
                found[stem] = _In32File(stem, p.resolve(), kind)
                break
    return found


def _find_imagenet32(path: Path | None) -> tuple[dict[str, _In32File], list[Path]]:
    """The 11 Imagenet32 files under ``path`` and the folders they are in (for ``map_clsloc.txt``)."""
    if path is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise FileNotFoundError(f"imagenet32: no data path given. Pass --data PATH on the command line "
                                    f"(path=... in Python) or set the environment variable {DATA_ENV}. "
                                    f"Expected {_IN32_LAYOUT}")
        path = Path(env).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"imagenet32: data path {path} does not exist. Expected {_IN32_LAYOUT}")
    if path.is_file():
        stem = path.name[:-4] if path.name.endswith(".npz") else path.name
        if stem not in _IN32_FILES:
            raise DatasetError(f"imagenet32: {path} is a file but not one of the Imagenet32 files. "
                               f"Expected {_IN32_LAYOUT}")
        path = path.parent
    files = _in32_files_in(path)
    folders = [path]
    if not files:                                   # look one level down
        try:
            children = sorted(c for c in path.iterdir() if c.is_dir() and not _hidden(c.name))
        except OSError as err:
            raise DatasetError(f"imagenet32: cannot list the folder {path}: {err}") from err
        seen: dict[str, list[_In32File]] = {}
        for child in children:
            for stem, f in _in32_files_in(child).items():
                seen.setdefault(stem, []).append(f)
        for stem, cands in seen.items():
            if len(cands) > 1:
                npz = [f for f in cands if f.kind == "npz"]
                cands = npz if npz else cands
            if len(cands) > 1:
                raise DatasetError(f"imagenet32: {path} holds {_in32_expected(stem)} in several subfolders ("
                                   + ", ".join(str(f.path.parent) for f in cands) + "); pass one of them")
            files[stem] = cands[0]
        folders += sorted({f.path.parent for f in files.values()})
    if not files:
        raise FileNotFoundError(f"imagenet32: found no Imagenet32 files in {path} or its subfolders. "
                                f"Expected {_IN32_LAYOUT}")
    missing = [_in32_expected(s) for s in _IN32_FILES if s not in files]
    if missing:
        where = sorted({str(f.path.parent) for f in files.values()})
        raise FileNotFoundError(f"imagenet32: the data in {', '.join(where)} is incomplete: missing "
                                f"{', '.join(missing)} ({len(files)} of {len(_IN32_FILES)} files found). "
                                f"Expected {_IN32_LAYOUT}")
    return files, folders


def _in32_unreadable(f: _In32File, err: BaseException) -> DatasetError:
    what = "an .npz" if f.kind == "npz" else "a pickled batch"
    return DatasetError(f"cannot read {f.path} as {what}: {type(err).__name__}: {err}. The file is truncated, "
                        f"corrupt or not an Imagenet32 file: download and unpack it again")


def _in32_check_shapes(f: _In32File, data_shape: tuple, data_dtype: np.dtype,
                       labels_shape: tuple, labels_dtype: np.dtype) -> None:
    """Shape and dtype checks shared by the header pre-check and the full read."""
    if len(data_shape) != 2 or data_shape[1] != _IN32_ROW:
        hint = ""
        if len(data_shape) == 2 and data_shape[1] in (3 * 16 * 16, 3 * 64 * 64):
            side = 16 if data_shape[1] == 3 * 16 * 16 else 64
            hint = f" ({data_shape[1]} values per image: this is the {side}x{side} release, only 32x32 is supported)"
        raise DatasetError(f"{f.path}: 'data' must have shape (N, {_IN32_ROW}) (one 3x32x32 image per row: the "
                           f"R, G and B planes), got {tuple(data_shape)}{hint}")
    if len(labels_shape) != 1:
        raise DatasetError(f"{f.path}: 'labels' must have shape (N,), got {tuple(labels_shape)}")
    if labels_shape[0] != data_shape[0]:
        raise DatasetError(f"{f.path}: 'data' holds {data_shape[0]} images but 'labels' holds {labels_shape[0]} "
                           f"labels; the file is inconsistent, download it again")
    if data_shape[0] == 0:
        raise DatasetError(f"{f.path}: holds no images")
    if data_dtype.kind not in "ui":
        raise DatasetError(f"{f.path}: 'data' has dtype {data_dtype}, which cannot be cast safely to uint8 pixels "
                           f"(0..255); expected uint8")
    if labels_dtype.kind not in "uif":
        raise DatasetError(f"{f.path}: 'labels' has dtype {labels_dtype}; expected integers 1..{_IN32_CLASSES}")


def _npz_member_header(zf: zipfile.ZipFile, name: str):
    """(shape, dtype) of the array ``name`` of an open .npz, from its header only (None if not readable so)."""
    with zf.open(name) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            return None
    return tuple(shape), np.dtype(dtype)


def _check_imagenet32_file(f: _In32File) -> int | None:
    """Cheap checks before converting: the file is readable and its arrays have the right shapes.

    Returns the number of images (None for the pickled variant, which can only be read whole).
    """
    try:
        size = f.path.stat().st_size
    except OSError as err:
        raise DatasetError(f"cannot read {f.path}: {err}") from err
    if size == 0:
        raise DatasetError(f"{f.path} is empty: download and unpack it again")
    if f.kind != "npz":
        return None
    try:
        with zipfile.ZipFile(f.path) as zf:
            names = set(zf.namelist())
            for key in ("data", "labels"):
                if f"{key}.npy" not in names:
                    raise DatasetError(f"{f.path} has no '{key}' array (it holds: "
                                       f"{', '.join(sorted(n[:-4] for n in names)) or 'nothing'}); "
                                       f"not an Imagenet32 file")
            data_h = _npz_member_header(zf, "data.npy")
            labels_h = _npz_member_header(zf, "labels.npy")
    except DatasetError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse the file means it is broken
        raise _in32_unreadable(f, err) from err
    if data_h is None or labels_h is None:
        return None
    _in32_check_shapes(f, data_h[0], data_h[1], labels_h[0], labels_h[1])
    return int(data_h[0][0])


def _read_imagenet32_batch(f: _In32File) -> tuple[np.ndarray, np.ndarray]:
    """One file's images, uint8 (N, 3072) C-contiguous, and 0-based int64 labels, checked."""
    if f.kind == "npz":
        try:
            with np.load(f.path, allow_pickle=False) as z:
                missing = [k for k in ("data", "labels") if k not in z.files]
                if missing:
                    raise DatasetError(f"{f.path} has no {' and no '.join(repr(k) for k in missing)} array "
                                       f"(it holds: {', '.join(z.files) or 'nothing'}); not an Imagenet32 file")
                data, labels = z["data"], z["labels"]
        except DatasetError:
            raise
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001
            raise _in32_unreadable(f, err) from err
    else:
        try:
            blob = f.path.read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {f.path}: {err}") from err
        d = _unpickle(blob, str(f.path))
        del blob
        if not isinstance(d, dict):
            raise DatasetError(f"{f.path} is not an Imagenet32 batch: it holds a {type(d).__name__}, not a dict")
        data, labels = _get(d, "data"), _get(d, "labels")
        if data is None or labels is None:
            raise DatasetError(f"{f.path} is not an Imagenet32 batch: it has no 'data'/'labels' entries "
                               f"(keys: {', '.join(map(repr, d))})")
        del d
        try:
            data, labels = np.asarray(data), np.asarray(labels)
        except Exception as err:  # noqa: BLE001 - ragged lists and the like
            raise DatasetError(f"{f.path}: 'data'/'labels' are not arrays ({err})") from err
    _in32_check_shapes(f, data.shape, data.dtype, labels.shape, labels.dtype)
    if data.dtype != np.uint8:
        lo, hi = int(data.min()), int(data.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"{f.path}: 'data' has dtype {data.dtype} with values in [{lo}, {hi}], which "
                               f"cannot be cast safely to uint8 pixels (0..255)")
        data = data.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise DatasetError(f"{f.path}: 'labels' has dtype {labels.dtype} and non-integer values; expected "
                               f"integers 1..{_IN32_CLASSES}")
    lo, hi = labels.min().item(), labels.max().item()
    if lo < 1 or hi > _IN32_CLASSES:
        hint = (" (they look 0-based; Imagenet32 labels are 1-based)" if lo == 0 and hi < _IN32_CLASSES else "")
        raise DatasetError(f"{f.path}: labels must lie in 1..{_IN32_CLASSES}, found min {lo} and max {hi}"
                           f"{hint}; the file is not an Imagenet32 batch or is corrupt")
    return np.ascontiguousarray(data), labels.astype(np.int64) - 1


def _npy_header(shape: tuple, dtype=np.uint8, size: int = _NPY_HEADER_BYTES) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``size`` bytes for a C-ordered array."""
    body = ("{'descr': %r, 'fortran_order': False, 'shape': %r, }"
            % (np.dtype(dtype).str, tuple(int(s) for s in shape))).encode("latin1")
    pad = size - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit a {size}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", size - 10) + body + b" " * pad + b"\n"


def _in32_cache_names(files: dict[str, _In32File]) -> tuple[str, str]:
    """(prefix shared by all caches of these file paths, key of their current state)."""
    paths = [str(files[s].path) for s in _IN32_FILES]
    path_key = hashlib.sha256("\n".join(paths).encode()).hexdigest()[:12]
    state = []
    for s in _IN32_FILES:
        try:
            st = files[s].path.stat()
        except OSError as err:
            raise DatasetError(f"imagenet32: cannot read {files[s].path}: {err}") from err
        state.append([paths[_IN32_FILES.index(s)], st.st_size, st.st_mtime_ns])
    blob = json.dumps({"version": IMAGENET32_CACHE_VERSION, "name": "imagenet32", "files": state},
                      separators=(",", ":"))
    return f"imagenet32-{path_key}-", hashlib.sha256(blob.encode()).hexdigest()[:20]


def _open_imagenet32_cache(xfile: Path, yfile: Path) -> tuple[np.ndarray, np.ndarray]:
    """The cached images as a copy-on-write memory map (writable, so torch does not warn) and the labels."""
    x = np.load(xfile, mmap_mode="c", allow_pickle=False)
    y = np.load(yfile, allow_pickle=False)
    if (x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != _IN32_SHAPE or not x.flags.c_contiguous
            or y.dtype != np.int64 or y.shape != (len(x),)):
        raise ValueError(f"unexpected arrays {x.dtype}{x.shape} / {y.dtype}{y.shape}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= _IN32_CLASSES):
        raise ValueError(f"labels out of range [{int(y.min())}, {int(y.max())}]")
    return x, y


def _mkstemp_for(target: Path) -> tuple[int, str]:
    return tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")


def _write_imagenet32_cache(group: list[_In32File], xfile: Path, yfile: Path, need_bytes: int) -> None:
    """Convert one split's files into ``xfile`` (raw uint8 (N, 3, 32, 32) .npy) and ``yfile`` (int64 labels),
    one file at a time, each written to a temporary file and moved into place."""
    xfile.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(xfile.parent).free
    if free < need_bytes:
        raise OSError(f"{xfile.parent} has {free / 2**30:.2f} GiB free but the cache needs "
                      f"{need_bytes / 2**30:.2f} GiB")
    tmps: list[str] = []
    try:
        fd, xtmp = _mkstemp_for(xfile)
        tmps.append(xtmp)
        labels, n = [], 0
        with os.fdopen(fd, "wb") as out:
            out.write(_npy_header((0,) + _IN32_SHAPE))
            for f in group:
                data, lab = _read_imagenet32_batch(f)
                out.write(memoryview(data).cast("B"))
                labels.append(lab)
                n += len(lab)
                del data
            out.seek(0)
            out.write(_npy_header((n,) + _IN32_SHAPE))
            out.flush()
            os.fsync(out.fileno())
        fd, ytmp = _mkstemp_for(yfile)
        tmps.append(ytmp)
        with os.fdopen(fd, "wb") as out:
            np.save(out, np.concatenate(labels), allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())
        os.replace(ytmp, yfile)
        os.replace(xtmp, xfile)
        tmps.clear()
    finally:
        for t in tmps:
            try:
                os.unlink(t)
            except OSError:
                pass


def _read_imagenet32_split(group: list[_In32File]) -> tuple[np.ndarray, np.ndarray]:
    """One split entirely in memory (no cache)."""
    xs, ys = [], []
    for f in group:
        data, lab = _read_imagenet32_batch(f)
        xs.append(data)
        ys.append(lab)
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    return np.ascontiguousarray(x).reshape((-1,) + _IN32_SHAPE), np.concatenate(ys)


def _imagenet32_arrays(splits: dict[str, list[_In32File]], files: dict[str, _In32File],
                       cache_dir) -> tuple[dict, bool]:
    """``{split: (x, y)}`` and whether the images are memory-mapped, through the per-split ``.npy`` cache."""
    if cache_dir is False:
        for group in splits.values():
            for f in group:
                _check_imagenet32_file(f)
        return {s: _read_imagenet32_split(g) for s, g in splits.items()}, False
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    prefix, key = _in32_cache_names(files)
    out: dict = {}
    names = {s: (cdir / f"{prefix}{key}-{s}.npy", cdir / f"{prefix}{key}-{s}-labels.npy") for s in splits}
    for s, (xfile, yfile) in names.items():
        if xfile.exists() and yfile.exists():
            try:
                out[s] = _open_imagenet32_cache(xfile, yfile)
            except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt
                warnings.warn(f"ignoring the corrupt data cache {xfile} ({type(err).__name__}: {err}); "
                              f"converting the Imagenet32 files again")
    todo = [s for s in splits if s not in out]
    counts = {s: [_check_imagenet32_file(f) for f in splits[s]] for s in todo}    # fail early, before converting
    mapped = True
    for s in todo:
        xfile, yfile = names[s]
        need = sum(n * (_IN32_ROW + 8) if n is not None else f.path.stat().st_size
                   for n, f in zip(counts[s], splits[s]))
        try:
            _write_imagenet32_cache(splits[s], xfile, yfile, need)
            out[s] = _open_imagenet32_cache(xfile, yfile)
        except OSError as err:
            warnings.warn(f"cannot write the data cache {xfile} ({err}); reading the Imagenet32 {s} split into "
                          f"memory instead ({need / 2**30:.2f} GiB), and converting it again next time")
            out[s] = _read_imagenet32_split(splits[s])
            mapped = False
    if todo and mapped:
        current = {p.name for pair in names.values() for p in pair}
        for old in cdir.glob(f"{prefix}*.npy"):          # caches of older versions of the same files
            if old.name not in current:
                try:
                    old.unlink()
                except OSError:
                    pass
    return out, any(isinstance(x, np.memmap) for x, _ in out.values())


def _imagenet32_classes(folders: list[Path]) -> list[str]:
    """Class names from a ``map_clsloc.txt`` (``wnid index name`` lines, index 1..1000) if one is present,
    else ``"0".."999"``."""
    default = [str(i) for i in range(_IN32_CLASSES)]
    for folder in folders:
        file = folder / _IN32_CLASS_MAP
        if not file.is_file():
            continue
        try:
            entries = {}
            for line in file.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 3:
                    raise ValueError(f"expected 'wnid index name', got {line!r}")
                idx = int(parts[1])
                if not 1 <= idx <= _IN32_CLASSES or idx in entries:
                    raise ValueError(f"index {idx} out of 1..{_IN32_CLASSES} or repeated")
                entries[idx] = (parts[0], " ".join(parts[2:]))
            if len(entries) != _IN32_CLASSES:
                raise ValueError(f"{len(entries)} classes, expected {_IN32_CLASSES}")
        except (OSError, UnicodeDecodeError, ValueError) as err:
            warnings.warn(f"ignoring the class names in {file} ({err}); using 0..{_IN32_CLASSES - 1}")
            return default
        names = [entries[i + 1] for i in range(_IN32_CLASSES)]
        counts: dict[str, int] = {}
        for _, name in names:
            counts[name] = counts.get(name, 0) + 1
        return [name if counts[name] == 1 else f"{name} ({wnid})" for wnid, name in names]
    return default


@register_dataset("imagenet32")
def _load_imagenet32(path: Path | None = None, *, cache_dir=None) -> Dataset:
    """Downsampled ImageNet 32x32: 1,281,167 train / 50,000 validation (the ``test`` split) images, 1000 classes.

    The images are converted once into ``<cache>/imagenet32-*-{train,test}.npy`` (raw uint8 (N, 3, 32, 32))
    and memory-mapped from there; with ``cache_dir=False`` they are read into memory instead.
    """
    files, folders = _find_imagenet32(path)
    splits = {"train": [files[s] for s in _IN32_TRAIN], "test": [files[_IN32_VAL]]}
    arrays, mapped = _imagenet32_arrays(splits, files, cache_dir)
    parents = sorted({str(f.path.parent) for f in files.values()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)     # belt and braces: the maps are writable (copy-on-write)
        tensors = {s: (torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in arrays.items()}
    return Dataset(
        name="imagenet32",
        train_x=tensors["train"][0], train_y=tensors["train"][1],
        test_x=tensors["test"][0], test_y=tensors["test"][1],
        classes=_imagenet32_classes(folders + [Path(p) for p in parents]), scale=255.0,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True, source=" + ".join(parents), memory_mapped=mapped,
    )


# ====================================================================== augmentation
def augment_batch(x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor,
                  pad: int = 4) -> torch.Tensor:
    """The paper's augmentation of a batch ``x`` (B, C, H, W), any dtype, on its device.

    Image ``b`` is flipped left-right if ``flip[b]``, then padded by ``pad``
    pixels on each side by replicating its edge pixels, and the (H, W) window
    at row ``dy[b]``, column ``dx[b]`` (both in ``[0, 2 * pad]``) is cut out:
    offsets (pad, pad) without flip give the image back.  Done with one
    ``gather``: the padding is never materialised (clamped indices are the same
    as replicate padding).
    """
    if x.dim() != 4:
        raise ValueError(f"augment_batch expects (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    dev = x.device
    flip, dy, dx = flip.to(dev), dy.to(dev, torch.long), dx.to(dev, torch.long)
    rows = (torch.arange(h, device=dev) + (dy - pad)[:, None]).clamp_(0, h - 1)           # (B, H)
    cols = (torch.arange(w, device=dev) + (dx - pad)[:, None]).clamp_(0, w - 1)           # (B, W)
    cols = torch.where(flip.to(torch.bool)[:, None], (w - 1) - cols, cols)
    idx = (rows[:, :, None] * w + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, idx).reshape(b, c, h, w)


def draw_augmentation(n: int, generator: torch.Generator | None = None,
                      pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``(flip, dy, dx)`` for ``n`` images (on the generator's device, the CPU by default):
    flip with probability 0.5, offsets uniform in ``[0, 2 * pad]``."""
    flip = torch.rand(n, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    return flip, dy, dx


def random_augment(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """:func:`augment_batch` with offsets drawn from ``generator`` (a CPU generator)."""
    return augment_batch(x, *draw_augmentation(len(x), generator, pad), pad=pad)


# ====================================================================== loader
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the CPU generator that draws the order and augmentation of an epoch."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)


def _canonical_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Loader:
    """Batches of one split of a :class:`Dataset`, made on the training device.

    Yields ``(x, y)``: ``x`` of ``dtype`` (B, C, H, W), normalised with the data
    set's scale/mean/std; ``y`` int64 (B,).  The split's uint8 images are moved
    to ``device`` once (on the first iteration) and batches are indexed there,
    unless the split is large (see below).

    The order (``shuffle``, default: True for train) and the augmentation
    (``augment``, default: the data set's ``augment`` for train, off for test)
    of an epoch are drawn from a CPU generator seeded by :func:`epoch_seed`
    ``(seed, epoch)`` only.  The epoch is whatever :meth:`set_epoch` last set
    (0 at first): iterating again without calling it repeats the same batches.

    Large splits are streamed: each batch's images are gathered on the CPU
    (from RAM or a memory map), into pinned memory when ``device`` is CUDA, and
    copied over with ``non_blocking=True``, the next batch being gathered in a
    background thread meanwhile.  That happens when ``stream`` is True, or when
    it is None (the default) and the split's images are larger than
    ``stream_threshold`` bytes (default :attr:`STREAM_THRESHOLD`, 2 GiB) or are
    memory-mapped (``dataset.memory_mapped``) and ``device`` is the CPU.  The
    batches are the same either way.

    ``shard=(rank, world)`` (data-parallel runs) yields only this rank's rows of
    every batch (see :meth:`bounds`); ``batch_size`` stays the global batch.
    A final batch with fewer rows than ranks is skipped, or with
    ``empty_shards=True`` yields empty batches on some ranks.
    """

    STREAM_THRESHOLD = 2 << 30      # bytes of uint8 images above which a split is streamed

    def __init__(self, dataset: Dataset, split: str, batch_size: int, *, device="cpu",
                 dtype: torch.dtype = torch.float32, shuffle: bool | None = None, augment: bool | None = None,
                 drop_last: bool = False, limit_batches: int | None = None, seed: int = 0, pad: int = 4,
                 stream: bool | None = None, stream_threshold: int | None = None,
                 shard: tuple[int, int] | None = None, empty_shards: bool = False) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if limit_batches is not None and int(limit_batches) < 0:
            raise ValueError(f"limit_batches must be >= 0 or None, got {limit_batches}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        self.dataset = dataset
        self.split = split
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.dtype = dtype
        self.shuffle = (split == "train") if shuffle is None else bool(shuffle)
        self.augment = (bool(dataset.augment) and split == "train") if augment is None else bool(augment)
        self.drop_last = bool(drop_last)
        self.limit_batches = None if limit_batches is None else int(limit_batches)
        self.seed = int(seed)
        self.pad = int(pad)
        self.epoch = 0
        self.stream = None if stream is None else bool(stream)
        self.stream_threshold = self.STREAM_THRESHOLD if stream_threshold is None else int(stream_threshold)
        self._norm = None
        rank, world = shard if shard is not None else (0, 1)
        if not 0 <= rank < world:
            raise ValueError(f"shard (rank, world) must have 0 <= rank < world, got {shard}")
        self.shard = (int(rank), int(world))
        self.empty_shards = bool(empty_shards)

    @property
    def num_samples(self) -> int:
        return len(self.dataset.split(self.split)[1])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        batches = n // bs if self.drop_last else -(-n // bs)
        if 0 < n % bs < self.shard[1] and not (self.drop_last or self.empty_shards):
            batches -= 1   # a final batch smaller than the number of ranks is skipped (by every rank)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def global_bounds(self, b: int) -> tuple[int, int]:
        """Positions ``[s, e)`` in the epoch's order of global batch ``b`` (all ranks together)."""
        return b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)

    def bounds(self, b: int) -> tuple[int, int]:
        """Positions ``[lo, hi)`` of this loader's share of batch ``b``: for rank r of W, rows
        ``floor(r m / W) .. floor((r + 1) m / W) - 1`` of the global batch of m rows."""
        s, e = self.global_bounds(b)
        rank, world = self.shard
        m = e - s
        return s + rank * m // world, s + (rank + 1) * m // world

    def _randomness(self, epoch: int):
        """(order or None, (flip, dy, dx) or None) of an epoch, on the CPU."""
        if not (self.shuffle or self.augment):
            return None, None
        g = torch.Generator(device="cpu")
        g.manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else None
        aug = draw_augmentation(self.num_samples, g, self.pad) if self.augment else None
        return order, aug

    def epoch_order(self, epoch: int | None = None) -> torch.Tensor:
        """Indices into the split, in the order epoch ``epoch`` (default: the current one) yields them."""
        order, _ = self._randomness(self.epoch if epoch is None else int(epoch))
        return order if order is not None else torch.arange(self.num_samples)

    def _normaliser(self):
        if self._norm is None:
            ds = self.dataset
            cdt = torch.float64 if self.dtype == torch.float64 else torch.float32
            std = torch.tensor(ds.std, dtype=torch.float64)
            mean = torch.tensor(ds.mean, dtype=torch.float64)
            mul = (1.0 / (ds.scale * std)).to(cdt).view(1, -1, 1, 1).to(self.device)
            add = (-mean / std).to(cdt).view(1, -1, 1, 1).to(self.device)
            self._norm = (cdt, mul, add)
        return self._norm

    @property
    def streaming(self) -> bool:
        """Whether batches are gathered on the CPU one at a time instead of indexed in a device copy."""
        if self.stream is not None:
            return self.stream
        x, _ = self.dataset.split(self.split)
        if x.device.type != "cpu":
            return False
        if self.dataset.memory_mapped and self.device.type == "cpu":
            return True
        return x.numel() * x.element_size() > self.stream_threshold

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.streaming:
            yield from self._iter_streamed()
            return
        x_all, y_all = self.dataset.on_device(self.split, self.device)
        cdt, mul, add = self._normaliser()
        order, aug = self._randomness(self.epoch)
        if order is not None:
            order = order.to(self.device)
        if aug is not None:
            aug = tuple(t.to(self.device) for t in aug)
        for b in range(len(self)):
            s, e = self.bounds(b)
            if order is None:
                xb, yb = x_all[s:e], y_all[s:e]
            else:
                idx = order[s:e]
                xb, yb = x_all.index_select(0, idx), y_all.index_select(0, idx)
            if aug is not None:
                xb = augment_batch(xb, aug[0][s:e], aug[1][s:e], aug[2][s:e], self.pad)
            xf = torch.addcmul(add, xb.to(cdt), mul)
            yield (xf if cdt == self.dtype else xf.to(self.dtype)), yb

    def _gather(self, x_all: torch.Tensor, y_all: torch.Tensor, order: torch.Tensor | None, s: int, e: int,
                pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``[s, e)`` of the epoch's order, read from the (CPU) split into fresh (pinned) tensors."""
        if order is None:
            xs, ys = x_all[s:e], y_all[s:e]
            xb = torch.empty(xs.shape, dtype=xs.dtype, device=xs.device, pin_memory=pin)
            yb = torch.empty(ys.shape, dtype=ys.dtype, device=ys.device, pin_memory=pin)
            return xb.copy_(xs), yb.copy_(ys)
        idx = order[s:e]
        sidx, perm = torch.sort(idx)                    # read the images in file order ...
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(len(perm))
        xs = x_all.index_select(0, sidx.to(x_all.device))
        xb = torch.empty(xs.shape, dtype=xs.dtype, device=xs.device, pin_memory=pin)
        torch.index_select(xs, 0, inv.to(xs.device), out=xb)   # ... and put them in the shuffled order
        yb = torch.empty((len(idx),), dtype=y_all.dtype, device=y_all.device, pin_memory=pin)
        torch.index_select(y_all, 0, idx.to(y_all.device), out=yb)
        return xb, yb

    def _iter_streamed(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x_all, y_all = self.dataset.split(self.split)
        cdt, mul, add = self._normaliser()
        order, aug = self._randomness(self.epoch)
        if aug is not None:
            aug = tuple(t.to(self.device) for t in aug)
        pin = self.device.type == "cuda" and x_all.device.type == "cpu" and y_all.device.type == "cpu"
        nb = len(self)
        bounds = [self.bounds(b) for b in range(nb)]
        # the gathering thread allocates pinned memory: on the loader's GPU, not on GPU 0
        init = dict(initializer=torch.cuda.set_device, initargs=(_canonical_device(self.device),)) if pin else {}
        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtp-fast-loader", **init)
        nxt = None
        try:
            nxt = pool.submit(self._gather, x_all, y_all, order, *bounds[0], pin) if nb else None
            for b, (s, e) in enumerate(bounds):
                xb, yb = nxt.result()
                nxt = pool.submit(self._gather, x_all, y_all, order, *bounds[b + 1], pin) if b + 1 < nb else None
                xb = xb.to(self.device, non_blocking=pin)
                yb = yb.to(self.device, non_blocking=pin)
                if aug is not None:
                    xb = augment_batch(xb, aug[0][s:e], aug[1][s:e], aug[2][s:e], self.pad)
                xf = torch.addcmul(add, xb.to(cdt), mul)
                yield (xf if cdt == self.dtype else xf.to(self.dtype)), yb
        finally:
            if nxt is not None:
                nxt.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"Loader({self.dataset.name}/{self.split}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}, epoch={self.epoch}"
                f"{', streamed' if self.streaming else ''})")
