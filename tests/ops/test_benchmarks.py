"""The op micro-benchmarks (benchmarks/ops/) run with their smallest settings and write their JSON record."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAMILIES = ["pool", "dh", "noise", "sgd", "chain", "sparse"]


@pytest.mark.parametrize("family", FAMILIES)
def test_benchmark_runs_and_records_its_context(family, tmp_path):
    out = tmp_path / ("%s.json" % family)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ops" / ("bench_%s.py" % family)), "--quick", "--device", "cpu",
           "--repeats", "1", "--warmup", "0", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {"benchmark", "command", "commit", "machine", "cpu", "date", "device", "torch", "results"} <= set(res)
    assert res["benchmark"] == "ops/" + family and res["device"] == "cpu" and "--quick" in res["command"]
    assert res["date"].endswith("+00:00") and res["machine"]
    impls = {r["impl"] for r in res["results"]}
    assert "torch" in impls and not impls & {"cuda", "triton"}  # the interpreter is never timed
    for r in res["results"]:
        assert {"op", "shape", "impl", "median_s", "min_s", "repeats"} <= set(r) and r["repeats"] == 1
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"]
    assert "%s" % res["results"][0]["op"] in proc.stdout  # the table
