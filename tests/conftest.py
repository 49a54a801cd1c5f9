"""Shared test helpers."""
import os

import pytest

from dtp_fast import _ext


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
