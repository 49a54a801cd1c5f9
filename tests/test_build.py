"""How dtp_fast._C was built, and how dtp_fast._ext reacts to broken builds.

Tests that need the compiled extension skip when it is not built, unless
DTP_FAST_REQUIRE_EXT=1 (set in CI), in which case they fail.
"""


import os
import pathlib
import runpy

import pytest
import torch

from dtp_fast import _ext
from conftest import require_ext

FIX = "pip install --no-build-isolation -e ."
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_cache(monkeypatch):
    """Forget the cached load result before and after the test (and ignore a
    DTP_FAST_DISABLE_EXT=1 of the calling environment)."""
    monkeypatch.delenv("DTP_FAST_DISABLE_EXT", raising=False)
    _ext._reset_cache()
    yield
    _ext._reset_cache()


def _runtime_major_minor():
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def test_build_info_matches_runtime():
    require_ext()
    info = _ext.build_info()
    assert info is not None
    assert (info["torch_major"], info["torch_minor"]) == _runtime_major_minor()
    assert info["torch_version"].startswith("%d.%d." % _runtime_major_minor())
    assert info["openmp"] is True
    assert info["compiler"]
    assert info["with_cuda"] in (True, False)
    assert (info["cuda_version"] is None) == (not info["with_cuda"])
    for name in ("dtp_fast::act_pool2d", "dtp_fast::unpool_act2d", "dtp_fast::build_info"):
        assert name in info["ops"]
        assert hasattr(torch.ops.dtp_fast, name.split("::")[1])
    # a copy: callers cannot change the cached one
    info["ops"] = None
    assert _ext.build_info()["ops"] is not None


def test_version_mismatch_makes_module_unusable(monkeypatch, fresh_cache):
    require_ext()
    real = _ext._compiled_build_info()
    fake = dict(real, torch_major=1, torch_minor=0, torch_version="1.0.0")
    monkeypatch.setattr(_ext, "_compiled_build_info", lambda: fake)
    _ext._reset_cache()
    assert _ext.available() is False
    msg = _ext.load_error()
    assert "compiled against torch 1.0" in msg
    assert torch.__version__ in msg
    assert FIX in msg
    assert _ext.build_info()["torch_minor"] == 0  # still reported, for diagnosis


def test_version_problem_rules():
    info = {"torch_major": 2, "torch_minor": 13, "with_cuda": False, "cuda_version": None}
    assert _ext._version_problem(info, "2.13.1+cpu", None) is None
    msg = _ext._version_problem(info, "2.14.0", None)
    assert "compiled against torch 2.13" in msg and "2.14.0" in msg and FIX in msg
    cuda = dict(info, with_cuda=True, cuda_version="12.8")
    assert _ext._version_problem(cuda, "2.13.0", "12.6") is None
    msg = _ext._version_problem(cuda, "2.13.0", "13.0")
    assert "CUDA 12.8" in msg and "13.0" in msg and FIX in msg


def _failing_import(exc):
    def import_module(name, *args, **kwargs):
        raise exc

    return import_module


def test_undefined_symbol_gets_reinstall_advice(monkeypatch, fresh_cache):
    err = ImportError("/x/dtp_fast/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
    monkeypatch.setattr(_ext.importlib, "import_module", _failing_import(err))
    assert _ext.available() is False
    msg = _ext.load_error()
    assert "undefined symbol" in msg and FIX in msg
    assert _ext.build_info() is None


def test_missing_module_says_how_to_build(monkeypatch, fresh_cache):
    err = ModuleNotFoundError("No module named 'dtp_fast._C'", name="dtp_fast._C")
    monkeypatch.setattr(_ext.importlib, "import_module", _failing_import(err))
    assert _ext.available() is False
    assert _ext.load_error() == "dtp_fast._C is not built: run `%s`" % FIX


def test_other_load_failure_is_reported(monkeypatch, fresh_cache):
    monkeypatch.setattr(_ext.importlib, "import_module", _failing_import(OSError("libc10.so: cannot open")))
    assert _ext.available() is False
    msg = _ext.load_error()
    assert "libc10.so" in msg and FIX in msg


def test_disable_env(monkeypatch, fresh_cache):
    monkeypatch.setenv("DTP_FAST_DISABLE_EXT", "1")
    assert _ext.available() is False
    assert "DTP_FAST_DISABLE_EXT=1" in _ext.load_error()
    assert _ext.build_info() is None


# ----------------------------------------------------------------- setup.py and the sources
def _setup_namespace(monkeypatch):
    import setuptools

    monkeypatch.setenv("DTP_FAST_NO_EXT", "1")
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="dtp_fast_setup")


def test_setup_compiles_cuda_sources_only_in_the_cuda_build(monkeypatch):
    ns = _setup_namespace(monkeypatch)
    cuda = ns["cuda_sources_of"](ns["_sources"])
    assert sorted(os.path.basename(p) for p in cuda) == [
        "chain_cuda.cu", "chain_cuda_bind.cpp", "dh_cuda.cu", "dh_cuda_bind.cpp",
        "noise_cuda.cu", "noise_cuda_bind.cpp", "sgd_cuda.cu", "sgd_cuda_bind.cpp"]
    assert all(p.startswith(os.path.join("csrc", "cuda")) for p in cuda)
    cpu = ns["_sources"]("csrc/*.cpp") + ns["_sources"]("csrc/cpu/*.cpp")
    assert not any("cuda" in p for p in cpu) and os.path.join("csrc", "cpu", "chain_cpu.cpp") in cpu
    assert ns["cuda_sources_of"](lambda pattern: []) == []
    assert ns["cuda_sources_of"](lambda pattern: [] if pattern.endswith(".cu") else ["x.cpp"]) == []
    assert "-fmad=false" in ns["NVCC_FLAGS"]


def test_cuda_kernel_files_include_no_torch_headers():
    """Only the binding includes torch: a .cu with torch/extension.h costs ~80 s and 3 GB to compile."""
    folder = os.path.join(ROOT, "csrc", "cuda")
    for name in os.listdir(folder):
        if name.endswith((".cu", ".cuh", ".h")):
            text = open(os.path.join(folder, name)).read()
            for banned in ("<torch/", "<ATen/", "<c10/"):
                assert banned not in text, (name, banned)


def test_portable_paths_of_the_avx512_kernels_give_the_same_results():
    """DTP_FAST_NO_AVX512=1 makes the CPU kernels take their portable paths (what a CPU without AVX-512 runs:
    the Philox normals in tiles, the gathers of dh1's pooling windows and of ELU's values in scalar loops). In a
    subprocess, the noise and dh tests (bit for bit against the same oracles) pass with it; on a CPU without
    AVX-512 this repeats the suite's own run."""
    import subprocess
    import sys

    require_ext()
    env = dict(os.environ, DTP_FAST_NO_AVX512="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           "tests/ops/test_noise.py", "tests/ops/test_dh.py", "-k", "not triton"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_every_package_folder_goes_into_the_wheel():
    """pyproject.toml finds packages by ``dtp_fast*`` and their __init__.py: a folder of modules without one
    (say a new kernel family) would be left out of a non-editable install, with no error until its import."""
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    assert tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"] == {
        "include": ["dtp_fast*"]}
    folders = {p.parent for p in (root / "dtp_fast").rglob("*.py")}
    assert root / "dtp_fast" / "ops" / "triton" in folders
    assert [str(f) for f in sorted(folders) if not (f / "__init__.py").exists()] == []
