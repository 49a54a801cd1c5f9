"""`dtp-fast sweep` and `dtp-fast report` (dtp_fast.sweep, dtp_fast.report, dtp_fast.cli) on tiny digits runs."""
import argparse
import json
import re
import shutil
import statistics
import sys

import pytest

import dtp_fast.api
from dtp_fast import report
from dtp_fast.cli import report as report_cli
from dtp_fast.cli import sweep as sweep_cli
from dtp_fast.cli.common import parse_set

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--preset", "mlp", "--dataset", "digits", "--epochs", "2", "--limit-batches", "3"]
RUNS = ["ldrl-seed0", "ldrl-seed1", "bp-seed0", "bp-seed1"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One real sweep (2 algos x 2 seeds, 2 epochs of 3 batches), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    rc = sweep_cli.main(QUICK + ["--seeds", "0,1", "--algos", "ldrl,bp", "--out", str(out), "--set", "feedback_iters=2"])
    assert rc == 0
    return out


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _no_train(*args, **kwargs):
    raise AssertionError("train() was called for a finished run")


def test_sweep_trains_every_algo_and_seed_and_writes_the_report(swept):
    for name in RUNS:
        s = _summary(swept / name)
        algo, seed = name.split("-seed")
        assert s["algo"] == algo and s["config"]["seed"] == int(seed) and s["epochs"] == 2
        assert s["config"]["limit_batches"] == 3 and s["config"]["progress"] is False
        assert s["config"]["feedback_iters"] == 2
        lines = (swept / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    for name in report.FIGURES:
        assert (swept / name).read_bytes()[:8] == PNG_MAGIC, name

    md = (swept / "report.md").read_text()
    main_table = md.split("## ")[0]
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| mlp \| digits \| (ldrl|bp) \|.*$", main_table, re.M)}
    assert set(rows) == {"ldrl", "bp"}
    for algo, row in rows.items():
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == "2" and cells[5] == "2"          # seeds, epochs
        assert "± " in cells[6] and "± " in cells[7]        # top-1, top-5 mean ± std
        assert "n/a" not in cells[6]
    assert rows["bp"].rstrip("| ").endswith("-")            # no feedback share for backprop
    assert rows["ldrl"].rstrip(" |").endswith("%")
    assert "## Feedback weight alignment" in md and "| mlp | digits | ldrl | fc_1 |" in md
    for name in report.FIGURES:
        assert f"]({name})" in md
    assert "[ldrl-seed0](ldrl-seed0/)" in md

    rep = json.loads((swept / "report.json").read_text())
    assert rep["n_runs"] == 4 and rep["figures"] == list(report.FIGURES)
    groups = {g["algo"]: g for g in rep["groups"]}
    assert set(groups) == {"ldrl", "bp"}
    for algo, g in groups.items():
        sums = [_summary(swept / f"{algo}-seed{s}") for s in (0, 1)]
        accs = [s["test_accuracy"] for s in sums]
        assert g["n_runs"] == 2 and g["seeds"] == [0, 1] and g["epochs"] == [2]
        assert g["runs"] == [f"{algo}-seed0", f"{algo}-seed1"]
        assert g["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(accs))
        assert g["test_accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        assert g["test_top5"]["mean"] == pytest.approx(statistics.fmean(s["test_top5"] for s in sums))
        assert g["images_per_second"]["mean"] == pytest.approx(statistics.fmean(s["images_per_second"] for s in sums))
        assert g["seconds_per_epoch"]["mean"] == pytest.approx(statistics.fmean(s["train_seconds"] / 2 for s in sums))
        assert g["curves"]["test_accuracy"]["epoch"] == [1, 2]
        assert g["settings_differ"] == {}
    assert groups["bp"]["alignment"] == {}
    assert set(groups["ldrl"]["alignment"]) == {"fc_1", "fc_2"}
    angle = groups["ldrl"]["alignment"]["fc_1"]["angle_deg"]["mean"]
    assert angle == pytest.approx(statistics.fmean(
        _summary(swept / f"ldrl-seed{s}")["alignment"]["fc_1"]["angle_deg"] for s in (0, 1)))
    assert groups["ldrl"]["feedback_share"]["mean"] > 0 and groups["bp"]["feedback_share"]["mean"] == 0


def test_rerun_skips_finished_runs(swept, monkeypatch, capsys):
    monkeypatch.setattr(dtp_fast.api, "train", _no_train)
    before = {name: (swept / name / "summary.json").read_text() for name in RUNS}
    rc = sweep_cli.main(QUICK + ["--seeds", "0,1", "--algos", "ldrl,bp", "--out", str(swept), "--set", "feedback_iters=2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("done already, skipped") == 4 and "4 done, 0 to resume, 0 to train" in out
    assert {name: (swept / name / "summary.json").read_text() for name in RUNS} == before
    assert (swept / "report.md").exists()


def test_sweep_resumes_an_unfinished_run_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "sw"
    trainer = dtp_fast.api.make_run("mlp", "digits", algo="bp", seed=0, epochs=2, limit_batches=3, progress=False,
                                    out=out / "bp-seed0")
    trainer.fit(stop_after=1)
    (out / "bp-seed0" / "summary.json").unlink()  # as if the sweep had been killed during epoch 2
    rc = sweep_cli.main(QUICK + ["--seeds", "0", "--algos", "bp", "--out", str(out), "--no-report"])
    assert rc == 0
    assert "1 to resume" in capsys.readouterr().out
    assert _summary(out / "bp-seed0")["epochs"] == 2
    lines = (out / "bp-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert not (out / "report.md").exists()

    rc = sweep_cli.main(QUICK + ["--seeds", "0", "--algos", "bp", "--out", str(out), "--set", "lr=0.01"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("dtp-fast sweep: error:") and "bp-seed0" in err and "lr=0.05 (requested 0.01)" in err


def test_set_parsing():
    assert parse_set("lr=0.01") == ("lr", 0.01)
    assert parse_set("feedback_iters=[20,30]") == ("feedback_iters", [20, 30])
    assert parse_set("feedback-lr=0.1,0.3") == ("feedback_lr", [0.1, 0.3])
    assert parse_set("backend=torch") == ("backend", "torch")
    assert parse_set("augment=false") == ("augment", False)
    assert parse_set("t_max=null") == ("t_max", None)
    assert parse_set("device=cuda:1") == ("device", "cuda:1")
    assert parse_set("hidden=[64]") == ("hidden", [64])
    for bad in ("lr", "=3", "a b=1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_set(bad)


def test_set_values_reach_train(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(preset, dataset, data=None, *, out=None, resume=False, **settings):
        calls.append(dict(preset=preset, dataset=dataset, data=data, out=out, resume=resume, **settings))
        return {"algo": settings["algo"], "test_accuracy": 0.5, "test_top5": None, "epochs": settings["epochs"],
                "images_per_second": 100.0, "backend": "x"}

    monkeypatch.setattr(dtp_fast.api, "train", fake_train)
    rc = sweep_cli.main(QUICK + ["--seeds", "3", "--algos", "ldrl", "--out", str(tmp_path / "o"), "--no-report",
                             "--set", "feedback_iters=[20,30]", "--set", "lr=0.01", "--set", "backend=torch",
                             "--set", "hidden=64,32"])
    assert rc == 0
    assert len(calls) == 1
    c = calls[0]
    assert c["out"] == tmp_path / "o" / "ldrl-seed3" and c["resume"] is False
    assert c["algo"] == "ldrl" and c["seed"] == 3 and c["epochs"] == 2 and c["limit_batches"] == 3
    assert c["feedback_iters"] == [20, 30] and c["lr"] == 0.01 and c["backend"] == "torch"
    assert c["hidden"] == [64, 32] and c["progress"] is False
    assert "test top-1 50.00% after 2 epochs" in capsys.readouterr().out


def test_paper_experiment_preset_and_reference_names(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_train(preset, dataset, data=None, *, out=None, resume=False, **settings):
        calls.append(dict(preset=preset, dataset=dataset, **settings))
        return {"algo": settings["algo"], "test_accuracy": 0.25, "test_top5": 0.75, "epochs": 90,
                "images_per_second": 1.0, "backend": "x"}

    monkeypatch.setattr(dtp_fast.api, "train", fake_train)
    rc = sweep_cli.main(["--preset", "cifar10-lenet-ldrl", "--algos", "bp", "--seeds", "0", "--out", str(tmp_path),
                     "--no-report", "--set", "b_optim.momentum=0.5", "--set", "f_optim.lr=0.01"])
    assert rc == 0
    assert "run(s) of cifar10-lenet-ldrl on cifar10" in capsys.readouterr().out
    (c,) = calls
    assert c["preset"] == "cifar10-lenet-ldrl" and c["dataset"] is None and c["algo"] == "bp"
    assert c["feedback_momentum"] == 0.5 and c["lr"] == 0.01
    # a reference-implementation name counts as the setting it stands for
    rc = sweep_cli.main(QUICK + ["--seeds", "0", "--out", str(tmp_path / "o"), "--set", "max_epochs=3"])
    assert rc == 2 and "epochs is given twice" in capsys.readouterr().err


def test_other_dtp_variants_are_reported(tmp_path):
    out = tmp_path / "sw"
    rc = sweep_cli.main(["--preset", "mlp", "--dataset", "digits", "--algos", "dtp", "--seeds", "0", "--epochs", "1",
                     "--limit-batches", "2", "--set", "feedback_iters=1", "--out", str(out), "--no-report"])
    assert rc == 0
    assert report_cli.main([str(out), "--no-plots"]) == 0
    md = (out / "report.md").read_text()
    assert "| mlp | digits | dtp |" in md and "| mlp | digits | dtp | fc_1 |" in md
    (g,) = json.loads((out / "report.json").read_text())["groups"]
    assert g["algo"] == "dtp" and g["label"] == "mlp digits DTP" and set(g["alignment"]) == {"fc_1", "fc_2"}


@pytest.mark.parametrize("extra, message", [
    (["--set", "seed=1"], "use --seeds"),
    (["--set", "algo=bp"], "use --algos"),
    (["--set", "bogus=1"], "unknown setting(s) ['bogus']"),
    (["--set", "epochs=3"], "epochs is given twice"),
])
def test_bad_sweep_settings(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setattr(dtp_fast.api, "train", _no_train)
    rc = sweep_cli.main(QUICK + ["--seeds", "0", "--out", str(tmp_path / "o")] + extra)
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("dtp-fast sweep: error:") and message in err
    assert not (tmp_path / "o").exists()


def test_bad_algo_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        sweep_cli.main(QUICK + ["--algos", "ldrl,foo", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "ldrl,foo" in capsys.readouterr().err


def test_report_of_one_seed_and_expansion(swept, tmp_path):
    one = tmp_path / "one"
    rc = report_cli.main([str(swept / "bp-seed0"), "--out", str(one), "--title", "One run", "--no-plots"])
    assert rc == 0
    md = (one / "report.md").read_text()
    assert md.startswith("# One run\n") and "± n/a" in md and "## Figures" not in md
    rep = json.loads((one / "report.json").read_text())
    (g,) = rep["groups"]
    assert g["n_runs"] == 1 and g["test_accuracy"]["std"] is None and rep["figures"] == []
    assert g["test_accuracy"]["mean"] == _summary(swept / "bp-seed0")["test_accuracy"]

    # a folder of sweeps is expanded two levels deep; a run named twice counts once
    parent = tmp_path / "many"
    shutil.copytree(swept / "bp-seed0", parent / "a" / "bp-seed0")
    shutil.copytree(swept / "bp-seed1", parent / "b" / "bp-seed1")
    (parent / "c" / "unfinished").mkdir(parents=True)
    (parent / "c" / "unfinished" / "metrics.jsonl").write_text((swept / "bp-seed0" / "metrics.jsonl").read_text())
    changed = _summary(parent / "b" / "bp-seed1")
    changed["config"]["lr"] = 0.01
    (parent / "b" / "bp-seed1" / "summary.json").write_text(json.dumps(changed))
    rc = report_cli.main([str(parent), str(parent / "a" / "bp-seed0"), "--no-plots"])
    assert rc == 0
    rep = json.loads((parent / "report.json").read_text())  # default --out: the common parent
    assert rep["n_runs"] == 2 and rep["groups"][0]["runs"] == ["a/bp-seed0", "b/bp-seed1"]
    assert rep["groups"][0]["settings_differ"] == {"lr": ["0.01", "0.05"]}
    md = (parent / "report.md").read_text()
    assert "**Caution**" in md and "`lr` (0.01 / 0.05)" in md


def test_report_errors(swept, tmp_path, capsys):
    def fails(*paths):
        rc = report_cli.main([str(p) for p in paths] + ["--out", str(tmp_path / "r"), "--no-plots"])
        assert rc == 2
        err = capsys.readouterr().err
        assert err.startswith("dtp-fast report: error:")
        return err

    assert "does not exist" in fails(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert f"{tmp_path / 'empty'} holds no run" in fails(tmp_path / "empty")

    run = tmp_path / "run"
    shutil.copytree(swept / "ldrl-seed0", run)
    (run / "metrics.jsonl").unlink()
    assert f"{run} is not a finished run: it has no metrics.jsonl" in fails(run)

    shutil.copy(swept / "ldrl-seed0" / "metrics.jsonl", run / "metrics.jsonl")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    assert f"{run / 'metrics.jsonl'}, line 2: invalid JSON" in fails(run)

    shutil.copy(swept / "ldrl-seed0" / "metrics.jsonl", run / "metrics.jsonl")
    (run / "summary.json").write_text("{\n  \"algo\": \"ldrl\",\n  oops\n}\n")
    assert f"{run / 'summary.json'}: invalid JSON at line 3" in fails(run)
    assert not (tmp_path / "r").exists()


def test_missing_matplotlib_is_a_clear_error(swept, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rc = report_cli.main([str(swept), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install matplotlib" in err and "--no-plots" in err
    assert not (tmp_path / "r").exists()
    monkeypatch.setattr(dtp_fast.api, "train", _no_train)  # the sweep fails before it trains
    assert sweep_cli.main(QUICK + ["--seeds", "0", "--out", str(tmp_path / "s")]) == 2
    assert "matplotlib" in capsys.readouterr().err


# ---------------------------------------------------------------------------- feedback budgets, time to accuracy
# Synthetic runs (3 epochs, 2 seeds per group): per seed, the test accuracy and the training seconds of each
# epoch, and the feedback iterations of each epoch (summed over the layers; split over fc_1 and fc_2).
SYNTHETIC = {
    ("bp", None): {0: ([0.5, 0.7, 0.8], [1, 1, 1], None), 1: ([0.6, 0.8, 0.9], [1, 1, 1], None)},
    ("ldrl", "paper"): {0: ([0.6, 0.84, 0.86], [4, 4, 4], [200, 200, 200]),
                        1: ([0.7, 0.88, 0.9], [5, 5, 5], [200, 200, 200])},
    ("ldrl", "adaptive"): {0: ([0.6, 0.8, 0.82], [4, 2, 2], [200, 50, 50]),
                           1: ([0.6, 0.8, 0.84], [4, 3, 3], [200, 100, 100])},
}


def _fake_run(run_dir, algo, budget, seed, accs, secs, iters, old=False):
    """A finished run folder as the Trainer writes it (only the keys the report reads); ``old``: a summary
    from before the feedback_budget setting."""
    run_dir.mkdir(parents=True)
    config = {"seed": seed, "lr": 0.05, "epochs": len(accs)}
    if not old:
        config["feedback_budget"] = budget or "paper"
    if budget == "paper":     # the adaptive knobs' defaults changed between the seeds' dtp_fast versions
        config["budget_lr_scale"] = 1.5 + seed / 2
    records, per_layer = [], {}
    for e, (acc, s) in enumerate(zip(accs, secs), start=1):
        rec = {"epoch": e, "test_accuracy": acc, "train_accuracy": acc, "train_loss": 1 - acc, "test_loss": 1 - acc,
               "epoch_seconds": s,
               "feedback_seconds": 0.0, "forward_seconds": s}
        if iters is not None:
            rec["feedback_iterations"] = {"fc_1": iters[e - 1] // 2, "fc_2": iters[e - 1] - iters[e - 1] // 2}
            for k, v in rec["feedback_iterations"].items():
                per_layer[k] = per_layer.get(k, 0) + v
            if budget == "adaptive":
                rec["feedback_alarms"] = {"fc_1": 0, "fc_2": 1}
        records.append(rec)
    summary = {"algo": algo, "preset": "mlp", "dataset": "digits", "epochs": len(accs), "config": config,
               "test_accuracy": accs[-1], "test_top5": 1.0, "best_test_accuracy": max(accs),
               "train_seconds": float(sum(secs)), "feedback_seconds": 0.0, "forward_seconds": float(sum(secs)),
               "images_per_second": 1000.0, "backend": "torch", "device": "cpu",
               "feedback_iterations": {"total": sum(per_layer.values()), "per_layer": per_layer}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _synthetic(root, old_paper_seed=None):
    for (algo, budget), seeds in SYNTHETIC.items():
        for seed, (accs, secs, iters) in seeds.items():
            name = f"{algo}-{budget}-seed{seed}" if budget else f"{algo}-seed{seed}"
            _fake_run(root / name, algo, budget, seed, accs, secs, iters,
                      old=budget == "paper" and seed == old_paper_seed)
    return root


def test_budget_groups_and_time_to_accuracy(tmp_path):
    runs = _synthetic(tmp_path / "runs", old_paper_seed=1)  # paper seed 1: a summary without feedback_budget
    rep = report.make_report([runs], out=tmp_path / "r", plots=False)
    groups = rep["groups"]
    assert [(g["algo"], g["feedback_budget"]) for g in groups] == [("ldrl", "paper"), ("ldrl", "adaptive"),
                                                                   ("bp", None)]
    paper, adaptive, bp = groups
    assert [g["label"] for g in groups] == ["mlp digits L-DRL", "mlp digits L-DRL (adaptive budget)",
                                            "mlp digits backprop"]
    assert paper["runs"] == ["../runs/ldrl-paper-seed0", "../runs/ldrl-paper-seed1"]
    assert paper["settings_differ"] == {} and all(g["n_runs"] == 2 for g in groups)   # unused knobs ignored

    # totals per run, and the cumulative curves (means, min, max over the seeds)
    assert paper["feedback_iterations"]["values"] == [600, 600] and adaptive["feedback_iterations"]["mean"] == 350
    assert bp["feedback_iterations"] is None and "cumulative_feedback_iterations" not in bp["curves"]
    assert adaptive["train_seconds"]["values"] == [8, 10] and paper["train_seconds"]["mean"] == 13.5
    cum = adaptive["curves"]["cumulative_feedback_iterations"]
    assert (cum["epoch"], cum["mean"], cum["min"], cum["max"]) == ([1, 2, 3], [200, 275, 350], [200, 250, 300],
                                                                   [200, 300, 400])
    assert adaptive["curves"]["cumulative_train_seconds"]["mean"] == [4, 6.5, 9]
    assert bp["curves"]["cumulative_train_seconds"]["mean"] == [1, 2, 3]

    # relative to paper L-DRL (600 iterations, 13.5 s) and to backprop (3 s, final top-1 0.85)
    t = {g["feedback_budget"]: g["time_to_accuracy"] for g in groups}
    assert t["adaptive"]["feedback_iterations_share"] == pytest.approx(350 / 600)
    assert t["adaptive"]["train_seconds_share"] == pytest.approx(9 / 13.5)
    assert t["adaptive"]["backprop_time_multiple"] == pytest.approx(3.0)
    assert t["paper"]["feedback_iterations_share"] == 1.0 and t["paper"]["backprop_time_multiple"] == 4.5
    assert t[None]["feedback_iterations_share"] is None and t[None]["train_seconds_share"] == pytest.approx(3 / 13.5)
    assert t["paper"]["backprop_accuracy"] == pytest.approx(0.85)
    # paper L-DRL's mean top-1 is 0.65, 0.86, 0.88: backprop's 0.85 first at epoch 2, after (8 + 10) / 2 s
    assert (t["paper"]["reached_backprop_accuracy"], t["paper"]["epoch_to_backprop_accuracy"],
            t["paper"]["seconds_to_backprop_accuracy"]) == (True, 2, 9.0)
    assert (t[None]["reached_backprop_accuracy"], t[None]["epoch_to_backprop_accuracy"],
            t[None]["seconds_to_backprop_accuracy"]) == (True, 3, 3.0)
    assert t["adaptive"]["reached_backprop_accuracy"] is False  # 0.83 at most
    assert t["adaptive"]["seconds_to_backprop_accuracy"] is None

    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk["groups"][1]["time_to_accuracy"] == t["adaptive"]
    assert [(r["feedback_budget"], r["feedback_iterations"]) for r in on_disk["runs"]] == [
        ("paper", 600), ("paper", 600), ("adaptive", 300), ("adaptive", 400), (None, None), (None, None)]

    md = (tmp_path / "r" / "report.md").read_text()
    assert "grouped by (preset, dataset, algo, feedback budget)" in md
    main_table = md.split("## ")[0]
    assert re.search(r"^\| mlp \| digits \| ldrl \| torch \| 2 \|", main_table, re.M)
    assert re.search(r"^\| mlp \| digits \| ldrl \(adaptive\) \| torch \| 2 \|", main_table, re.M)
    section = md.split("## Time to accuracy")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| mlp |")]
    assert rows == [
        "| mlp | digits | ldrl | 2 | 88.00 ± 2.83 | 13.5 | 600 | 100.0% | 100.0% | 4.50x | 9 (epoch 2) |",
        "| mlp | digits | ldrl (adaptive) | 2 | 83.00 ± 1.41 | 9 | 350 | 58.3% | 66.7% | 3.00x | not reached |",
        "| mlp | digits | bp | 2 | 85.00 ± 7.07 | 3 | - | - | 22.2% | 1.00x | 3 (epoch 3) |"]
    assert "S to backprop top-1:" in section and "not reached if it never does" in section
    assert "| mlp digits ldrl (adaptive) | 0 |" in md


def test_time_to_accuracy_needs_several_groups_and_old_summaries_are_paper(tmp_path):
    runs = tmp_path / "runs"
    accs, secs, iters = SYNTHETIC[("ldrl", "paper")][0]
    _fake_run(runs / "old", "ldrl", "paper", 0, accs, secs, iters, old=True)
    rep = report.make_report([runs], out=tmp_path / "r", plots=False)
    (g,) = rep["groups"]
    assert g["feedback_budget"] == "paper" and g["label"] == "mlp digits L-DRL"
    t = g["time_to_accuracy"]
    assert t["feedback_iterations_share"] == 1.0 and t["backprop_time_multiple"] is None
    assert t["reached_backprop_accuracy"] is None and t["backprop_group"] is None
    assert "## Time to accuracy" not in (tmp_path / "r" / "report.md").read_text()

    # with an adaptive group but no backprop: shares, but no multiple of backprop and no time to its accuracy
    accs, secs, iters = SYNTHETIC[("ldrl", "adaptive")][1]
    _fake_run(runs / "new", "ldrl", "adaptive", 1, accs, secs, iters)
    rep = report.make_report([runs], out=tmp_path / "r", plots=False)
    paper, adaptive = rep["groups"]
    assert adaptive["time_to_accuracy"]["feedback_iterations_share"] == pytest.approx(400 / 600)
    assert adaptive["time_to_accuracy"]["train_seconds_share"] == pytest.approx(10 / 12)
    row = next(line for line in (tmp_path / "r" / "report.md").read_text().splitlines()
               if line.startswith("| mlp | digits | ldrl (adaptive) | 1 |"))
    assert row.endswith("| 400 | 66.7% | 83.3% | - | - |")


def test_time_to_accuracy_figure(tmp_path):
    pytest.importorskip("matplotlib")
    runs = _synthetic(tmp_path / "runs")
    rep = report.make_report([runs], out=tmp_path / "r")
    assert rep["figures"] == ["accuracy.png", "loss.png", "time.png", "time_to_accuracy.png"]  # no diagnostics
    assert (tmp_path / "r" / "time_to_accuracy.png").read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**time_to_accuracy.png**: Test top-1 accuracy" in md and "](time_to_accuracy.png)" in md


def test_paper_recipes_of_one_network_are_compared(tmp_path):
    """Runs of cifar10-vgg-ldrl and cifar10-vgg-bp (two recipes, one network) are set against each other."""
    for algo, seconds in (("ldrl", 8.0), ("bp", 2.0)):
        _fake_run(tmp_path / "runs" / algo, algo, "paper" if algo == "ldrl" else None, 0, [0.5, 0.6], [4, 4],
                  [100, 100] if algo == "ldrl" else None)
        summary = json.loads((tmp_path / "runs" / algo / "summary.json").read_text())
        summary.update(preset=f"cifar10-vgg-{algo}", dataset="cifar10", arch={"channels": [4, 8]},
                       train_seconds=seconds)
        (tmp_path / "runs" / algo / "summary.json").write_text(json.dumps(summary))
    groups = report.make_report([tmp_path / "runs"], out=tmp_path / "r", plots=False)["groups"]
    ldrl = next(g for g in groups if g["algo"] == "ldrl")
    assert ldrl["time_to_accuracy"]["backprop_group"] == "cifar10-vgg-bp cifar10 backprop"
    assert ldrl["time_to_accuracy"]["backprop_time_multiple"] == pytest.approx(4.0)
