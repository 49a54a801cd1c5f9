"""Peak memory of one call, on a CUDA device or the CPU (used by ``dtp-fast bench``)."""
from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from typing import Callable

import torch

__all__ = ["memory_method", "peak_memory", "synchronize"]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_LIBC = None


def _malloc_trim() -> None:
    """Hand freed heap memory back to the OS (glibc), so RSS is a meaningful baseline."""
    global _LIBC
    if _LIBC is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def _status_kib(key: str) -> int | None:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def _can_reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmHWM") is not None and _status_kib("VmRSS") is not None
    except OSError:
        return False


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return "cuda_max_memory_allocated"
    if _can_reset_hwm():
        return "proc_vmhwm"
    return "getrusage_maxrss"


def peak_memory(fn: Callable[[], object], device: torch.device, method: str) -> int:
    """Peak memory in bytes that ``fn()`` adds on top of what was in use before it.

    ``cuda_max_memory_allocated``: the CUDA caching allocator's peak minus what
    was allocated before. ``proc_vmhwm``: the kernel's resident-set high-water
    mark (VmHWM, reset through /proc/self/clear_refs) minus VmRSS before.
    ``getrusage_maxrss``: growth of the process's lifetime peak RSS, a lower
    bound (0 when the process peaked higher earlier).
    """
    _malloc_trim()
    if method == "cuda_max_memory_allocated":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if method == "proc_vmhwm":
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _status_kib("VmRSS")
        fn()
        return max(0, (_status_kib("VmHWM") - before) * 1024)
    before = _maxrss_bytes()
    fn()
    return max(0, _maxrss_bytes() - before)
