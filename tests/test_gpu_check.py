"""benchmarks/gpu_check.py runs in one command; on a CPU as a smoke test (seconds)."""
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu_in_one_command(tmp_path):
    """The smoke version: every CPU backend against reference, then the timings; JSON and markdown written."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--width", "0.125",
           "--batch-size", "4", "--quick", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".md"), files
    res = json.loads((tmp_path / files[0]).read_text())
    assert {"results", "device", "ldrl_step_seconds", "backprop_step_seconds", "correctness", "targets"} <= set(res)
    backends = [r["backend"] for r in res["results"]]
    assert backends[0] == "reference" and "torch" in backends
    assert all(c["passed"] for c in res["correctness"]), res["correctness"]
    assert {c["backend"] for c in res["correctness"]} == set(backends) - {"reference"}
    for r in res["results"]:
        assert {"backend", "feedback_seconds", "speedup_vs_reference", "peak_memory_bytes"} <= set(r)
    assert "| feedback phase, `reference` |" in (tmp_path / files[1]).read_text()


def test_the_prepared_gpu_check_script_runs_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh, the one command a person with a GPU runs, in its reduced CPU form (no build):
    the gpu tests (all skipped here), then the CIFAR-10 and ImageNet32 checks and the CIFAR-10 one with the
    GPU backends' opt-in chain, each with JSON and markdown."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DTP_FAST_POOLED_CHAIN", "DTP_FAST_LAYER_STREAMS")}
    env.update(GPU_CHECK_SKIP_BUILD="1", PYTHON=sys.executable)
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--device", "cpu", "--width", "0.125",
           "--batch-size", "4", "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in tmp_path.iterdir())
    for label in ("cifar10", "imagenet32", "cifar10-pooled-streams"):
        found = [n for n in names if n.endswith(f"-{label}.json")]
        assert len(found) == 1, names
        res = json.loads((tmp_path / found[0]).read_text())
        assert res["label"] == label and res["commit"] and res["command"].startswith("python benchmarks/gpu_check.py")
        # the switches a run had are in its results (the opt-in chain's run: both set by the script)
        switches = {k: res["environment"].get(k) for k in ("DTP_FAST_POOLED_CHAIN", "DTP_FAST_LAYER_STREAMS")}
        on = label.endswith("pooled-streams")
        assert switches == dict.fromkeys(switches, "1" if on else None), (label, res["environment"])
        md = (tmp_path / found[0].replace(".json", ".md")).read_text()
        assert ("`DTP_FAST_POOLED_CHAIN=1`" in md) == on
    assert "gpu test(s) skipped" in (tmp_path / "gpu-tests.log").read_text()
    assert "backend" in (tmp_path / "info.txt").read_text()


def test_on_a_gpu_the_triton_tests_are_gpu_tests(monkeypatch):
    """What gpu_check.sh runs, ``pytest -m gpu``, includes the tests of the Triton kernels on a GPU (compiled
    there; marked ``triton``): conftest.py marks them ``gpu`` when a GPU is usable and Triton does not interpret.
    Without a GPU, or under the interpreter, they stay ordinary tests."""
    import conftest

    class Item:
        def __init__(self, *marks):
            self.marks = set(marks)

        def get_closest_marker(self, name):
            return name if name in self.marks else None

        def add_marker(self, mark):
            self.marks.add(mark.name)

    def collect(gpu_reason, interpret):
        monkeypatch.setattr(conftest, "_no_gpu_reason", lambda: gpu_reason)
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
        items = [Item("triton"), Item(), Item("gpu")]
        conftest.pytest_collection_modifyitems(None, items)
        return [sorted(m for m in i.marks if m != "skip") for i in items]

    assert collect(None, "0") == [["gpu", "triton"], [], ["gpu"]]
    assert collect(None, "1") == [["triton"], [], ["gpu"]]
    assert collect("no GPU", "1") == [["triton"], [], ["gpu"]]
    # and the marker is where the Triton kernels are tested: every op family's Triton cases and the backend
    ids = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-m", "triton", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT).stdout
    for where in ("tests/ops/test_noise.py", "tests/ops/test_dh.py", "tests/ops/test_sgd.py", "tests/ops/test_chain.py",
                  "tests/ops/test_sparse.py", "tests/backends/test_triton.py", "tests/backends/test_gpu_policy.py"):
        assert where + "::" in ids, where
