""":class:`TorchLoader`: batches for the Trainer from a standard ``torch.utils.data`` source.

A ``DataLoader`` is used as it is (its batch size, sampler, workers and transforms; a
sampler with ``set_epoch`` is told the epoch). A map-style ``Dataset`` (torchvision's ``CIFAR10``,
``ImageFolder``, a ``TensorDataset``, ...) is batched here with the run's batch size, in an order
drawn from ``(seed, epoch)`` only, so a resumed run sees the batches an uninterrupted one would.
Items must be ``(image tensor, label)`` pairs of float images: a torchvision data set needs a
``transform`` (``transforms.ToTensor()`` and the normalisation a backprop script would use).
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from .loader import epoch_seed

__all__ = ["TorchLoader", "is_torch_source"]


def is_torch_source(obj) -> bool:
    """A ``torch.utils.data`` DataLoader or map-style Dataset (not a dtp_fast :class:`Dataset`)."""
    return isinstance(obj, (DataLoader, torch.utils.data.Dataset))


class TorchLoader:
    """The :class:`~dtp_fast.data.Loader` interface over a ``DataLoader`` or map-style ``Dataset``
    (one process: data-parallel runs take dtp_fast data sets, which shard by global sample index)."""

    def __init__(self, source, batch_size: int, *, device="cpu", dtype: torch.dtype = torch.float32,
                 shuffle: bool = True, seed: int = 0, limit_batches: int | None = None, in_shape=None,
                 num_classes: int | None = None, what: str = "training data"):
        if not is_torch_source(source):
            raise TypeError(f"{what} must be a dtp_fast data set, a torch.utils.data.DataLoader or a map-style "
                            f"torch.utils.data.Dataset, got a {type(source).__name__}")
        if isinstance(source, torch.utils.data.IterableDataset):
            raise TypeError(f"{what} is an IterableDataset: wrap it in a DataLoader (its batches are then used as "
                            f"they come)")
        self.source, self.what = source, what
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.device, self.dtype = torch.device(device), dtype
        self.limit_batches, self.in_shape = limit_batches, tuple(in_shape) if in_shape is not None else None
        self.num_classes = num_classes
        self.epoch = 0
        self._starts: list[int] = [0]

    @property
    def num_samples(self) -> int:
        data = self.source.dataset if isinstance(self.source, DataLoader) else self.source
        return len(data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        sampler = getattr(self.source, "sampler", None)
        if isinstance(self.source, DataLoader) and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)

    def _loader(self) -> DataLoader:
        if isinstance(self.source, DataLoader):
            return self.source
        order = None
        if self.shuffle:   # the order dtp_fast's own Loader draws for (seed, epoch)
            order = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(
                epoch_seed(self.seed, self.epoch))).tolist()
        return DataLoader(self.source, batch_size=self.batch_size, sampler=order)

    def __len__(self) -> int:
        n = len(self._loader())
        return n if self.limit_batches is None else min(n, self.limit_batches)

    def global_bounds(self, b: int) -> tuple[int, int]:
        """Positions ``[s, e)`` of batch ``b`` of the current epoch (known once it has been yielded)."""
        return self._starts[b], self._starts[b + 1]

    bounds = global_bounds

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._starts = [0]
        batches = iter(self._loader())
        for b in range(len(self)):
            try:
                batch = next(batches)
            except StopIteration:
                break
            except TypeError as err:       # default_collate meets items it cannot stack (PIL images, ...)
                raise ValueError(f"{self.what}: the items cannot be batched ({str(err).splitlines()[0]}); they must "
                                 f"be (image tensor, label) pairs: give the data set a transform (torchvision: "
                                 f"transforms.ToTensor() and a Normalize)") from None
            x, y = self._check(batch)
            self._starts.append(self._starts[-1] + len(y))
            yield x.to(self.device, self.dtype), y.to(self.device)

    def _check(self, batch):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"{self.what}: a batch must be an (images, labels) pair, got a {type(batch).__name__}"
                             f"{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        x, y = batch
        if not torch.is_tensor(x):
            raise ValueError(f"{self.what}: the images are {type(x).__name__}s, not tensors: give the data set a "
                             f"transform (torchvision: transforms.ToTensor() and a Normalize)")
        if not x.is_floating_point():
            raise ValueError(f"{self.what}: the images are {x.dtype} tensors; convert them to float and normalise "
                             f"them as your backprop script does (torchvision: transforms.ToTensor(), Normalize)")
        y = torch.as_tensor(y)
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"{self.what}: the labels must be integer class indices, one per image; got "
                             f"{y.dtype} of shape {tuple(y.shape)} for {len(x)} images")
        if self.in_shape is not None and tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"{self.what}: images of shape {tuple(x.shape[1:])}, but the network expects "
                             f"{self.in_shape}: build the network for this data, or resize the images")
        if self.num_classes is not None and len(y) and not 0 <= int(y.min()) <= int(y.max()) < self.num_classes:
            raise ValueError(f"{self.what}: labels from {int(y.min())} to {int(y.max())}, but the network has "
                             f"{self.num_classes} outputs: labels must be 0 .. {self.num_classes - 1}")
        return x, y.long()
