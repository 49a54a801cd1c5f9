"""The paper's networks (and a small MLP), with their training settings.

A preset is an architecture (built for a given input shape and number of
classes) plus default hyperparameters per data set. ``simple_vgg`` and
``lenet`` on CIFAR-10 carry the paper's settings (ALGORITHM.md section 4);
on the embedded ``digits`` set they carry settings tuned for its 8x8 images
(much larger feedback learning rates: a digits run has a few hundred
batches, the paper's CIFAR-10 run 35,000).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from torch import nn

from .blocks import DTPNet, from_sequential

__all__ = ["Preset", "PRESETS", "get_preset", "simple_vgg", "lenet", "mlp"]


def simple_vgg_sequential(in_shape, num_classes: int, channels: Sequence[int] = (128, 128, 256, 256, 512)) -> nn.Sequential:
    layers, c = [], in_shape[0]
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 3, padding=1), nn.ELU(), nn.MaxPool2d(2, 2)]
        c = ch
    h, w = in_shape[1] >> len(channels), in_shape[2] >> len(channels)
    if h < 1 or w < 1:
        raise ValueError(f"simple_vgg with {len(channels)} conv blocks halves the image {len(channels)} times; "
                         f"input {tuple(in_shape)} is too small: pass fewer channels")
    layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes)]
    return nn.Sequential(*layers)


def simple_vgg(in_shape=(3, 32, 32), num_classes: int = 10, channels: Sequence[int] = (128, 128, 256, 256, 512)) -> DTPNet:
    """SimpleVGG: conv3x3 -> ELU -> maxpool(2, 2) per entry of ``channels``, then Linear."""
    seq = simple_vgg_sequential(in_shape, num_classes, channels)
    return from_sequential(seq, in_shape, names=[f"conv_{i}" for i in range(len(channels))] + ["fc"])


def lenet(in_shape=(3, 32, 32), num_classes: int = 10, channels: Sequence[int] = (32, 64), hidden: int = 512) -> DTPNet:
    """LeNet of the paper: 2 x [conv5x5 -> ELU -> maxpool(3, 2, 1)], fc1 (ELU), fc2."""
    layers, c = [], in_shape[0]
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 5, padding=2), nn.ELU(), nn.MaxPool2d(3, 2, 1)]
        c = ch
    h, w = in_shape[1], in_shape[2]
    for _ in channels:
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ELU(), nn.Linear(hidden, num_classes)]
    names = [f"conv_{i}" for i in range(len(channels))] + ["fc1", "fc2"]
    return from_sequential(nn.Sequential(*layers), in_shape, names=names)


def mlp(in_shape=(1, 8, 8), num_classes: int = 10, hidden: Sequence[int] = (256, 256), act: str = "elu") -> DTPNet:
    """Flatten -> [Linear -> act] per hidden width -> Linear."""
    acts = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}
    if act not in acts:
        raise ValueError(f"unknown activation {act!r}; choose one of {sorted(acts)}")
    d = 1
    for s in in_shape:
        d *= s
    layers = [nn.Flatten()] if len(in_shape) > 1 else []
    for width in hidden:
        layers += [nn.Linear(d, width), acts[act]()]
        d = width
    layers.append(nn.Linear(d, num_classes))
    names = [f"fc_{i}" for i in range(len(hidden) + 1)]
    return from_sequential(nn.Sequential(*layers), in_shape, names=names)


# Hyperparameters of ALGORITHM.md section 4 (CIFAR-10) ---------------------------------
_PAPER_CIFAR_VGG = dict(
    channels=[128, 128, 256, 256, 512],
    feedback_iters=[20, 30, 35, 55, 20], feedback_lr=[1e-4, 3.5e-4, 8e-3, 8e-3, 0.18],
    noise=[0.4, 0.4, 0.2, 0.2, 0.08], beta=0.7, lr=0.05, momentum=0.9, weight_decay=1e-4,
    t_max=85, eta_min=1e-5, batch_size=128, epochs=90,
)
_PAPER_CIFAR_LENET = dict(
    feedback_iters=[41, 51, 24], feedback_lr=[7.19e-4, 1.25e-4, 3.54e-2],
    noise=[0.4164, 0.3826, 0.1395], beta=0.4655, lr=0.03618, momentum=0.9, weight_decay=1e-4,
    batch_size=128, epochs=90, t_max=85, eta_min=1e-5,
)


@dataclass
class Preset:
    name: str
    description: str
    build: Callable[..., DTPNet]
    settings: dict = field(default_factory=dict)  # data set name -> training settings

    def defaults(self, dataset: str) -> dict:
        """Training settings for ``dataset`` (the first entry is the fallback)."""
        if dataset in self.settings:
            return dict(self.settings[dataset])
        return dict(next(iter(self.settings.values())))


PRESETS: dict[str, Preset] = {
    "simple_vgg": Preset(
        "simple_vgg", "SimpleVGG: conv3x3-ELU-maxpool blocks then Linear (paper: CIFAR-10, ImageNet32)",
        simple_vgg,
        {
            "cifar10": _PAPER_CIFAR_VGG,
            "digits": dict(channels=[32, 64, 128], feedback_iters=[20, 20, 20], feedback_lr=[0.1, 0.3, 1.0],
                           noise=[0.05, 0.05, 0.05], beta=0.5, lr=0.05, momentum=0.9, weight_decay=1e-4,
                           batch_size=32, epochs=8, eta_min=1e-5),
        }),
    "lenet": Preset(
        "lenet", "LeNet: 2 conv5x5-ELU-maxpool(3,2,1) blocks, fc1 (ELU), fc2 (paper's theory checks)",
        lenet,
        {
            "cifar10": _PAPER_CIFAR_LENET,
            "digits": dict(hidden=256, feedback_iters=[20, 20, 20], feedback_lr=[0.03, 0.1, 0.5],
                           noise=[0.1, 0.05, 0.05], beta=0.5, lr=0.03, momentum=0.9, weight_decay=1e-4,
                           batch_size=32, epochs=8, eta_min=1e-5),
        }),
    "mlp": Preset(
        "mlp", "MLP: Flatten, Linear-ELU hidden blocks, Linear output",
        mlp,
        {
            "digits": dict(hidden=[256, 256], feedback_iters=[20, 20], feedback_lr=[0.1, 0.3], noise=[0.05, 0.05],
                           beta=0.5, lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=32, epochs=15,
                           eta_min=1e-5),
        }),
}

# keys of a preset's settings that shape the network rather than the training
ARCH_KEYS = {"channels", "hidden"}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
