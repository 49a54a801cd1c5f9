"""Decoding image files (JPEG, PNG) into uint8 arrays, on a process pool for large data sets,
and arranging them into a data set's splits.

Used by the ImageFolder and tar-archive layouts of :mod:`.cifar10`.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .registry import SPLITS, DatasetError, hidden

WORKERS_ENV = "DTP_FAST_DECODE_WORKERS"  # processes used to decode images (0/1: none)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# images per decoding task; the process pool starts once one full chunk is queued
_DECODE_CHUNK = 2048


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


class ImageDecoder:
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


def assemble(records: list, images: np.ndarray, where: str, classes_by_split: dict | None = None) -> dict:
    """Arrays from decoded images; ``records[i] = (split, class, file name)`` of ``images[i]``.

    Samples are ordered by (class, file name) within a split; classes are the
    sorted class folder names (``classes_by_split`` when given, else those seen).
    """
    if classes_by_split is None:
        classes_by_split = {s: sorted({c for sp, c, _ in records if sp == s}) for s in SPLITS}
    for s in SPLITS:
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
    for s in SPLITS:
        order = sorted((i for i, r in enumerate(records) if r[0] == s), key=lambda i: records[i][1:])
        idx = np.asarray(order, dtype=np.int64)
        out[f"{s}_x"] = np.ascontiguousarray(images[idx].transpose(0, 3, 1, 2))
        out[f"{s}_y"] = np.asarray([index[records[i][1]] for i in order], dtype=np.int64)
    return out


def scan_split_dir(split_dir: Path) -> list[tuple[str, list]]:
    """[(class name, sorted image DirEntries)] of ``split_dir``, classes sorted."""
    try:
        class_dirs = sorted((e for e in os.scandir(split_dir) if e.is_dir() and not hidden(e.name)),
                            key=lambda e: e.name)
        out = []
        for c in class_dirs:
            files = sorted((e for e in os.scandir(c.path)
                            if not hidden(e.name) and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()),
                           key=lambda e: e.name)
            out.append((c.name, files))
        return out
    except OSError as err:
        raise DatasetError(f"cannot list {split_dir}: {err}") from err
