#!/usr/bin/env bash
# CI: the CUDA build and the whole test suite on the GPU machines' stack, without a GPU.
#
# In a separate venv with the oldest supported versions, the ones the GPU machines
# have (Python 3.12 where there is one; torch 2.11, a CUDA 13 build; triton 3.6, whose interpreter needs numpy < 2.4),
# installs dtp_fast as the README says (editable, --no-build-isolation) with its
# CUDA kernels (csrc/cuda/) compiled by nvcc from CUDA_HOME for one architecture,
# from a copy of the working tree (the project's .venv and its in-tree
# dtp_fast/_C*.so are not touched). Then checks that the build reports CUDA and
# that every CUDA op has a kernel for the CUDA dispatch key, and runs the whole
# test suite there (the GPU tests skip without a GPU; the Triton kernels run in
# triton 3.6's interpreter).
#
# Environment: CUDA_HOME (default /usr/local/cuda), CUDA_CHECK_PYTHON (default: a Python 3.12 if one runs
# here, else python3), CUDA_CHECK_VENV (default
# /tmp/dtp_fast-cuda-check-venv: outside the tree, reused by later runs), CUDA_CHECK_TORCH (default torch==2.11.0,
# whose default wheel is built with CUDA 13), CUDA_CHECK_TRITON (default triton==3.6.0), TORCH_CUDA_ARCH_LIST
# (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
VENV=${CUDA_CHECK_VENV:-${TMPDIR:-/tmp}/dtp_fast-cuda-check-venv}
TORCH_SPEC=${CUDA_CHECK_TORCH:-torch==2.11.0}
TRITON_SPEC=${CUDA_CHECK_TRITON:-triton==3.6.0}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
start=$(date +%s)
# pip, without the warnings about this machine's missing local index folders
pip_q() { "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "cuda-check: no nvcc at $CUDA_HOME/bin/nvcc: set CUDA_HOME to a CUDA toolkit" >&2
  exit 1
fi
"$CUDA_HOME/bin/nvcc" --version | tail -n 2

# Python 3.12 where there is one (the GPU machines'), else python3; CUDA_CHECK_PYTHON overrides
venv_python() {
  if [ -n "${CUDA_CHECK_PYTHON:-}" ]; then echo "$CUDA_CHECK_PYTHON"; return; fi
  for p in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$p" -c '' 2>/dev/null; then echo "$p"; return; fi
  done
  echo python3
}
test -x "$VENV/bin/python" || "$(venv_python)" -m venv "$VENV"
pip_q install -q "$TORCH_SPEC" "$TRITON_SPEC" "numpy<2.4" ninja setuptools wheel pybind11 pytest
"$VENV/bin/python" -c 'import sys, torch, triton; print("cuda-check: Python", sys.version.split()[0], "torch", torch.__version__,
                                                        "CUDA", torch.version.cuda, "triton", triton.__version__)'
echo "cuda-check: venv ready after $(( $(date +%s) - start )) s"

SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
# the repository (so that results name their commit, +dirty for local changes), then over it the tracked
# and untracked, not ignored files as they are here: no build outputs, no venvs
git clone -q --no-checkout "$ROOT" "$SRC"
git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -xf - -C "$SRC"
git -C "$SRC" reset -q
(cd "$SRC" && DTP_FAST_FORCE_CUDA=1 pip_q install -q --no-build-isolation -e ".[test]")
echo "cuda-check: built after $(( $(date +%s) - start )) s"

cd "$SRC/tests"
SRC=$SRC "$VENV/bin/python" - <<'EOF'
import json
import os

import torch

import dtp_fast
from dtp_fast import _ext
from dtp_fast.feedback.backends.cuda import CUDA_OPS, cuda_kernels_problem

assert dtp_fast.__file__.startswith(os.path.realpath(os.environ["SRC"])), dtp_fast.__file__
assert _ext.available(), _ext.load_error()
info = _ext.build_info()
print("cuda-check: build_info", json.dumps({k: info[k] for k in ("torch_version", "with_cuda", "cuda_version")}))
assert info["with_cuda"] is True, info
assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0], (info, torch.version.cuda)
for op in CUDA_OPS:
    name = "dtp_fast::" + op
    assert name in info["ops"], name
    for key in ("CUDA", "CPU"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)
assert cuda_kernels_problem() is None, cuda_kernels_problem()
print("cuda-check: CUDA kernels registered for", ", ".join(CUDA_OPS))
EOF
cd "$SRC"
DTP_FAST_REQUIRE_EXT=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider
echo "cuda-check: passed in $(( $(date +%s) - start )) s"
