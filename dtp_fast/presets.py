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

__all__ = ["Preset", "PRESETS", "RECIPES", "ALIASES", "Recipe", "get_preset", "resolve_preset", "normalize_settings",
           "simple_vgg", "lenet", "mlp"]


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


def lenet(in_shape=(3, 32, 32), num_classes: int = 10, channels: Sequence[int] = (32, 64), hidden: int = 512,
          bias: bool = True) -> DTPNet:
    """LeNet of the paper: 2 x [conv5x5 -> ELU -> maxpool(3, 2, 1)], fc1 (ELU), fc2; ``bias=False``: the
    forward layers without biases (the paper's theory checks)."""
    layers, c = [], in_shape[0]
    for ch in channels:
        layers += [nn.Conv2d(c, ch, 5, padding=2, bias=bias), nn.ELU(), nn.MaxPool2d(3, 2, 1)]
        c = ch
    h, w = in_shape[1], in_shape[2]
    for _ in channels:
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(c * h * w, hidden, bias=bias), nn.ELU(), nn.Linear(hidden, num_classes, bias=bias)]
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
# settings that take one value per trained feedback layer (a list, one value, or {layer: value})
PER_LAYER_KEYS = ("feedback_iters", "feedback_lr", "noise")


@dataclass
class Recipe:
    """A paper experiment: a network preset, its data set and every setting (algo included)."""
    name: str
    description: str
    preset: str
    dataset: str
    settings: dict


_PAPER_IMAGENET32_VGG = dict(
    _PAPER_CIFAR_VGG, feedback_iters=[25, 35, 40, 60, 25], lr=0.01, batch_size=256, epochs=90, t_max=None)

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("cifar10-vgg-ldrl", "CIFAR-10, SimpleVGG, L-DRL: the paper's main result", "simple_vgg", "cifar10",
           dict(_PAPER_CIFAR_VGG, algo="ldrl")),
    Recipe("cifar10-vgg-bp", "CIFAR-10, SimpleVGG, backprop baseline (same schedule)", "simple_vgg", "cifar10",
           dict(_PAPER_CIFAR_VGG, algo="bp")),
    Recipe("imagenet32-vgg-ldrl", "ImageNet 32x32, SimpleVGG, L-DRL", "simple_vgg", "imagenet32",
           dict(_PAPER_IMAGENET32_VGG, algo="ldrl")),
    Recipe("imagenet32-vgg-bp", "ImageNet 32x32, SimpleVGG, backprop baseline", "simple_vgg", "imagenet32",
           dict(_PAPER_IMAGENET32_VGG, algo="bp")),
    Recipe("cifar10-lenet-ldrl", "CIFAR-10, LeNet, L-DRL (the theory checks' network)", "lenet", "cifar10",
           dict(_PAPER_CIFAR_LENET, algo="ldrl")),
]}

# The reference implementation's hyperparameter names, so its users can bring their configs.
ALIASES = {
    "feedback_training_iterations": "feedback_iters",
    "b_optim.lr": "feedback_lr",
    "b_optim.momentum": "feedback_momentum",
    "b_optim.weight_decay": "feedback_weight_decay",
    "f_optim.lr": "lr",
    "f_optim.momentum": "momentum",
    "f_optim.weight_decay": "weight_decay",
    "scheduler.T_max": "t_max",
    "scheduler.eta_min": "eta_min",
    "max_epochs": "epochs",
    "feedback_samples_per_iteration": "feedback_samples",
    "noise_samples": "feedback_samples",
}


def normalize_settings(settings: dict) -> dict:
    """Canonical setting names: nested dicts are flattened with dots (``{"b_optim": {"lr": x}}``
    is ``b_optim.lr``) and the reference implementation's names are mapped to ours."""
    flat: dict = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and key not in PER_LAYER_KEYS and ALIASES.get(key) not in PER_LAYER_KEYS:
                walk(v, key + ".")
            else:
                flat[key] = v

    walk(settings)
    out: dict = {}
    for key, value in flat.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise ValueError(f"setting {name!r} is given twice (as {key!r} and under another name)")
        out[name] = value
    return out


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose a network ({', '.join(sorted(PRESETS))}) or a paper "
                         f"experiment ({', '.join(RECIPES)})")
    return PRESETS[name]


def resolve_preset(name: str, dataset: str | None) -> tuple[Preset, str, dict]:
    """``(network preset, data set, default settings)`` for a preset or recipe name."""
    if name in RECIPES:
        r = RECIPES[name]
        return get_preset(r.preset), dataset or r.dataset, dict(r.settings)
    p = get_preset(name)
    dataset = dataset or "digits"
    return p, dataset, p.defaults(dataset)


def per_layer_values(key: str, value, base, layers) -> list | object:
    """Expand ``{layer: value}`` over ``base`` (the preset's list or single value) for ``layers``."""
    if not isinstance(value, dict):
        return value
    if base is None:
        raise ValueError(f"{key}: values by layer name need a default for the other layers; give all of "
                         f"{', '.join(layers)}")
    full = list(base) if isinstance(base, (list, tuple)) else [base] * len(layers)
    if len(full) == 1:
        full = full * len(layers)
    if len(full) != len(layers):
        raise ValueError(f"{key}: the default has {len(full)} values but the network has {len(layers)} trainable "
                         f"feedback layers: {', '.join(layers)}")
    for name, v in value.items():
        if name not in layers:
            raise ValueError(f"{key}: unknown layer {name!r}; the trainable feedback layers are {', '.join(layers)}")
        full[layers.index(name)] = v
    return full
