"""One-call training from a preset: what ``dtp-fast train`` runs."""
from __future__ import annotations

import dataclasses

import torch

from .data import load_dataset
from .presets import ARCH_KEYS, get_preset
from .trainer import TrainConfig, Trainer

__all__ = ["make_run", "train"]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def make_run(preset: str = "simple_vgg", dataset: str = "digits", data=None, *, out=None, resume: bool = False,
             **settings):
    """Build the network, data set and :class:`Trainer` of a preset run.

    ``settings`` override the preset's defaults for the data set: any
    :class:`TrainConfig` field (``epochs``, ``lr``, ``feedback_iters``, ...) or
    an architecture setting of the preset (``channels`` for simple_vgg/lenet,
    ``hidden`` for mlp/lenet). The network is initialised from ``seed``.
    """
    p = get_preset(preset)
    ds = load_dataset(dataset, data)
    merged = {**p.defaults(dataset), **{k: v for k, v in settings.items() if v is not None}}
    unknown = set(merged) - _CONFIG_FIELDS - ARCH_KEYS
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(_CONFIG_FIELDS | ARCH_KEYS)}")
    arch = {k: merged.pop(k) for k in list(merged) if k in ARCH_KEYS}
    config = TrainConfig(**merged)
    torch.manual_seed(config.seed)
    try:
        net = p.build(ds.in_shape, ds.num_classes, **arch)
    except TypeError as err:
        raise ValueError(f"preset {preset!r} does not take {sorted(arch)}: {err}") from err
    info = {"preset": preset, "dataset": dataset, "arch": arch}
    return Trainer(net, ds, config, out=out, resume=resume, info=info)


def train(preset: str = "simple_vgg", dataset: str = "digits", data=None, *, out=None, resume: bool = False,
          **settings) -> dict:
    """Train a preset on a data set and return the run's summary (see :func:`make_run`)."""
    return make_run(preset, dataset, data, out=out, resume=resume, **settings).fit()
