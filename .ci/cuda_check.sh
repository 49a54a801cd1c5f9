#!/usr/bin/env bash
# CI: compile-and-import check of the CUDA build (no GPU needed).
#
# Builds dtp_fast with its CUDA kernels (csrc/cuda/) against a CUDA 13 build of
# torch and nvcc from CUDA_HOME, for one architecture, in a separate venv and
# from a copy of the working tree (the project's .venv and its in-tree
# dtp_fast/_C*.so are not touched), then imports it and checks that the build
# reports CUDA and that every CUDA op has a kernel for the CUDA dispatch key.
# Finally runs tests/backends/test_cuda.py and tests/ops/ there (the GPU tests skip without a GPU).
#
# Environment: CUDA_HOME (default /usr/local/cuda), CUDA_CHECK_VENV (default
# /tmp/dtp_fast-cuda-check-venv: outside the tree, reused by later runs), CUDA_CHECK_TORCH (default torch==2.14.1, whose default wheel is
# built with CUDA 13), TORCH_CUDA_ARCH_LIST (default 9.0).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
VENV=${CUDA_CHECK_VENV:-${TMPDIR:-/tmp}/dtp_fast-cuda-check-venv}
TORCH_SPEC=${CUDA_CHECK_TORCH:-torch==2.14.1}
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

test -x "$VENV/bin/python" || python3 -m venv "$VENV"
pip_q install -q "$TORCH_SPEC" numpy ninja setuptools wheel pybind11 pytest
"$VENV/bin/python" -c 'import torch; print("cuda-check: torch", torch.__version__, "CUDA", torch.version.cuda)'
echo "cuda-check: venv ready after $(( $(date +%s) - start )) s"

SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
# tracked and untracked, not ignored files: no build outputs, no venvs
git ls-files -z --cached --others --exclude-standard | tar -cf - --null -T - | tar -xf - -C "$SRC"
(cd "$SRC" && DTP_FAST_FORCE_CUDA=1 pip_q install -q --no-build-isolation .)
echo "cuda-check: built after $(( $(date +%s) - start )) s"

# From outside the source trees, so that the installed package is imported.
cd "$SRC/tests"
"$VENV/bin/python" - <<'EOF'
import json

import torch

import dtp_fast
from dtp_fast import _ext
from dtp_fast.feedback.backends.cuda import CUDA_OPS, cuda_kernels_problem

assert "site-packages" in dtp_fast.__file__, dtp_fast.__file__
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
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$SRC/tests/backends/test_cuda.py" "$SRC/tests/ops"
echo "cuda-check: passed in $(( $(date +%s) - start )) s"
