"""What every ``dtp-fast`` command shares: its error policy, its parser and its repeated options.

The error policy: a bad setting or input ends the command with one line on
stderr, ``<prog>: error: <the problem and the fix>``, and exit status 2 (1 for
the errors a command marks so, 3 when a loss became NaN or infinite); no
traceback unless ``DTP_FAST_DEBUG=1``, which re-raises the error instead.
Errors argparse finds (an unknown option, a value of the wrong form) are one
line too, with exit status 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable

from ..utils import positive_int

__all__ = ["CommandError", "Command", "ToolParser", "run_command", "parse_set", "int_list", "positive_int",
           "positive_float", "add_device", "add_output_files", "require_matplotlib", "DEBUG_ENV"]

DEBUG_ENV = "DTP_FAST_DEBUG"


class CommandError(ValueError):
    """A bad command-line setting found after parsing; the command exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def _expected_errors() -> tuple:
    """The errors that are the user's to fix (imported here: they pull in torch)."""
    from ..distributed import DistributedError
    from ..feedback import BackendUnavailableError
    from ..scaling import ScalingError
    from ..trainer import NonFiniteLossError

    return ValueError, OSError, NonFiniteLossError, BackendUnavailableError, DistributedError, ScalingError


def _exit_code(err: BaseException) -> int:
    from ..trainer import NonFiniteLossError

    return 3 if isinstance(err, NonFiniteLossError) else getattr(err, "exit_code", 2)


def run_command(prog: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``func(args)`` under the error policy (module docstring): its exit status, or after an
    expected error one line ``<prog>: error: ...`` on stderr and 2 (or the error's own status)."""
    try:
        return func(args)
    except _expected_errors() as err:
        if os.environ.get(DEBUG_ENV):
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return _exit_code(err)


class ToolParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (naming the fix: ``--help``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` explains every option)\n")

    def parse_args(self, args=None, namespace=None):
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:  # reported by the subcommand's parser, whose --help lists the options meant
            chosen = self
            for action in self._actions:
                if isinstance(action, argparse._SubParsersAction):
                    chosen = action.choices.get(getattr(namespace, action.dest, None), self)
            chosen.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace


@dataclass(frozen=True)
class Command:
    """One subcommand: its help texts, the function adding its options and the one running it.

    ``run(args)`` returns the exit status and raises on bad input (see :func:`run_command`). Each
    command module declares its ``COMMAND`` (alike on purpose: a declaration, the one place its name
    and help texts are written) and ``main = COMMAND.main``.
    """
    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def add_to(self, subparsers) -> None:
        p = subparsers.add_parser(self.name, help=self.help, description=self.description)
        self.add_arguments(p)
        p.set_defaults(func=self.run)

    def main(self, argv=None, prog: str | None = None) -> int:
        """Run the command alone (``dtp-fast <name>`` without the other subcommands; ``prog``: the name
        its usage and errors show, e.g. a script's)."""
        parser = ToolParser(prog=prog or f"dtp-fast {self.name}", description=self.description)
        self.add_arguments(parser)
        return run_command(parser.prog, self.run, parser.parse_args(argv))


# ---------------------------------------------------------------------------- option values
def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return v


def int_list(what: str = "integers", minimum: int | None = None, distinct: bool = False):
    """argparse type: comma-separated integers (``what`` names them in errors), at least one, each
    ``>= minimum``; with ``distinct`` none twice."""
    def parse(text: str) -> list[int]:
        try:
            out = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None
        if not out:
            raise argparse.ArgumentTypeError(f"expected at least one of the {what}, got {text!r}")
        if minimum is not None and min(out) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} >= {minimum}, got {text!r}")
        if distinct and len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"expected distinct {what}, but {text!r} lists one twice")
        return out
    return parse


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    parts = [p.strip() for p in text.split(",")]
    if len(parts) > 1 and all(parts):  # 20,30 or 0.1,0.3: a list, like the train flags
        try:
            return [json.loads(p) for p in parts]
        except json.JSONDecodeError:
            pass
    return text


def parse_set(text: str) -> tuple[str, object]:
    """argparse type of ``--set KEY=VALUE``: ``(key, value)``, the value through ``json.loads``
    when it parses (``20``, ``0.01``, ``[20,30]``, ``true``, ``null``), a comma-separated list
    of numbers as a list (``20,30``), anything else as a string. Dashes in the key become
    underscores."""
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (for example lr=0.01 or feedback_iters=[20,30]), "
                                         f"got {text!r}")
    return key, _parse_value(value.strip())


# ---------------------------------------------------------------------------- repeated options
def add_device(group, default: str | None = "auto", help: str | None = None) -> None:
    """``--device``: where to run."""
    shown = default or "auto"
    group.add_argument("--device", default=default,
                       help=help or f"auto (cuda if available), cpu, cuda, cuda:1, ... (default {shown})")


def add_output_files(group, json: str | None = None, markdown: str | None = None, plot: str | None = None) -> None:
    """``--json FILE``, ``--markdown FILE`` and ``--plot FILE``, each with its help text (None: no such option)."""
    for flag, text in (("--json", json), ("--markdown", markdown), ("--plot", plot)):
        if text is not None:
            group.add_argument(flag, default=None, metavar="FILE", help=text)


def require_matplotlib(flag: str) -> None:
    """Fail before any work when ``flag`` needs matplotlib and it is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CommandError(f"{flag} needs matplotlib, which is not installed: pip install matplotlib") from None
