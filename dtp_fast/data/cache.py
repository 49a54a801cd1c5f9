"""Where decoded data sets are cached, how cache files are named, and writing them safely.

Shared by the ``.npz`` cache of CIFAR-10 (:mod:`.cifar10`) and the
memory-mapped ``.npy`` cache of Imagenet32 (:mod:`.imagenet32`).  A cache
file is named ``<name>-<path key>-<state key>...``: the path key hashes where
the source files are, the state key also their sizes and modification times,
so a changed source gets a new file and the older ones of the same path
(same prefix) are removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CACHE_ENV = "DTP_FAST_CACHE"          # where decoded arrays are cached


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dtp_fast"


def cache_folder(cache_dir) -> Path:
    """The folder a loader's ``cache_dir`` argument names (None: :func:`default_cache_dir`)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_names(name: str, path_id: str, state: dict) -> tuple[str, str]:
    """(prefix shared by all caches of the source ``path_id``, key of its current ``state``)."""
    path_key = hashlib.sha256(path_id.encode()).hexdigest()[:12]
    state_key = hashlib.sha256(json.dumps(state, separators=(",", ":")).encode()).hexdigest()[:20]
    return f"{name}-{path_key}-", state_key


def file_state(entry, name: str) -> list:
    """Cheap fingerprint of a file (a Path or an os.DirEntry): ``[name, size, mtime_ns]``."""
    st = entry.stat()
    return [name, st.st_size, st.st_mtime_ns]


def temp_file_for(target: Path) -> tuple[int, str]:
    """A new temporary file beside ``target`` (to be moved onto it once complete): (fd, path)."""
    return tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".tmp")


def sync(f) -> None:
    """Flush an open file to the disk."""
    f.flush()
    os.fsync(f.fileno())


def unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_stale(folder: Path, pattern: str, keep: set[str]) -> None:
    """Delete the files ``folder/pattern`` not named in ``keep`` (caches of older versions of a source)."""
    for old in folder.glob(pattern):
        if old.name not in keep:
            unlink_quietly(old)
