"""One-call training from a preset: what ``dtp-fast train`` runs."""
from __future__ import annotations

import dataclasses

import torch

from .data import load_dataset
from .distributed import init_from_env
from .presets import ALIASES, ARCH_KEYS, PER_LAYER_KEYS, normalize_settings, per_layer_values, resolve_preset
from .trainer import TrainConfig, Trainer

__all__ = ["make_run", "train"]

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def make_run(preset: str = "simple_vgg", dataset: str | None = None, data=None, *, out=None, resume: bool = False,
             **settings):
    """Build the network, data set and :class:`Trainer` of a preset run.

    ``preset`` is a network (``simple_vgg``, ``lenet``, ``mlp``) whose defaults
    depend on ``dataset`` (default ``digits``), or a paper experiment
    (``cifar10-vgg-ldrl``, ... see ``dtp_fast.presets.RECIPES``) that also fixes
    the data set and the algorithm. ``settings`` override the defaults: any
    :class:`TrainConfig` field (``epochs``, ``lr``, ``feedback_iters``, ...), an
    architecture setting (``channels``, ``hidden``), or the reference
    implementation's names (``feedback_training_iterations``, ``b_optim.lr``,
    ``f_optim.lr``, ...). Per-layer settings also take ``{layer name: value}``
    for just some layers. The network is initialised from ``seed``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) this joins the process group and
    puts each rank on its own GPU (``cuda:LOCAL_RANK``) or on the CPU; the
    trainer then trains data-parallel (see :mod:`dtp_fast.distributed`).
    """
    dist, device = init_from_env(settings.get("device") or "auto")
    if dist.enabled:
        settings = {**settings, "device": device}
    p, dataset, defaults = resolve_preset(preset, dataset)
    ds = load_dataset(dataset, data)
    given = normalize_settings({k: v for k, v in settings.items() if v is not None})
    merged = {**defaults, **given}
    unknown = set(merged) - _CONFIG_FIELDS - ARCH_KEYS
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}; valid: {sorted(_CONFIG_FIELDS | ARCH_KEYS)} "
                         f"and the aliases {sorted(ALIASES)}")
    arch = {k: merged.pop(k) for k in list(merged) if k in ARCH_KEYS}
    torch.manual_seed(merged.get("seed", 0))
    try:
        net = p.build(ds.in_shape, ds.num_classes, **arch)
    except TypeError as err:
        raise ValueError(f"preset {p.name!r} does not take {sorted(arch)}: {err}") from err
    for key in PER_LAYER_KEYS:
        if key in merged:
            merged[key] = per_layer_values(key, merged[key], defaults.get(key), net.feedback_names)
    config = TrainConfig(**merged)
    info = {"preset": preset, "dataset": dataset, "arch": arch}
    return Trainer(net, ds, config, out=out, resume=resume, info=info)


def train(preset: str = "simple_vgg", dataset: str | None = None, data=None, *, out=None, resume: bool = False,
          **settings) -> dict:
    """Train a preset on a data set and return the run's summary (see :func:`make_run`)."""
    return make_run(preset, dataset, data, out=out, resume=resume, **settings).fit()
