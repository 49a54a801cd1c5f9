"""The error policy every `dtp-fast` subcommand shares (dtp_fast.cli.common): a bad value ends the command with
one line on stderr and exit status 2 (1 for `train --resume` without `--out`), no traceback; with
DTP_FAST_DEBUG=1 the error propagates, with its traceback."""
import os
import pathlib
import subprocess
import sys

import pytest

from dtp_fast.cli import build_parser, commands, main
from dtp_fast.cli.common import DEBUG_ENV

ROOT = pathlib.Path(__file__).resolve().parents[1]

# per subcommand: arguments with a bad value that only the command itself can find (after parsing), the exit
# status, and a word the one-line message must hold. `info` takes no value that could be wrong: it has the
# usage-error check below only.
BAD_VALUES = {
    "train": (["--preset", "nope", "--out", "{tmp}/t"], 2, "nope"),
    "demo": (["--preset", "nope", "--out", "{tmp}/d", "--quiet"], 2, "nope"),
    "bench": (["--backends", "nonsense", "--width", "0.0625", "--batch-size", "2", "--quiet"], 2, "nonsense"),
    "sweep": (["--preset", "mlp", "--out", "{tmp}/s", "--set", "seed=1"], 2, "--seeds"),
    "report": (["{tmp}/missing"], 2, "does not exist"),
    "theory": (["gmp", "--methods", "ldrl,foo", "--iterations", "1"], 2, "foo"),
    "scaling": (["--preset", "nope"], 2, "nope"),
}
NO_BAD_VALUE = {"info"}
CASES = [(name, *case) for name, case in BAD_VALUES.items()] + [
    ("train", ["--resume", "--epochs", "1"], 1, "--out"),
]


def _argv(name, args, tmp_path):
    return [name] + [a.format(tmp=tmp_path) for a in args]


def test_every_subcommand_has_a_case():
    assert {c.name for c in commands()} == set(BAD_VALUES) | NO_BAD_VALUE
    assert set(build_parser()._subparsers._group_actions[0].choices) == set(BAD_VALUES) | NO_BAD_VALUE


@pytest.mark.parametrize("name, args, code, word", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_bad_value_is_one_line_and_an_exit_status(name, args, code, word, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert main(_argv(name, args, tmp_path)) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dtp-fast {name}: error: ") and word in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("name, args, code, word", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_debug_lets_the_error_through(name, args, code, word, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(Exception) as exc:
        main(_argv(name, args, tmp_path))
    assert word in str(exc.value) and not isinstance(exc.value, SystemExit)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", sorted(set(BAD_VALUES) | NO_BAD_VALUE))
def test_usage_error_is_one_line_exit_2(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--no-such-option"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dtp-fast {name}: error: ") and f"dtp-fast {name} --help" in err


def test_the_command_line_shows_a_traceback_only_with_debug(tmp_path):
    """The real process (`python -m dtp_fast.cli`, as the `dtp-fast` script and torchrun run it)."""
    cmd = [sys.executable, "-m", "dtp_fast.cli", "report", str(tmp_path / "missing")]
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    quiet = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert quiet.returncode == 2 and quiet.stdout == ""
    assert quiet.stderr.startswith("dtp-fast report: error: ") and quiet.stderr.count("\n") == 1, quiet.stderr
    loud = subprocess.run(cmd, capture_output=True, text=True, env={**env, DEBUG_ENV: "1"}, cwd=tmp_path,
                          timeout=120)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ReportError" in loud.stderr


def test_standalone_tool_keeps_the_policy(tmp_path, capsys, monkeypatch):
    """A tool run alone (benchmarks/bench_feedback.py: `Command.main` with its own prog) follows the same policy."""
    from dtp_fast.cli.bench import COMMAND

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert COMMAND.main(["--backends", "nonsense", "--quiet"], prog="bench_feedback") == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_feedback: error: ") and err.count("\n") == 1 and "nonsense" in err


def test_run_command_exit_statuses_and_bugs(capsys, monkeypatch):
    """A NaN/inf loss exits 3; an unexpected error (a bug) keeps its traceback even without DTP_FAST_DEBUG."""
    import argparse

    from dtp_fast.cli.common import CommandError, run_command
    from dtp_fast.trainer import NonFiniteLossError

    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def raises(err):
        def run(args):
            raise err
        return run

    ns = argparse.Namespace()
    assert run_command("tool", raises(NonFiniteLossError("loss is nan\nat step 3")), ns) == 3
    assert capsys.readouterr().err == "tool: error: loss is nan at step 3\n"
    assert run_command("tool", raises(CommandError("needs --out", exit_code=1)), ns) == 1
    assert capsys.readouterr().err == "tool: error: needs --out\n"
    with pytest.raises(KeyError):
        run_command("tool", raises(KeyError("bug")), ns)
    assert run_command("tool", lambda args: 0, ns) == 0


def _files(tmp_path):
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "out.json").write_text('{"out": "elsewhere", "epochs": 1}')
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{bad")
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "config.json").write_text("[1]")


# bad inputs of `train` that once gave a traceback, with a word the one line must hold
TRAIN_INPUTS = [
    (["--device", "nonsense", "--out", "{tmp}/a"], "not a device"),
    (["--device", "cuda", "--out", "{tmp}/b"], "CUDA"),
    (["--config", "{tmp}/list.json", "--out", "{tmp}/c"], "mapping"),
    (["--config", "{tmp}/out.json", "--out", "{tmp}/d"], "only the command line gives"),
    (["--out", "{tmp}/run", "--resume"], "config.json is not valid JSON"),
    (["--out", "{tmp}/listed", "--resume"], "not a list"),
]


@pytest.mark.parametrize("args, word", TRAIN_INPUTS, ids=[w for _, w in TRAIN_INPUTS])
def test_train_bad_inputs_are_one_line(args, word, tmp_path, capsys, monkeypatch):
    if "cuda" in args:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    _files(tmp_path)
    assert main(_argv("train", args, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err and "Traceback" not in err, err


def test_a_failed_start_leaves_no_half_made_run(tmp_path, capsys, monkeypatch):
    """A new run that stops before its first checkpoint (here a NaN loss in epoch 1) leaves no folder behind; in
    a folder that existed before, only what it brought goes."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    args = ["train", "--preset", "lenet", "--dataset", "digits", "--epochs", "1", "--limit-batches", "2",
            "--lr", "1e30", "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "new")]) == 3          # the non-finite loss's exit status
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    assert main(args + ["--out", str(tmp_path / "old")]) == 3
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["notes.txt"]
    err = capsys.readouterr().err
    assert err.count("dtp-fast train: error:") == 2 and "Traceback" not in err, err
