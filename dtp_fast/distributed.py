"""Data-parallel training with ``torch.distributed``, identical to one process.

Launch any training command under ``torchrun``::

    torchrun --nproc-per-node 4 --no-python dtp-fast train cifar10-vgg-ldrl --data ... --out runs/a

Every rank sees the same global batch order and augmentation (drawn from the
seed and the epoch) and takes its own contiguous slice of each global batch:
rows ``lo .. hi - 1`` with ``lo = floor(r m / W)`` for a batch of m rows and W
ranks. Gradients are averaged over the global batch with weights ``rows / m``
(so uneven slices of a final partial batch still give the global mean), the
feedback phase all-reduces one bucket per interleaved iteration, and the noise
of a row depends on its index in the global batch. N ranks with batch B each
therefore train the same weights as one process with batch N B, up to float
rounding, whatever N is. GPUs communicate with NCCL, CPUs with gloo.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
from typing import Sequence

import torch

__all__ = ["Distributed", "DistributedError", "init_from_env", "current"]


class DistributedError(RuntimeError):
    """A collective operation failed (another rank stopped), or the ranks disagree."""


class Distributed:
    """This process's place in a data-parallel run: ``rank`` of ``world`` processes.

    The single-process case (``world == 1``) needs no process group; every
    method then does nothing.
    """

    def __init__(self, rank: int = 0, world: int = 1, group=None):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world} processes")
        self.rank, self.world, self.group = int(rank), int(world), group
        self.comm_seconds = 0.0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: int) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of a global batch of ``rows``."""
        return self.rank * rows // self.world, (self.rank + 1) * rows // self.world

    def _collective(self, what: str, fn):
        import time

        t0 = time.perf_counter()
        try:
            return fn()
        except (RuntimeError, ValueError) as err:   # gloo / NCCL: a peer closed the connection or timed out
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed ({str(err).splitlines()[0] if str(err) else err!r})"
                f"; another rank has probably stopped (see its log)") from err
        finally:
            self.comm_seconds += time.perf_counter() - t0

    def reduce_weighted_(self, tensors: Sequence[torch.Tensor], weight: float, async_op: bool = False):
        """``t <- sum over ranks of weight_r * t_r`` for every tensor, in place, in one all-reduce
        (with ``weight = rows / global rows`` this turns per-rank means into the global mean).

        With ``async_op`` the all-reduce is started and a function is returned that waits
        for it and writes the results (call it before using the tensors); meanwhile the
        caller can compute something else. Only the time spent waiting counts as
        communication time."""
        if not self.enabled or not tensors:
            return (lambda: None) if async_op else None
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1) for t in tensors]).mul_(weight)
        work = self._collective("all-reduce", lambda: dist.all_reduce(flat, group=self.group, async_op=True))

        def finish():
            self._collective("all-reduce", work.wait)
            i = 0
            for t in tensors:
                n = t.numel()
                t.copy_(flat[i:i + n].view_as(t))
                i += n
        if async_op:
            return finish
        finish()

    def sum_(self, values: Sequence[float]) -> list[float]:
        """The sums over ranks of a few numbers (float64)."""
        if not self.enabled:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        self._collective("all-reduce", lambda: dist.all_reduce(t, group=self.group))
        return t.tolist()

    def _device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(self.group) == "nccl" \
            else torch.device("cpu")

    def check_same(self, what: str, description: dict) -> None:
        """Raise on every rank if the ranks' ``description`` (JSON-able) differ, naming the keys."""
        if not self.enabled:
            return
        import torch.distributed as dist

        mine = json.dumps(description, sort_keys=True, default=str)
        digest = hashlib.sha256(mine.encode()).hexdigest()
        everyone: list = [None] * self.world
        self._collective("comparing the configuration", lambda: dist.all_gather_object(everyone, (digest, mine),
                                                                                        group=self.group))
        bad = [r for r, (d, _) in enumerate(everyone) if d != everyone[0][0]]
        if bad:
            first = json.loads(everyone[0][1])
            other = json.loads(everyone[bad[0]][1])
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            detail = ", ".join(f"{k}: rank 0 has {first.get(k)!r}, rank {bad[0]} has {other.get(k)!r}" for k in keys)
            raise DistributedError(f"the ranks disagree on the {what} (ranks {bad} differ from rank 0): {detail}. "
                                   f"Start every rank with the same command and data")

    def broadcast_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's, in place (one flat broadcast)."""
        if not self.enabled or not tensors:
            return
        import torch.distributed as dist

        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        self._collective("broadcast", lambda: dist.broadcast(flat, 0, group=self.group))
        i = 0
        with torch.no_grad():
            for t in tensors:
                t.copy_(flat[i:i + t.numel()].view_as(t))
                i += t.numel()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            self._collective("barrier", lambda: dist.barrier(group=self.group))


def current() -> Distributed:
    """The :class:`Distributed` of the default process group (one process if there is none)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size())
    return Distributed()


def init_from_env(device: str = "auto", timeout_minutes: float = 30.0) -> tuple[Distributed, str]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment),
    once; returns it and the device this rank should use (``cuda:LOCAL_RANK`` on GPUs).

    Without ``torchrun`` (no ``WORLD_SIZE``, or 1) this is the single-process case.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    if not dist.is_available():
        raise DistributedError("this torch build has no torch.distributed; install a build with it")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if torch.cuda.device_count() <= local:
            raise DistributedError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPU(s): "
                                   f"run at most that many processes per node (--nproc-per-node)")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    elif device == "auto":
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return current(), device
