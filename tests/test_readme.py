"""The README's claims: its Python example runs, and the demo's L-DRL result holds."""
import re
from pathlib import Path

import pytest

from dtp_fast.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "from_sequential" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    summary = scope["summary"]
    assert summary["test_accuracy"] > 0.8
    assert (tmp_path / "runs" / "my-net" / "summary.json").exists()


@pytest.mark.slow
def test_demo_ldrl_within_3_points_of_backprop(tmp_path, capsys):
    """`make demo`: L-DRL >= 93% on the digits and within 3 points of backprop (about 45 s)."""
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    ldrl, bp = (float(v) / 100 for v in re.search(r"L-DRL ([\d.]+)% vs backprop ([\d.]+)%", out).groups())
    assert ldrl >= 0.93, out
    assert bp - ldrl <= 0.03, out


def test_readme_own_loop_example_runs():
    """The two-changed-lines example (dtp_fast.DTP in a plain PyTorch loop) trains the digits."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "dtp_fast.DTP(" in b)
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["accuracy"] > 0.9 and scope["model"].step == 10 * 45
