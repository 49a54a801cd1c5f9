"""Test configuration: the Triton interpreter without a GPU, the ``gpu`` and ``triton`` markers, the ``ext`` fixture.

Tests marked ``gpu`` need a usable CUDA device: without one they skip, with the reason, and the
terminal summary says how many did. Tests marked ``triton`` run Triton kernels: in the interpreter
without a GPU, compiled with one, where they are marked ``gpu`` too (so that ``pytest -m gpu``, what
benchmarks/gpu_check.sh runs, includes them). ``DTP_FAST_REQUIRE_EXT=1`` (CI) makes a missing compiled op,
or a missing / too old triton where it could run, fail instead of skip (tests/helpers.py).
"""
import os

import pytest
import torch

# Without a usable GPU, Triton kernels run on CPU tensors in Triton's interpreter (tests/ops/, tests/backends/test_triton.py).
# It must be set before any module defining kernels is imported (triton.jit reads it then).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import require_ext  # noqa: E402,F401  (tests import it from here too)


def _no_gpu_reason():
    if torch.version.cuda is None:
        return "needs a CUDA device: torch %s is a CPU-only build" % torch.__version__
    if not torch.cuda.is_available():
        return "needs a CUDA device: torch.cuda.is_available() is False (no GPU or no driver)"
    return None


@pytest.hookimpl(tryfirst=True)   # before pytest's own -m selection, which must see the gpu marks added here
def pytest_collection_modifyitems(config, items):
    reason = _no_gpu_reason()
    if reason is None:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            for item in items:
                if item.get_closest_marker("triton") is not None:
                    item.add_marker(pytest.mark.gpu)
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "gpu" in getattr(r, "keywords", {})]
    if skipped:
        terminalreporter.write_line("%d gpu test(s) skipped (%s)" % (len(skipped), _no_gpu_reason() or
                                                                       "see the skip reasons"))


@pytest.fixture
def ext():
    require_ext()


@pytest.fixture
def float64_default():
    """torch's default dtype float64 for the test (``pytestmark = pytest.mark.usefixtures("float64_default")``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
