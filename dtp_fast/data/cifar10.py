"""CIFAR-10, read from any of its usual layouts, decoded once and cached as an uncompressed ``.npz``.

Layouts: the pickled ``cifar-10-batches-py`` folder, an ImageFolder tree
(``ROOT/train/<class>/*.jpg``, ``ROOT/test/<class>/...``) or a tar archive of
either, or a folder that contains one of those.  The cache file is keyed by
the source's path, sizes and modification times (see :mod:`.cache`).
"""
from __future__ import annotations

import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import cache_folder, cache_names, file_state, remove_stale, sync, temp_file_for, unlink_quietly
from .images import IMAGE_EXTENSIONS, ImageDecoder, assemble, scan_split_dir
from .pickles import batch_entries, get, unpickle
from .registry import SPLITS, Dataset, DatasetError, data_path, hidden, register_dataset

CACHE_VERSION = 1

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_PICKLE_FILES = _CIFAR10_TRAIN_BATCHES + ("test_batch", "batches.meta")

_LAYOUTS = (
    "(a) the pickled 'cifar-10-batches-py' folder (data_batch_1..5, test_batch, batches.meta) or a folder "
    "that contains it; (b) an ImageFolder tree ROOT/train/<class>/*.{jpg,jpeg,png} + ROOT/test/<class>/... "
    "or a folder that contains exactly one such ROOT; (c) a .tar.gz/.tgz/.tar archive of (a) or (b), "
    "or a folder that contains one")


@register_dataset("cifar10")
def _load_cifar10(path: Path | None = None, *, cache_dir=None) -> Dataset:
    src = _resolve_source("cifar10", data_path(path, "cifar10", f"Accepted layouts: {_LAYOUTS}"), hint="cifar10")
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
        if hidden(child.name):
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
    if src.kind == "archive":
        return [file_state(src.path, src.path.name)]
    if src.kind == "pickle":
        return [file_state(src.path / f, f) for f in _CIFAR10_PICKLE_FILES if (src.path / f).is_file()]
    return [file_state(e, f"{split}/{cls}/{e.name}")
            for split in SPLITS for cls, entries in scan_split_dir(src.path / split) for e in entries]


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
def _cifar_batch(blob: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch_entries(unpickle(blob, label), label, "a CIFAR-10 batch")
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
        meta = unpickle(blob, label)
        names = get(meta, "label_names") if isinstance(meta, dict) else None
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


# ---------------------------------------------------------------------- ImageFolder tree
def _read_image_folder(root: Path) -> dict:
    records, classes = [], {}
    with ImageDecoder() as dec:
        for split in SPLITS:
            listing = scan_split_dir(root / split)
            classes[split] = [c for c, _ in listing]
            for cls, files in listing:
                if not files:
                    raise DatasetError(f"the class folder {root / split / cls} holds no images "
                                       f"({', '.join(IMAGE_EXTENSIONS)})")
                for e in files:
                    records.append((split, cls, e.name))
                    dec.add(e.path, e.path)
        images = dec.finish()
    return assemble(records, images, str(root), classes)


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
        with ImageDecoder() as dec, tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or any(hidden(p) for p in parts):
                    continue
                base = parts[-1]
                label = f"{path}:{m.name}"
                if base in _CIFAR10_PICKLE_FILES:
                    blobs.setdefault(base, (label, tf.extractfile(m).read()))
                elif (len(parts) >= 3 and parts[-3] in SPLITS and base.lower().endswith(IMAGE_EXTENSIONS)):
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
    return assemble(records, images, f"{path} (archive)")


# ====================================================================== cache
_ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")


def _cache_paths(name: str, src: _Source, cache_dir: Path) -> tuple[Path, str]:
    """(cache file, prefix shared by all cache files of this source path)."""
    prefix, state_key = cache_names(name, f"{src.kind}:{src.path}", {
        "version": CACHE_VERSION, "name": name, "kind": src.kind, "path": str(src.path),
        "files": _source_state(src)})
    return cache_dir / f"{prefix}{state_key}.npz", prefix


def _read_cache(file: Path) -> dict:
    with np.load(file, allow_pickle=False) as z:
        out = {k: np.ascontiguousarray(z[k]) for k in _ARRAY_KEYS}
        out["classes"] = [str(c) for c in z["classes"]]
    for s in SPLITS:
        x, y = out[f"{s}_x"], out[f"{s}_y"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != (len(x),):
            raise ValueError(f"unexpected {s} arrays {x.dtype}{x.shape} / {y.dtype}{y.shape}")
    return out


def _write_cache(file: Path, arrays: dict, prefix: str) -> None:
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_for(file)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: arrays[k] for k in _ARRAY_KEYS}, classes=np.asarray(arrays["classes"], dtype=str))
            sync(f)
        os.replace(tmp, file)
        tmp = None
        remove_stale(file.parent, f"{prefix}*.npz", {file.name})   # caches of older versions of the source
    except OSError as err:
        warnings.warn(f"cannot write the data cache {file} ({err}); the data set will be decoded again next time")
    finally:
        if tmp is not None:
            unlink_quietly(tmp)


def _load_arrays(name: str, src: _Source, cache_dir) -> dict:
    """Decode ``src`` (see :func:`_read_source`), through the ``.npz`` cache unless ``cache_dir is False``."""
    if cache_dir is False:
        return _read_source(src)
    try:
        file, prefix = _cache_paths(name, src, cache_folder(cache_dir))
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
