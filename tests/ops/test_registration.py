"""The ops package as a whole: a build lacking an op is refused, every op has its fake kernel, and the
import paths of before the reorganisation still work."""
import pytest
import torch

from dtp_fast import _ext
from dtp_fast.ops._common import OPS


def test_a_build_lacking_an_op_is_refused(ext, monkeypatch):
    real = _ext._compiled_build_info()
    fake = dict(real, ops=[op for op in real["ops"] if op != "dtp_fast::linear_chain_"])
    monkeypatch.setattr(_ext, "_compiled_build_info", lambda: fake)
    _ext._reset_cache()
    try:
        assert _ext.available() is False
        msg = _ext.load_error()
        assert "linear_chain_" in msg and "stale build" in msg and "pip install --no-build-isolation -e ." in msg
    finally:
        monkeypatch.undo()
        _ext._reset_cache()
    assert _ext.available()


@pytest.mark.parametrize("op", OPS)
def test_every_op_is_built_and_has_a_fake_kernel(ext, op):
    assert "dtp_fast::" + op in _ext.build_info()["ops"]
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dtp_fast::" + op, "CPU")
    assert torch._library.simple_registry.singleton.find("dtp_fast::" + op).fake_impl.kernel is not None


def test_old_import_paths():
    import dtp_fast.ops as ops
    from dtp_fast.feedback import momentum_sgd_
    from dtp_fast.feedback import AnalyticBackend, FusedCPUBackend, TorchBackend, CppBackend
    from dtp_fast.noise import philox4x32, philox_normal

    assert momentum_sgd_ is ops.momentum_sgd_ref
    assert (AnalyticBackend, FusedCPUBackend) == (TorchBackend, CppBackend)
    assert (philox4x32, philox_normal) == (ops.philox4x32, ops.philox_normal)
    for name in ("ACTIVATIONS", "act_pool2d", "act_pool2d_ref", "noisy_unpool_diff", "noisy_unpool_diff_ref",
                 "pool_unpool_diff", "pool_unpool_diff_ref", "unpool_act2d", "unpool_act2d_ref", "unpool2d_last_wins"):
        assert name in ops.__all__ and callable(getattr(ops, name)) or name == "ACTIVATIONS"
