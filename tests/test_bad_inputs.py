"""The bad-input catalogue: every case ends `dtp-fast` with a non-zero status and one line on stderr that names
the file or setting (no traceback), and leaves an existing run's files as they were."""
import hashlib
import shutil

import pytest
import torch

from dtp_fast.cli import main
from dtp_fast.cli.common import DEBUG_ENV

LENET = ["train", "--preset", "lenet", "--dataset", "digits", "--no-progress"]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    """A finished one-epoch run: the folder every case must leave as it was."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(LENET + ["--epochs", "1", "--limit-batches", "2", "--out", str(out)]) == 0
    return out


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


class _Planted:
    def __reduce__(self):
        import os

        return os.system, ("echo planted",)


def _copy_with(done_run, tmp_path, name, files):
    """A copy of the finished run with some of its files replaced (bytes, or objects to torch.save)."""
    run = tmp_path / name
    shutil.copytree(done_run, run)
    for filename, content in files.items():
        path = run / filename
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
    return run


# (argv after LENET or a whole argv, a word the one line holds)
CASES = {
    "unknown data set": (LENET + ["--dataset", "nope", "--out", "{tmp}/a"], "nope"),
    "unknown algo": (LENET + ["--algo", "nope", "--out", "{tmp}/a"], "--algo"),
    "zero epochs": (LENET + ["--epochs", "0", "--out", "{tmp}/a"], "epochs"),
    "epochs not a number": (LENET + ["--epochs", "abc", "--out", "{tmp}/a"], "--epochs"),
    "negative batch": (LENET + ["--batch-size", "-1", "--out", "{tmp}/a"], "batch_size"),
    "NaN learning rate": (LENET + ["--lr", "nan", "--out", "{tmp}/a"], "lr"),
    "negative learning rate": (LENET + ["--lr", "-1", "--out", "{tmp}/a"], "lr"),
    "iterations for 2 of 3 layers": (LENET + ["--feedback-iters", "1,2", "--out", "{tmp}/a"], "conv_1, fc1, fc2"),
    "zero noise": (LENET + ["--noise", "0", "--out", "{tmp}/a"], "conv_1"),
    "unknown setting": (LENET + ["--set", "nonsense_key=1", "--out", "{tmp}/a"], "nonsense_key"),
    "unknown backend": (LENET + ["--backend", "nope", "--out", "{tmp}/a"], "nope"),
    "zero feedback memory": (LENET + ["--feedback-memory", "0", "--out", "{tmp}/a"], "feedback_memory"),
    "bad device": (LENET + ["--device", "nonsense", "--out", "{tmp}/a"], "nonsense"),
    "missing data": (["train", "--preset", "lenet", "--dataset", "cifar10", "--data", "{tmp}/nowhere", "--out",
                      "{tmp}/a"], "nowhere"),
    "missing config file": (LENET + ["--config", "{tmp}/missing.json", "--out", "{tmp}/a"], "missing.json"),
    "run exists, no --resume": (LENET + ["--out", "{done}"], "already holds a run"),
    "resume with another algo": (LENET + ["--out", "{done}", "--resume", "--algo", "bp"], "algo"),
    "resume an empty folder": (LENET + ["--out", "{tmp}/empty", "--resume"], "no checkpoint"),
    "resume a planted checkpoint": (LENET + ["--out", "{planted}", "--resume"], "not a dtp_fast checkpoint"),
    "resume a truncated checkpoint": (LENET + ["--out", "{truncated}", "--resume"], "unreadable"),
    "resume with a corrupt config.json": (LENET + ["--out", "{badconfig}", "--resume"], "config.json"),
    "report of a missing folder": (["report", "{tmp}/missing"], "does not exist"),
    "sweep of an unknown preset": (["sweep", "--preset", "nope", "--out", "{tmp}/s"], "nope"),
    "theory with an unknown method": (["theory", "gmp", "--methods", "ldrl,foo", "--iterations", "1"], "foo"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, done_run, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    places = {"tmp": tmp_path, "done": done_run,
              "planted": _copy_with(done_run, tmp_path, "planted", {"checkpoint.pt": {"net": _Planted()}}),
              "truncated": _copy_with(done_run, tmp_path, "truncated", {"checkpoint.pt": b"PK\x03\x04 cut"}),
              "badconfig": _copy_with(done_run, tmp_path, "badconfig", {"config.json": b"{bad"})}
    (tmp_path / "empty").mkdir()
    copies = {name: _digest(places[name]) for name in ("planted", "truncated", "badconfig")}
    before = _digest(done_run)
    argv, word = CASES[case]
    try:
        status = main([a.format(**places) for a in argv])
    except SystemExit as stop:       # argument errors end in argparse
        status = stop.code
    err = capsys.readouterr().err
    assert status not in (0, None), err
    assert err.count("\n") == 1 and ": error: " in err and "Traceback" not in err, err
    assert word in err, err
    assert _digest(done_run) == before
    assert {name: _digest(places[name]) for name in copies} == copies
