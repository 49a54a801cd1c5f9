"""The paper's experiments start with their defaults: every paper preset runs a batch, and the theory
commands run at the paper's settings (fewer iterations), on a CIFAR-10 subset and generated ImageNet32 files."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dtp_fast import data
from dtp_fast.cli import main
from dtp_fast.feedback import memory
from dtp_fast.presets import RECIPES

SHARED_TARBALL = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
TRAIN_PER_CLASS, TEST_PER_CLASS = 26, 2      # 260 training images: one batch of 256 (the theory preset's)


def _random_jpeg(rng) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def cifar10_subset(tmp_path_factory) -> Path:
    """A cifar10-jpeg.tar.gz like the shared copy, with 26 train and 2 test images per class: taken from
    the shared copy when it is there, random JPEGs otherwise."""
    out = tmp_path_factory.mktemp("cifar10") / "cifar10-jpeg.tar.gz"
    want = {"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS}
    counts: dict = {}
    with tarfile.open(out, "w:gz") as dst:
        if SHARED_TARBALL.exists():
            with tarfile.open(SHARED_TARBALL, "r:gz") as src:
                for m in src:
                    parts = Path(m.name).parts
                    if not m.isfile() or len(parts) != 4 or parts[1] not in want:
                        continue
                    key = parts[1:3]
                    if counts.get(key, 0) < want[parts[1]]:
                        counts[key] = counts.get(key, 0) + 1
                        dst.addfile(m, src.extractfile(m))
        else:
            rng = np.random.default_rng(0)
            for split, n in want.items():
                for c in data.CIFAR10_CLASSES:
                    for i in range(n):
                        blob = _random_jpeg(rng)
                        info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{c}/{i:04d}.jpg")
                        info.size = len(blob)
                        dst.addfile(info, io.BytesIO(blob))
    return out


@pytest.fixture(scope="module")
def imagenet32_files(tmp_path_factory) -> Path:
    """The ten train_data_batch_*.npz files (26 images each) and val_data.npz (8 images)."""
    folder = tmp_path_factory.mktemp("imagenet32")
    rng = np.random.default_rng(1)
    for i in range(1, 11):
        np.savez(folder / f"train_data_batch_{i}.npz", data=rng.integers(0, 256, (26, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, 26), mean=np.zeros(3072))
    np.savez(folder / "val_data.npz", data=rng.integers(0, 256, (8, 3072), dtype=np.uint8),
             labels=rng.integers(1, 1001, 8))
    return folder


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_paper_presets_run_a_batch_with_their_defaults(recipe, cifar10_subset, imagenet32_files, tmp_path):
    """The README's paper command, as written but for one batch of one epoch: full width, the preset's own
    batch size, iterations and (default) feedback memory."""
    r = RECIPES[recipe]
    path = cifar10_subset if r.dataset == "cifar10" else imagenet32_files
    out = tmp_path / "run"
    # full width but for ImageNet32's L-DRL (185 iterations at batch 256): its SimpleVGG is CIFAR-10's
    narrow = ["--channels", "32,32,64,64,128"] if recipe == "imagenet32-vgg-ldrl" else []
    assert main(["train", "--preset", recipe, "--data", str(path), "--out", str(out), "--epochs", "1",
                 "--limit-batches", "1", "--no-progress", "--no-diagnostics", *narrow]) == 0
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    for key in ("batch_size", "feedback_iters", "feedback_lr", "noise", "beta", "lr"):
        assert config[key] == r.settings[key], key
    assert config["feedback_memory"] is None                  # the default budget
    if not narrow and "channels" in r.settings:
        assert summary["arch"]["channels"] == r.settings["channels"]
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(line["train_loss"])


@pytest.mark.parametrize("figure", ["gmp", "jmc"])
def test_theory_commands_at_the_paper_settings(figure, cifar10_subset, tmp_path, capsys):
    """``dtp-fast theory gmp|jmc --dataset cifar10`` with the paper preset (full-width LeNet without biases,
    one batch of 256), fewer iterations; then a second run with the same --json reuses every seed."""
    out = tmp_path / f"{figure}.json"
    argv = ["theory", figure, "--dataset", "cifar10", "--data", str(cifar10_subset), "--iterations", "4",
            "--seeds", "0", "--json", str(out), "--plot", str(tmp_path / f"{figure}.png"),
            "--markdown", str(tmp_path / f"{figure}.md")]
    assert main(argv) == 0
    r = json.loads(out.read_text())
    assert r["preset"] == "paper" and r["settings"]["batch_size"] == 256 and r["settings"]["bias"] is False
    assert r["commit"] is None or len(r["commit"]) >= 40
    assert r["machine"] and r["command"]
    if figure == "gmp":
        assert set(r["mean"]) == {"ldrl", "drl", "random", "symmetric"}
        assert list(r["mean"]["ldrl"]) == ["conv_0", "conv_1", "fc1", "fc2"]
        assert r["mean"]["symmetric"]["fc1"] < 0.1            # exact transposes
        assert r["mean"]["ldrl"]["fc2"] < 0.1                 # the output layer's target is BP's
    else:
        assert r["iterations"] == [0, 1, 2, 3, 4] and len(r["ldrl"]["angle_deg"]) == 5
        assert 0 <= r["drl"]["limit_deg"] < 90
    assert (tmp_path / f"{figure}.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / f"{figure}.md").read_text()
    assert "| L-DRL" in table and ("L-DRL, paper" in table if figure == "gmp" else "2-3 degrees" in table)
    capsys.readouterr()
    assert main(argv) == 0                                   # resumed: nothing left to run
    assert "seed 0:" not in capsys.readouterr().err
    assert json.loads(out.read_text())["per_seed"] == r["per_seed"]
    other = tmp_path / "merged.json"                          # another file, the seeds merged from the first
    assert main([*argv[:argv.index("--json")], "--json", str(other), "--merge", str(out)]) == 0
    assert "seed 0:" not in capsys.readouterr().err
    merged = json.loads(other.read_text())
    assert merged["per_seed"] == r["per_seed"]
    assert merged["origin"] == r["origin"] and r["origin"]["ldrl"]["0"]["command"] == r["command"]


def test_theory_presets_and_errors(capsys, tmp_path):
    from dtp_fast.theory import THEORY_PRESETS, theory_preset

    assert theory_preset(None, "digits").name == "quick" and theory_preset(None, "cifar10").name == "paper"
    paper = THEORY_PRESETS["paper"]
    # the official theorem_test.py: batch 256, beta 0.4655, 5,000 iterations, noise and feedback lr per layer
    assert (paper.batch_size, paper.beta, paper.gmp_iterations, paper.bias) == (256, 0.4655, 5000, False)
    assert paper.ldrl == {"lr": [1e-4, 2.5e-3, 0.01], "noise": [0.2, 0.2, 0.1]}
    with pytest.raises(SystemExit) as exc:   # a usage error, found by the option parser
        main(["theory", "gmp", "--seeds", "a,b"])
    assert exc.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert main(["theory", "gmp", "--methods", "ldrl,foo", "--iterations", "1"]) == 2
    assert "unknown gmp methods ['foo']" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert main(["theory", "jmc", "--json", str(bad)]) == 2
    assert "is not a theory result" in capsys.readouterr().err


# ---------------------------------------------------------------------- the default feedback memory budget
def test_auto_budget_is_a_share_of_available_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    assert memory.auto_memory_budget("cpu") == (2 * 2**30, 8 * 2**30)
    monkeypatch.setattr(memory, "available_memory", lambda: 11 * 2**30)    # a power of two below a quarter
    assert memory.auto_memory_budget("cpu") == (2 * 2**30, 11 * 2**30)
    monkeypatch.setattr(memory, "available_memory", lambda: 64 * 2**30)
    assert memory.auto_memory_budget("cpu")[0] == memory.AUTO_BUDGET_MAX


def test_auto_budget_grows_to_the_minimum_when_it_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 400 * 2**20)     # share: 100 MiB -> 64 MiB
    assert memory.resolve_budget("auto", "cpu", 50 * 2**20) == 64 * 2**20
    assert memory.resolve_budget("auto", "cpu", 300 * 2**20) == 300 * 2**20  # the minimum, since it fits
    with pytest.raises(ValueError, match=r"needs 500\.00 MiB but only 400\.00 MiB of cpu memory.*batch size"):
        memory.resolve_budget("auto", "cpu", 500 * 2**20)
    assert memory.resolve_budget(7, "cpu", 500) == 7 and memory.resolve_budget(None, "cpu", 500) is None


def test_auto_budget_on_a_cpu_holds_about_two_iterations(monkeypatch):
    """Larger chunks were slower on a CPU (they leave the caches): "auto" there is two iterations of every
    layer, within the share of the memory available."""
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    assert memory.resolve_budget("auto", "cpu", 10 * 2**20) == 2 * 10 * 2**20
    assert memory.resolve_budget("auto", "cpu", 1500 * 2**20) == 2 * 2**30       # the share caps it


def test_default_budget_runs_where_the_old_fixed_32_mib_failed(monkeypatch):
    """A batch whose single iteration needs more than 32 MiB trains with the default budget; an explicit
    budget that is too small still fails with the minimum named."""
    from dtp_fast.feedback import FeedbackConfig, FeedbackState, train_feedback
    from dtp_fast.noise import CounterNoise
    from dtp_fast.presets import lenet

    torch.manual_seed(0)
    net = lenet((3, 32, 32), 10, channels=(16, 32), hidden=64)
    x = torch.randn(160, 3, 32, 32)
    acts, sw = net.activations(x)
    cfg = FeedbackConfig(iterations=[2, 1, 1], lr=1e-3, noise=0.1).resolve(net.feedback_names)
    need = memory.minimum_memory_budget(net.block_list()[1:], cfg, 160, 4)
    assert need > 32 * 2**20
    for backend in ("torch", "cpp"):
        if backend == "cpp":
            from conftest import require_ext
            require_ext()
        train_feedback(net, acts, sw, cfg, FeedbackState(), CounterNoise(0), 0, backend=backend)
        with pytest.raises(ValueError, match="too small for one iteration.*minimum"):
            train_feedback(net, acts, sw, cfg, FeedbackState(), CounterNoise(0), 0, backend=backend,
                           memory_budget=32 * 2**20)


def test_available_memory_is_sane():
    from dtp_fast.utils import available_memory

    avail = available_memory()
    assert 0 < avail < 2**50


def _readme_commands() -> list[list[str]]:
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("dtp-fast "):
                cmds.append(shlex.split(line)[1:])
    return cmds


def test_readme_paper_commands_are_the_tested_ones():
    """Each paper command in the README parses as written and is one the tests above run (a paper preset,
    or the theory figures on CIFAR-10 with the paper preset)."""
    from dtp_fast.cli import build_parser

    parser = build_parser()
    train = [c for c in _readme_commands() if c[0] == "train" and "--preset" in c
             and c[c.index("--preset") + 1] in RECIPES]
    theory = [c for c in _readme_commands() if c[0] == "theory" and "cifar10" in c]
    assert train and theory
    for cmd in train + theory:
        args = parser.parse_args(cmd)
        if cmd[0] == "theory":
            assert args.dataset == "cifar10" and args.preset in (None, "paper") and args.figure in ("gmp", "jmc")
