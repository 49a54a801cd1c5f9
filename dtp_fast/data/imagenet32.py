"""Downsampled ImageNet 32x32, converted once into raw ``.npy`` files that are memory-mapped.

Its 1.28 M training images (3.9 GB) are never all in memory: each split's
files are converted batch by batch into ``<cache>/imagenet32-*-{train,test}.npy``
(raw uint8 (N, 3, 32, 32), plus int64 labels) and read back as a memory map.
"""
from __future__ import annotations

import os
import shutil
import struct
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .cache import cache_folder, cache_names, file_state, remove_stale, sync, temp_file_for, unlink_quietly
from .pickles import batch_entries, unpickle
from .registry import Dataset, DatasetError, data_path, hidden, register_dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    path = data_path(path, "imagenet32", f"Expected {_IN32_LAYOUT}")
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
            children = sorted(c for c in path.iterdir() if c.is_dir() and not hidden(c.name))
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


@contextmanager
def _unreadable_as_error(f: _In32File):
    """Turns any failure to parse ``f`` (other than a DatasetError or a MemoryError) into a DatasetError."""
    try:
        yield
    except (DatasetError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - any failure to parse the file means it is broken
        what = "an .npz" if f.kind == "npz" else "a pickled batch"
        raise DatasetError(f"cannot read {f.path} as {what}: {type(err).__name__}: {err}. The file is truncated, "
                           f"corrupt or not an Imagenet32 file: download and unpack it again") from err


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
    with _unreadable_as_error(f), zipfile.ZipFile(f.path) as zf:
        names = set(zf.namelist())
        for key in ("data", "labels"):
            if f"{key}.npy" not in names:
                raise DatasetError(f"{f.path} has no '{key}' array (it holds: "
                                   f"{', '.join(sorted(n[:-4] for n in names)) or 'nothing'}); "
                                   f"not an Imagenet32 file")
        data_h = _npz_member_header(zf, "data.npy")
        labels_h = _npz_member_header(zf, "labels.npy")
    if data_h is None or labels_h is None:
        return None
    _in32_check_shapes(f, data_h[0], data_h[1], labels_h[0], labels_h[1])
    return int(data_h[0][0])


def _read_imagenet32_batch(f: _In32File) -> tuple[np.ndarray, np.ndarray]:
    """One file's images, uint8 (N, 3072) C-contiguous, and 0-based int64 labels, checked."""
    if f.kind == "npz":
        with _unreadable_as_error(f), np.load(f.path, allow_pickle=False) as z:
            missing = [k for k in ("data", "labels") if k not in z.files]
            if missing:
                raise DatasetError(f"{f.path} has no {' and no '.join(repr(k) for k in missing)} array "
                                   f"(it holds: {', '.join(z.files) or 'nothing'}); not an Imagenet32 file")
            data, labels = z["data"], z["labels"]
    else:
        try:
            blob = f.path.read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {f.path}: {err}") from err
        d = unpickle(blob, str(f.path))
        del blob
        data, labels = batch_entries(d, str(f.path), "an Imagenet32 batch")
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
    state = []
    for s, p in zip(_IN32_FILES, paths):
        try:
            state.append(file_state(files[s].path, p))
        except OSError as err:
            raise DatasetError(f"imagenet32: cannot read {files[s].path}: {err}") from err
    return cache_names("imagenet32", "\n".join(paths),
                       {"version": IMAGENET32_CACHE_VERSION, "name": "imagenet32", "files": state})


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
        fd, xtmp = temp_file_for(xfile)
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
            sync(out)
        fd, ytmp = temp_file_for(yfile)
        tmps.append(ytmp)
        with os.fdopen(fd, "wb") as out:
            np.save(out, np.concatenate(labels), allow_pickle=False)
            sync(out)
        os.replace(ytmp, yfile)
        os.replace(xtmp, xfile)
        tmps.clear()
    finally:
        for t in tmps:
            unlink_quietly(t)


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
    cdir = cache_folder(cache_dir)
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
        remove_stale(cdir, f"{prefix}*.npy", current)       # caches of older versions of the same files
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
