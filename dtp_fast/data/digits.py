"""scikit-learn's embedded 8x8 handwritten digits, the small data set that needs no download."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .registry import Dataset, register_dataset


@register_dataset("digits")
def _load_digits(path: Path | None = None, *, cache_dir=None) -> Dataset:
    """scikit-learn's embedded 8x8 handwritten digits: 1437 train / 360 test (stratified, seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.rint(bunch.images).astype(np.uint8)[:, None]        # (1797, 1, 8, 8), values 0..16
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=360, random_state=0, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    train01 = x[tr].astype(np.float64) / 16.0
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(x[tr])), train_y=torch.from_numpy(y[tr]),
        test_x=torch.from_numpy(np.ascontiguousarray(x[te])), test_y=torch.from_numpy(y[te]),
        classes=[str(i) for i in range(10)], scale=16.0,
        mean=(float(train01.mean()),), std=(float(train01.std()),), augment=False,
        source="sklearn.datasets.load_digits",
    )
