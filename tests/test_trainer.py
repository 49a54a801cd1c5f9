import copy
import json
import os

import pytest
import torch

import dtp_fast
from dtp_fast.api import make_run
from dtp_fast.cli import main
from dtp_fast.trainer import NonFiniteLossError
from dtp_fast.utils import atomic_save

QUICK = dict(epochs=2, limit_batches=3, batch_size=16, progress=False, diagnostics=False)


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.net.state_dict().items()}


@pytest.mark.parametrize("algo", ["ldrl", "bp"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, algo):
    full = make_run("lenet", "digits", algo=algo, out=tmp_path / "full", **QUICK)
    full.fit()
    part = make_run("lenet", "digits", algo=algo, out=tmp_path / "part", **QUICK)
    part.fit(stop_after=1)  # as if the job had been killed after epoch 1
    resumed = make_run("lenet", "digits", algo=algo, out=tmp_path / "part", resume=True, **QUICK)
    assert resumed.epoch == 1 and resumed.step == 3
    summary = resumed.fit()
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if algo == "ldrl":  # the feedback optimiser's momentum survives the checkpoint too
        for k, v in full.fb_state.buffers.items():
            assert torch.equal(v, resumed.fb_state.buffers[k])
    assert summary["epochs"] == 2 and summary["steps"] == 6
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_existing_run_is_not_overwritten(tmp_path):
    make_run("mlp", "digits", out=tmp_path, **{**QUICK, "epochs": 1}).fit()
    with pytest.raises(FileExistsError, match="--resume"):
        make_run("mlp", "digits", out=tmp_path, **QUICK)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_run("mlp", "digits", out=tmp_path / "empty", resume=True, **QUICK)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    make_run("mlp", "digits", out=tmp_path, **{**QUICK, "epochs": 1}).fit()
    ckpt = tmp_path / "checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.warns(UserWarning, match="feedback_lr"):
        t = make_run("mlp", "digits", out=tmp_path, resume=True, **{**QUICK, "feedback_lr": 1e12})
    with pytest.raises(NonFiniteLossError, match="last good checkpoint .* after epoch 1"):
        t.fit()
    assert ckpt.read_bytes() == before
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


def test_atomic_save_keeps_the_old_file_on_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    atomic_save({"a": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": 2}, path)
    monkeypatch.undo()
    assert torch.load(path) == {"a": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"3 trainable feedback layer\(s\): conv_1, conv_2, fc"):
        make_run("simple_vgg", "digits", feedback_iters=[1, 2], **QUICK)
    with pytest.raises(ValueError, match="unknown preset 'resnet'"):
        make_run("resnet", "digits")
    with pytest.raises(ValueError, match="unknown feedback backend 'fast'"):
        make_run("mlp", "digits", backend="fast", **QUICK)
    with pytest.raises(ValueError, match="unknown setting"):
        make_run("mlp", "digits", learning_rate=0.1)
    with pytest.raises(ValueError, match="unknown algo"):
        make_run("mlp", "digits", algo="dtpx")
    net = dtp_fast.mlp((3, 32, 32), 10, hidden=[8])
    with pytest.raises(ValueError, match=r"shape \(1, 8, 8\) but the network expects \(3, 32, 32\)"):
        dtp_fast.Trainer(net, dtp_fast.load_dataset("digits"))


def test_ldrl_trains_digits_above_chance_and_reports_diagnostics(tmp_path):
    summary = make_run("mlp", "digits", out=tmp_path, epochs=2, progress=False).fit()
    assert summary["test_accuracy"] > 0.8
    assert set(summary["alignment"]) == {"fc_1", "fc_2"}
    for a in summary["alignment"].values():
        assert a["angle_deg"] < 45  # from ~90 at initialisation
    assert summary["gradient_angle_deg"]["fc_2"] < 1  # the last layer's DTP update is the BP gradient
    assert summary["feedback_seconds"] > 0 and summary["forward_seconds"] > 0


def test_cli_train_writes_metrics_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--preset", "mlp", "--epochs", "1", "--limit-batches", "2", "--out", str(out),
               "--no-progress", "--feedback-iters", "2", "--json"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("algo", "dataset", "backend", "epochs", "test_accuracy", "images_per_second",
                "feedback_seconds", "forward_seconds", "alignment"):
        assert key in summary, key
    assert summary["algo"] == "ldrl" and summary["dataset"] == "digits"
    assert summary["backend"] == dtp_fast.feedback.resolve_backend("auto", "cpu")  # the fastest usable one
    assert 0 <= summary["test_accuracy"] <= 1
    assert set(summary["alignment"]["fc_1"]) == {"angle_deg", "distance"}
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert json.loads(capsys.readouterr().out)["epochs"] == 1
    # resume with a larger epoch count: settings come from the run's config.json
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["config"]["feedback_iters"] == [2]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["train", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["train", "--preset", "mlp", "--noise", "0.1,0.1,0.1", "--out", str(tmp_path)]) == 2
    assert "fc_1, fc_2" in capsys.readouterr().err


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--preset", "--dataset", "--data", "--algo", "--epochs", "--batch-size", "--limit-batches",
                "--backend", "--device", "--seed", "--out", "--resume", "--feedback-iters", "--noise"):
        assert opt in text, opt


def test_cli_info_json(capsys, monkeypatch):
    for k in [k for k in os.environ if k.startswith("DTP_FAST_") or k == "OMP_NUM_THREADS"]:
        monkeypatch.delenv(k)
    assert main(["info"]) == 0
    assert "settings: no DTP_FAST_* or OMP_NUM_THREADS variable set" in capsys.readouterr().out
    monkeypatch.setenv("DTP_FAST_POOLED_CHAIN", "1")   # the settings in effect are shown
    assert main(["info"]) == 0
    assert "settings: DTP_FAST_POOLED_CHAIN=1\n" in capsys.readouterr().out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["environment"] == {"DTP_FAST_POOLED_CHAIN": "1"}
    assert info["backends"]["cpu"]["reference"]["usable"] is True
    assert "torch" in info["versions"]
    assert "available" in info["compiled_extension"]
    mem = info["feedback_memory_mib"]["cpu"]
    assert 0 < mem["auto_budget"] <= mem["available"] / 4 + 0.1


def test_train_step_needs_neither_a_data_set_nor_a_stopwatch():
    """The public one-batch step: a Trainer built without a data set, fed one batch by hand, trains the
    same weights as the epoch loop on that batch; the loop-only methods say what they need."""
    with_data = make_run("lenet", "digits", algo="ldrl", epochs=1, limit_batches=1, batch_size=16, progress=False,
                         diagnostics=False, augment=False)
    bare = dtp_fast.Trainer(copy.deepcopy(with_data.net), None, with_data.config)
    with_data.train_loader.set_epoch(0)
    x, y = next(iter(with_data.train_loader))
    record = bare.train_step(x.float(), y)      # moved to the trainer's dtype and device by train_step
    with_data.train_epoch()
    assert bare.step == with_data.step == 1 and set(record) == {"loss", "correct", "feedback"}
    assert set(record["feedback"]) == set(bare.net.feedback_names)
    for k, v in with_data.net.state_dict().items():
        assert torch.equal(v, bare.net.state_dict()[k]), k
    with pytest.raises(ValueError, match="needs a data set"):
        bare.fit()
    with pytest.raises(ValueError, match="needs a data set"):
        bare.evaluate()


def test_feedback_iterations_are_counted_per_epoch_and_over_a_resumed_run(tmp_path):
    """metrics.jsonl records the feedback iterations spent per layer each epoch; summary.json their totals,
    across a resume (the counts live in the checkpoint); backprop spends none."""
    part = make_run("lenet", "digits", algo="ldrl", out=tmp_path / "run", **QUICK)
    part.fit(stop_after=1)
    resumed = make_run("lenet", "digits", algo="ldrl", out=tmp_path / "run", resume=True, **QUICK)
    summary = resumed.fit()
    paper = {name: hp.iterations for name, hp in zip(resumed.net.feedback_names, resumed.fb_hparams)}
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["feedback_iterations"] for line in lines] == [{k: 3 * v for k, v in paper.items()}] * 2
    assert summary["feedback_iterations"] == {"total": 6 * sum(paper.values()),
                                              "per_layer": {k: 6 * v for k, v in paper.items()},
                                              "share_of_configured": 1.0}
    bp = make_run("lenet", "digits", algo="bp", out=tmp_path / "bp", **QUICK).fit()
    assert bp["feedback_iterations"] == {"total": 0, "per_layer": {}, "share_of_configured": None}


class _Planted:
    """A pickle that runs a command when loaded without weights_only (what an attacker would plant)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_planted_checkpoint_runs_no_code_on_resume_or_in_sweep(tmp_path):
    """A checkpoint.pt whose pickle would call os.system: --resume and sweep's inspection of the folder refuse it
    with a message that says it is not a dtp_fast checkpoint, and the command never runs."""
    from dtp_fast.sweep import SweepError, _stored
    from dtp_fast.utils import CheckpointError

    run = tmp_path / "run"
    first = make_run("lenet", "digits", algo="ldrl", out=run, **dict(QUICK, epochs=1))
    first.fit()
    marker = tmp_path / "pwned"
    torch.save({"net": _Planted(marker)}, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a dtp_fast checkpoint.*nothing in it ran"):
        make_run("lenet", "digits", algo="ldrl", out=run, resume=True, **QUICK)
    (run / "summary.json").unlink()                  # sweep then inspects the checkpoint itself
    with pytest.raises(SweepError, match="not a dtp_fast checkpoint"):
        _stored(run)
    assert not marker.exists()
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="unreadable"):
        make_run("lenet", "digits", algo="ldrl", out=run, resume=True, **QUICK)


def test_a_resume_applies_the_settings_it_records(tmp_path):
    """--resume --lr X (and momentum, weight decay): the optimizer uses them from the resumed epoch on, on the
    cosine schedule's current position, and the metrics record the learning rate that was used."""
    import math
    import shutil

    kw = dict(QUICK, epochs=3)
    make_run("lenet", "digits", algo="bp", out=tmp_path / "r", **kw).fit(stop_after=1)
    shutil.copytree(tmp_path / "r", tmp_path / "plain")
    plain = make_run("lenet", "digits", algo="bp", out=tmp_path / "plain", resume=True, **kw)
    base = plain.config.lr
    with pytest.warns(UserWarning, match=f"lr: {base} -> 0.01"):
        changed = make_run("lenet", "digits", algo="bp", out=tmp_path / "r", resume=True,
                           **dict(kw, lr=0.01, momentum=0.5, weight_decay=0.0))
    group, eta = changed.optimizer.param_groups[0], changed.config.eta_min
    resumed_lr = eta + (0.01 - eta) * (1 + math.cos(math.pi / 3)) / 2
    assert group["lr"] == pytest.approx(resumed_lr)
    assert (group["momentum"], group["weight_decay"]) == (0.5, 0.0)
    assert plain.optimizer.param_groups[0]["lr"] == pytest.approx(eta + (base - eta) * (1 + math.cos(math.pi / 3)) / 2)
    changed.fit()
    plain.fit()                                           # the same epochs with the checkpoint's settings
    lines = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["lr"] == pytest.approx(base) and lines[1]["lr"] == pytest.approx(resumed_lr)
    assert any(not torch.equal(v, plain.net.state_dict()[k]) for k, v in changed.net.state_dict().items())


def test_a_folder_with_metrics_but_no_checkpoint_is_not_reused(tmp_path):
    """What a crash during the first save leaves (metrics.jsonl, no checkpoint.pt): a new run does not append to
    it; the error names the files and the fix."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1, "algo": "bp"}\n')
    with pytest.raises(FileExistsError, match="metrics.jsonl of an earlier run that saved no checkpoint.*delete"):
        make_run("lenet", "digits", algo="ldrl", out=out, **QUICK)
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1, "algo": "bp"}\n'


@pytest.mark.parametrize("settings, word", [
    (dict(epochs="2"), "epochs must be an integer >= 1"),
    (dict(lr=None), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(lr=float("inf")), "lr must be a finite number > 0"),
    (dict(batch_size=16.5), "batch_size must be an integer >= 1"),
    (dict(feedback_iters="20"), "feedback_iters must be an integer or a list"),
    (dict(feedback_lr=[0.1, "x"]), "feedback_lr must be a number or a list"),
    (dict(momentum=1.0), "momentum must be a number in"),
    (dict(limit_batches=0), "limit_batches must be an integer >= 1 or None"),
])
def test_train_config_checks_types_and_ranges(settings, word):
    with pytest.raises(ValueError, match=word):     # at construction
        dtp_fast.TrainConfig(**settings)
    config = dtp_fast.TrainConfig()
    for key, value in settings.items():                # and when changed afterwards, by validate()
        setattr(config, key, value)
    with pytest.raises(ValueError, match=word):
        config.validate()


def test_a_dict_is_not_a_config():
    net = dtp_fast.lenet((1, 8, 8), 10)
    with pytest.raises(TypeError, match="config must be a TrainConfig, got a dict"):
        dtp_fast.Trainer(net, None, {"epochs": 2})


def test_a_full_disk_keeps_the_last_checkpoint_and_says_so(tmp_path, monkeypatch):
    """The checkpoint of epoch 2 cannot be written (torch's error for a full disk): one OSError naming the file,
    the intact checkpoint of epoch 1 and the fix; no metrics line for the unsaved epoch; --resume continues."""
    import dtp_fast.utils as utils

    run = make_run("lenet", "digits", algo="bp", out=tmp_path / "r", **QUICK)
    real = utils.torch.save
    calls = []

    def full(obj, fh):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real(obj, fh)

    monkeypatch.setattr(utils.torch, "save", full)
    with pytest.raises(OSError, match="could not write the checkpoint of epoch 2 .*file write failed.*checkpoint "
                                      "of epoch 1 is intact.*--resume"):
        run.fit()
    monkeypatch.undo()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # no temp file
    resumed = make_run("lenet", "digits", algo="bp", out=tmp_path / "r", resume=True, **QUICK)
    assert resumed.epoch == 1 and resumed.fit()["epochs"] == 2


def test_the_files_of_a_run_share_one_mode(tmp_path):
    """checkpoint.pt and summary.json (written atomically) get the mode every other file of the run gets."""
    import os
    import stat

    make_run("lenet", "digits", algo="bp", out=tmp_path / "r", **dict(QUICK, epochs=1)).fit()
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (tmp_path / "r").iterdir()}
    assert set(modes) == {"checkpoint.pt", "metrics.jsonl", "summary.json"} and len(set(modes.values())) == 1, modes


_KILLED_RUN = """
import os, signal, sys
import dtp_fast.utils as utils
from dtp_fast.api import make_run

where, out = sys.argv[1], sys.argv[2]
if where == "batch":             # SIGKILL in the middle of step 4 (epoch 2): after its feedback phase
    import dtp_fast.trainer as trainer
    real_feedback = trainer.train_feedback
    def feedback(*a, **k):
        stats = real_feedback(*a, **k)
        if a[6] == 4:            # the step
            os.kill(os.getpid(), signal.SIGKILL)
        return stats
    trainer.train_feedback = feedback
else:                            # SIGKILL half-way through writing the checkpoint of epoch 2
    real_save = utils.torch.save
    calls = []
    def save(obj, fh):
        calls.append(1)
        if len(calls) == 2:
            fh.write(b"PK" * 1000)
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, fh)
    utils.torch.save = save
make_run("lenet", "digits", algo="ldrl", out=out, epochs=3, limit_batches=3, batch_size=16, progress=False,
         diagnostics=False).fit()
"""


@pytest.mark.parametrize("where", ["batch", "checkpoint"])
def test_kill_9_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, where):
    """SIGKILL in the middle of a batch, or in the middle of writing a checkpoint, then --resume: the same
    weights, feedback momentum and metrics as a run that was never interrupted."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, where, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert len(list(out.glob(".checkpoint.pt.*.tmp"))) == (where == "checkpoint")   # what the kill left
    kw = dict(epochs=3, limit_batches=3, batch_size=16, progress=False, diagnostics=False)
    resumed = make_run("lenet", "digits", algo="ldrl", out=out, resume=True, **kw)
    assert resumed.epoch == 1
    resumed.fit()
    full = make_run("lenet", "digits", algo="ldrl", out=tmp_path / "full", **kw)
    full.fit()
    for k, v in full.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    for k, v in full.fb_state.buffers.items():
        assert torch.equal(v, resumed.fb_state.buffers[k]), k
    assert list(out.glob("*.tmp")) + list(out.glob(".*.tmp")) == []                   # cleaned up by the resume


def test_the_summary_names_the_commit_the_run_started_from(monkeypatch):
    """A checkout that moves on while a run trains (a long run, a busy repository) does not relabel it."""
    import itertools

    import dtp_fast.trainer as trainer_mod

    commits = itertools.count()
    monkeypatch.setattr(trainer_mod, "origin", lambda: {"command": "c", "commit": f"commit{next(commits)}",
                                                        "machine": "m", "date": "d"})
    trainer = make_run("lenet", "digits", algo="bp", **{**QUICK, "epochs": 1})
    assert trainer.fit()["commit"] == "commit0"
