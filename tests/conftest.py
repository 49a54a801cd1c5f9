"""Shared test helpers."""
import os

import pytest
import torch

# Without a usable GPU, Triton kernels run on CPU tensors in Triton's interpreter (tests/test_triton.py).
# It must be set before any module defining kernels is imported (triton.jit reads it then).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from dtp_fast import _ext  # noqa: E402


def require_ext():
    """Skip when the compiled module is unavailable, or fail if DTP_FAST_REQUIRE_EXT=1 (CI builds it)."""
    if _ext.available():
        return
    reason = "compiled dtp_fast._C unavailable: %s" % _ext.load_error()
    if os.environ.get("DTP_FAST_REQUIRE_EXT", "") == "1":
        pytest.fail(reason + " (DTP_FAST_REQUIRE_EXT=1)")
    pytest.skip(reason)


@pytest.fixture
def ext():
    require_ext()
