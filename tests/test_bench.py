"""`dtp-fast bench` (dtp_fast.bench, dtp_fast.cli.bench) on tiny settings: schema, ratios, outputs, errors."""
import argparse
import json

import pytest
import torch

from dtp_fast import bench
from dtp_fast.cli import bench as bench_cli
from dtp_fast.feedback import available_backends

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {"backend", "feedback_seconds", "feedback_seconds_all", "speedup_vs_reference", "peak_memory_bytes",
               "memory_vs_reference", "per_layer"}
TOP_KEYS = {"net", "width", "channels", "batch_size", "iterations", "dtype", "device", "device_name", "cpu_count",
            "torch_num_threads", "date", "versions", "repeats", "results", "backprop_step_seconds",
            "ldrl_step_seconds", "ldrl_step_backend", "ldrl_vs_backprop", "peak_memory_method"}
TINY = ["--width", "0.0625", "--batch-size", "2", "--repeats", "1"]


def _usable():
    return [n for n, (ok, _) in available_backends("cpu").items() if ok]


def _check(res, net, layers, iterations, repeats=1):
    assert TOP_KEYS <= set(res)
    assert res["net"] == net and res["batch_size"] == 2 and res["iterations"] == iterations
    assert res["repeats"] == repeats and res["device"] == "cpu" and res["dtype"] == "float32"
    assert res["peak_memory_method"] in ("proc_vmhwm", "getrusage_maxrss")
    assert "torch" in res["versions"]
    backends = [r["backend"] for r in res["results"]]
    assert backends[0] == "reference" and set(backends) == set(_usable())
    for r in res["results"]:
        assert RESULT_KEYS <= set(r)
        assert r["feedback_seconds"] > 0 and len(r["feedback_seconds_all"]) == repeats
        assert r["speedup_vs_reference"] > 0
        assert isinstance(r["peak_memory_bytes"], int)
        assert list(r["per_layer"]) == layers and all(t > 0 for t in r["per_layer"].values())
    ref = res["results"][0]["feedback_seconds"]
    for r in res["results"]:   # each ratio is to the reference's median of the same run
        assert r["speedup_vs_reference"] == pytest.approx(ref / r["feedback_seconds"])
    for key in ("commit", "command", "machine", "date"):
        assert res[key], key
    assert res["backprop_step_seconds"] > 0 and res["ldrl_step_seconds"] > 0
    assert res["ldrl_step_backend"] in backends
    assert res["ldrl_vs_backprop"] == pytest.approx(res["ldrl_step_seconds"] / res["backprop_step_seconds"])


def test_bench_simple_vgg_writes_json_markdown_and_png(tmp_path, capsys):
    out = tmp_path / "o"
    rc = bench_cli.main(TINY + ["--iterations", "1,1,1,1,1", "--json", str(out / "b.json"),
                            "--markdown", str(out / "b.md"), "--plot", str(out / "b.png"), "--quiet"])
    assert rc == 0
    res = json.loads((out / "b.json").read_text())
    _check(res, "simple_vgg", ["conv_1", "conv_2", "conv_3", "conv_4", "fc"], [1] * 5)
    assert res["channels"] == [8, 8, 16, 16, 32] and res["width"] == 0.0625
    md = (out / "b.md").read_text()
    printed = capsys.readouterr().out
    assert md in printed
    assert "| feedback phase, `reference` |" in md and "backprop step" in md and "L-DRL step" in md
    assert "| conv_1 | 1 |" in md and "| fc | 1 |" in md
    assert (out / "b.png").read_bytes()[:8] == PNG_MAGIC
    # the planner: each layer's CPU chunk length (here capped by its single iteration), in JSON and markdown
    plan = res["planner"]["layers"]
    assert [plan[n]["cpu_chunk_iterations"] for n in plan] == [1] * 5
    assert "| CPU chunk |" in md and "| 1 |\n" in md


def test_bench_lenet_reference_only_no_per_layer_float64(tmp_path, capsys):
    path = tmp_path / "l.json"
    rc = bench_cli.main(TINY + ["--net", "lenet", "--iterations", "1,2,1", "--backends", "reference",
                            "--dtype", "float64", "--no-per-layer", "--json", str(path), "--quiet"])
    assert rc == 0
    res = json.loads(path.read_text())
    assert [r["backend"] for r in res["results"]] == ["reference"]
    assert res["results"][0]["per_layer"] == {} and res["iterations"] == [1, 2, 1]
    assert res["channels"] == [2, 4] and res["hidden"] == 32 and res["dtype"] == "float64"
    assert res["layers"] == ["conv_1", "fc1", "fc2"]
    assert res["ldrl_step_backend"] == "reference"
    assert "| feedback phase, `reference` | " in capsys.readouterr().out


def test_bench_lenet_per_layer_names(tmp_path):
    path = tmp_path / "l.json"
    assert bench_cli.main(TINY + ["--net", "lenet", "--iterations", "1", "--json", str(path), "--quiet"]) == 0
    _check(json.loads(path.read_text()), "lenet", ["conv_1", "fc1", "fc2"], [1, 1, 1])


def test_bench_reference_is_always_included(tmp_path):
    other = [n for n in _usable() if n != "reference"]
    if not other:
        pytest.skip("only the reference backend is usable here")
    path = tmp_path / "o.json"
    assert bench_cli.main(TINY + ["--net", "lenet", "--iterations", "1,1,1", "--backends", other[0],
                              "--no-per-layer", "--json", str(path), "--quiet"]) == 0
    assert [r["backend"] for r in json.loads(path.read_text())["results"]] == ["reference", other[0]]


@pytest.mark.parametrize("backends", ["nonsense", "reference,nonsense"])
def test_bench_bad_backend_exits_2_listing_usable(backends, capsys, tmp_path):
    rc = bench_cli.main(TINY + ["--backends", backends, "--json", str(tmp_path / "x.json"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nonsense" in err and "reference" in err
    assert not (tmp_path / "x.json").exists()


def test_bench_unusable_backend_exits_2(monkeypatch, capsys):
    from dtp_fast.feedback import engine

    real = engine.available_backends

    def fake(device="cpu"):
        out = dict(real(device))
        out["fastthing"] = (False, "needs a GPU")
        return out
    monkeypatch.setattr(engine, "available_backends", fake)
    monkeypatch.setattr("dtp_fast.feedback.available_backends", fake)
    assert bench_cli.main(TINY + ["--backends", "fastthing", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "fastthing" in err and "needs a GPU" in err and "reference" in err


def test_bench_wrong_iteration_count_exits_2(capsys):
    assert bench_cli.main(TINY + ["--iterations", "1,1", "--quiet"]) == 2
    assert "conv_1" in capsys.readouterr().err


def test_scale_width_and_arguments():
    assert bench.scale_width([128, 128, 256, 256, 512], 0.25) == [32, 32, 64, 64, 128]
    assert bench.scale_width([32, 64], 0.01) == [1, 1]
    p = argparse.ArgumentParser()
    bench_cli.add_arguments(p)
    a = p.parse_args([])
    assert (a.net, a.width, a.batch_size, a.repeats, a.device, a.backends, a.per_layer) == \
        ("simple_vgg", 1.0, 32, 5, "cpu", None, True)
    assert a.memory_budget == "default"
    assert p.parse_args(["--memory-budget", "8"]).memory_budget == 8 * 2**20
    assert p.parse_args(["--memory-budget", "none"]).memory_budget is None
    with pytest.raises(SystemExit):
        p.parse_args(["--net", "resnet"])


def test_peak_memory_sees_a_known_allocation():
    """The peak-memory measurement of the bench finds a 64 MiB buffer that fn allocates and frees (not 0,
    not the process's size)."""
    from dtp_fast.peak_memory import memory_method, peak_memory

    device = torch.device("cpu")
    method = memory_method(device)
    if method == "getrusage_maxrss":
        pytest.skip("only the lifetime peak RSS is readable here: it cannot be reset before the call")
    size = 64 * 2**20

    def fn():
        t = torch.ones(size // 4, dtype=torch.float32)   # touched, so resident
        return float(t[-1])

    got = peak_memory(fn, device, method)
    assert 0.9 * size <= got <= 4 * size, (method, got)
