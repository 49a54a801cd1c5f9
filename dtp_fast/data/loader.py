"""The :class:`Loader`: normalised float batches of a :class:`~.registry.Dataset` split on the device.

The shuffle order and the augmentation of an epoch depend only on ``(seed,
epoch)`` (drawn on the CPU), so a resumed run sees exactly the batches an
uninterrupted one would, on any device.  Small splits are moved to the device
once; large (or memory-mapped) ones are gathered batch by batch on the CPU,
one batch ahead in a background thread, and copied over.
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import Iterator

import torch

from .augment import augment_batch, draw_augmentation
from .registry import SPLITS, Dataset, canonical_device


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the CPU generator that draws the order and augmentation of an epoch."""
    return (int(seed) * 1_000_003 + int(epoch)) % (1 << 63)


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
        if split not in SPLITS:
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
            yield self._finish(xb, aug, s, e), yb

    def _finish(self, xb: torch.Tensor, aug, s: int, e: int) -> torch.Tensor:
        """Batch ``[s, e)``'s uint8 images ``xb`` (on the device) augmented (unless ``aug`` is None) and
        normalised, as ``dtype``."""
        cdt, mul, add = self._normaliser()
        if aug is not None:
            xb = augment_batch(xb, aug[0][s:e], aug[1][s:e], aug[2][s:e], self.pad)
        xf = torch.addcmul(add, xb.to(cdt), mul)
        return xf if cdt == self.dtype else xf.to(self.dtype)

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
        order, aug = self._randomness(self.epoch)
        if aug is not None:
            aug = tuple(t.to(self.device) for t in aug)
        pin = self.device.type == "cuda" and x_all.device.type == "cpu" and y_all.device.type == "cpu"
        nb = len(self)
        bounds = [self.bounds(b) for b in range(nb)]
        # the gathering thread allocates pinned memory: on the loader's GPU, not on GPU 0
        init = dict(initializer=torch.cuda.set_device, initargs=(canonical_device(self.device),)) if pin else {}
        pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dtp-fast-loader", **init)
        nxt = None
        try:
            nxt = pool.submit(self._gather, x_all, y_all, order, *bounds[0], pin) if nb else None
            for b, (s, e) in enumerate(bounds):
                xb, yb = nxt.result()
                nxt = pool.submit(self._gather, x_all, y_all, order, *bounds[b + 1], pin) if b + 1 < nb else None
                xb = xb.to(self.device, non_blocking=pin)
                yb = yb.to(self.device, non_blocking=pin)
                yield self._finish(xb, aug, s, e), yb
        finally:
            if nxt is not None:
                nxt.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return (f"Loader({self.dataset.name}/{self.split}, batch_size={self.batch_size}, batches={len(self)}, "
                f"shuffle={self.shuffle}, augment={self.augment}, device={self.device}, epoch={self.epoch}"
                f"{', streamed' if self.streaming else ''})")
