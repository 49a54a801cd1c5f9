"""The paper's augmentation: a random horizontal flip, then a random crop of the original size from the
image padded by 4 pixels with edge replication, batched on the device.

The random draws (:func:`draw_augmentation`) are separate from applying them
(:func:`augment_batch`): the loader draws a whole epoch's on the CPU.
"""
from __future__ import annotations

import torch


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
