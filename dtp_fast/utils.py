"""Small shared helpers: atomic file writes, devices, timing, versions."""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["available_memory", "cpu_name", "machine_name", "git_commit", "positive_int", "atomic_save", "atomic_write_text", "atomic_write_json", "resolve_device", "Stopwatch", "versions"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())    # mkstemp's 0600 -> what open() gives every other file of the run
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


class CheckpointError(ValueError):
    """A file that is not a readable dtp_fast checkpoint (the message names it and says why)."""


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint without running anything it holds: ``torch.load(..., weights_only=True)``, which
    only rebuilds tensors and plain containers and numbers. A file whose pickle asks for anything else (code
    to run, foreign classes), a truncated or unreadable file, or one that holds no dict raises
    :class:`CheckpointError` naming the file."""
    import pickle

    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path} is not a dtp_fast checkpoint: it holds objects a checkpoint never contains, "
                              f"so it was not loaded (nothing in it ran). Delete it or check where it came from. "
                              f"({str(err).splitlines()[0]})") from None
    except Exception as err:  # noqa: BLE001 - truncated, not a zip, permissions, ...
        raise CheckpointError(f"the checkpoint {path} is unreadable ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a dtp_fast checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    return ckpt


def atomic_write_text(text: str, path) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def atomic_write_json(obj, path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available "
                         f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} was requested but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


class Stopwatch:
    """Accumulates wall time per named phase, synchronising CUDA so GPU work is counted
    (``sync=False``: no synchronisation, for callers that do not read the times)."""

    def __init__(self, device: torch.device, sync: bool = True):
        self.device = torch.device(device)
        self.cuda = sync and self.device.type == "cuda"
        self.totals: dict[str, float] = {}

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)   # its device, not the current one

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


def _read_int(path) -> int | None:
    try:
        text = Path(path).read_text().split()
        return int(text[0]) if text and text[0].isdigit() else None
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes of host memory this process can still take: the kernel's MemAvailable, lowered to what
    is left under a cgroup (container) memory limit if there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 4 * 2**30   # no way to tell (macOS, Windows): assume a modest machine
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            avail = min(avail, max(0, limit - usage))
            break
    return avail


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_name() -> str:
    """What results files record of the machine: the CPU and its cores, and the GPU if there is one."""
    name = f"{cpu_name()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        name += f", {torch.cuda.get_device_name()}"
    return name


def is_int(v) -> bool:
    """An integer setting (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A finite real setting (an int or a float, not a bool, not nan or inf)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def git_commit() -> str | None:
    """The commit of the dtp_fast checkout being run (with ``+dirty`` for local changes), or None."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def command_line() -> str:
    """The command this process runs, as a user would type it again: ``dtp-fast ...`` for the CLI
    (also under ``python -m dtp_fast.cli``), else ``python <script> ...``."""
    import shlex
    import sys

    argv = list(sys.argv) or [""]
    prog = os.path.basename(argv[0])
    if prog == "dtp-fast" or argv[0].endswith(os.path.join("dtp_fast", "cli", "__main__.py")):
        head = ["dtp-fast"]
    else:
        head = ["python", os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]]
    return shlex.join(head + argv[1:])


def settings_from_environment() -> dict:
    """The environment variables that change what dtp_fast runs (``DTP_FAST_*``: backends' switches such as
    ``DTP_FAST_POOLED_CHAIN`` or ``DTP_FAST_NO_AVX512``) or how fast (``OMP_NUM_THREADS``), as set here."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("DTP_FAST_") or k == "OMP_NUM_THREADS"}


def origin() -> dict:
    """What a results file records of where it came from: ``command``, ``commit``, ``machine``, ``date``
    (UTC) and ``environment`` (:func:`settings_from_environment`)."""
    import datetime

    return {"command": command_line(), "commit": git_commit(), "machine": machine_name(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": settings_from_environment()}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v
