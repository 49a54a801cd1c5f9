import json
import sys

import pytest

from dtp_fast.api import make_run
from dtp_fast.cli import main
from dtp_fast.presets import RECIPES, normalize_settings, resolve_preset

QUICK = dict(epochs=1, limit_batches=2, batch_size=16, progress=False, diagnostics=False)


def test_paper_recipes_fix_network_dataset_and_algo():
    preset, dataset, s = resolve_preset("cifar10-vgg-bp", None)
    assert (preset.name, dataset, s["algo"]) == ("simple_vgg", "cifar10", "bp")
    preset, dataset, s = resolve_preset("imagenet32-vgg-ldrl", None)
    assert dataset == "imagenet32" and s["feedback_iters"] == [25, 35, 40, 60, 25] and s["batch_size"] == 256
    _, _, s = resolve_preset("cifar10-lenet-ldrl", None)
    assert s["noise"] == [0.4164, 0.3826, 0.1395] and s["beta"] == 0.4655
    assert set(RECIPES) == {"cifar10-vgg-ldrl", "cifar10-vgg-bp", "imagenet32-vgg-ldrl", "imagenet32-vgg-bp",
                            "cifar10-lenet-ldrl"}
    with pytest.raises(ValueError, match="unknown preset 'vgg16'.*simple_vgg.*cifar10-vgg-ldrl"):
        resolve_preset("vgg16", None)


def test_reference_implementation_names_are_aliases():
    s = normalize_settings({"feedback_training_iterations": [1, 2], "b_optim": {"lr": 0.1, "momentum": 0.5},
                            "f_optim.lr": 0.02, "max_epochs": 3, "beta": 0.4, "noise": [0.1, 0.2]})
    assert s == {"feedback_iters": [1, 2], "feedback_lr": 0.1, "feedback_momentum": 0.5, "lr": 0.02, "epochs": 3,
                 "beta": 0.4, "noise": [0.1, 0.2]}
    with pytest.raises(ValueError, match="'lr' is given twice"):
        normalize_settings({"lr": 0.1, "f_optim.lr": 0.2})


def test_per_layer_values_by_name():
    t = make_run("simple_vgg", "digits", feedback_lr={"conv_2": 0.5}, noise={"fc": 0.01}, **QUICK)
    assert t.config.feedback_lr == [0.1, 0.5, 1.0] and t.config.noise == [0.05, 0.05, 0.01]
    with pytest.raises(ValueError, match="unknown layer 'conv_9'.*conv_1, conv_2, fc"):
        make_run("simple_vgg", "digits", feedback_iters={"conv_9": 3}, **QUICK)


def test_cli_config_file_with_aliases_and_set(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"feedback_training_iterations": [2, 3], "b_optim": {"lr": 0.05}, "beta": 0.3}))
    out = tmp_path / "run"
    assert main(["train", "--preset", "mlp", "--config", str(cfg), "--set", "f_optim.lr=0.01", "--noise",
                 "fc_2=0.02", "--epochs", "1", "--limit-batches", "2", "--no-progress", "--out", str(out)]) == 0
    c = json.loads((out / "summary.json").read_text())["config"]
    assert (c["feedback_iters"], c["feedback_lr"], c["beta"], c["lr"], c["noise"]) == ([2, 3], 0.05, 0.3, 0.01,
                                                                                        [0.05, 0.02])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2


def test_tensorboard_missing_only_warns(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    t = make_run("mlp", "digits", out=tmp_path, tensorboard=True, **QUICK)
    with pytest.warns(UserWarning, match="tensorboard package is not installed"):
        summary = t.fit()
    assert summary["epochs"] == 1
