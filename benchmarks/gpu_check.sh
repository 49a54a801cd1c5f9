#!/usr/bin/env bash
# The prepared GPU check: one command for whoever has a GPU at hand (about 8 minutes on one H100/H200,
# build included; no network, no data sets):
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# 1. builds dtp_fast._C in place with its CUDA kernels for one architecture (TORCH_CUDA_ARCH_LIST, default
#    9.0; DTP_FAST_FORCE_CUDA=1: fails if the CUDA kernels cannot be built), against the installed torch;
# 2. runs the tests that need a GPU (pytest -m gpu): the CUDA and compiled Triton cases of every op and backend
#    (tests marked triton are gpu tests on a GPU: tests/conftest.py),
#    for at most GPU_CHECK_TEST_SECONDS (default 240; then interrupted, with what ran reported);
# 3. runs benchmarks/gpu_check.py twice: every backend against reference, TF32, and the timings of the feedback
#    phase per backend, a whole L-DRL step and a backprop step, at the paper's CIFAR-10 shapes (SimpleVGG full
#    width, batch 128, iterations 20,30,35,55,20) and ImageNet32 shapes (batch 256, iterations 25,35,40,60,25);
#    then the CIFAR-10 run again with the GPU backends' opt-in chain (DTP_FAST_POOLED_CHAIN=1: the sparse
#    Triton kernels; DTP_FAST_LAYER_STREAMS=1: a stream per layer) against reference.
#
# Everything lands in OUT_DIR: build.log, gpu-tests.log (and .xml), gpu-check-<GPU>-<date>-{cifar10,imagenet32}
# .json/.md. Exit status 0 when every step passed. Extra arguments go to gpu_check.py (the test suite runs this
# script on a CPU with: --device cpu --width 0.125 --batch-size 4 --quick, and GPU_CHECK_SKIP_BUILD=1).
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]}
shift
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
status=0
step() { echo "[gpu_check.sh $(date +%H:%M:%S)] $*" >&2; }

if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then
  step "1/3 build (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
  if ! TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} DTP_FAST_FORCE_CUDA=1 \
      "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
    tail -n 30 "$OUT/build.log" >&2
    step "build failed: see $OUT/build.log"
    exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$PY" -m dtp_fast.cli info >"$OUT/info.txt" 2>&1 || status=1

# at most GPU_CHECK_TEST_SECONDS (default 240) so that the timings of step 3 always get their turn (a lent GPU
# may come with 10 minutes a command); then pytest is interrupted, and still writes its summary and XML
LIMIT=${GPU_CHECK_TEST_SECONDS:-240}
step "2/3 pytest -m gpu (at most ${LIMIT} s)"
timeout --signal=INT --kill-after=30 "$LIMIT" "$PY" -m pytest -m gpu -q -p no:cacheprovider \
  --junitxml "$OUT/gpu-tests.xml" >"$OUT/gpu-tests.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then status=1; fi
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
  step "pytest -m gpu stopped after ${LIMIT} s (GPU_CHECK_TEST_SECONDS): gpu-tests.log shows how far it got"
fi
tail -n 3 "$OUT/gpu-tests.log" >&2

step "3/3 every backend against reference, and timings"
"$PY" benchmarks/gpu_check.py --out "$OUT" --label cifar10 --batch-size 128 "$@" || status=1
"$PY" benchmarks/gpu_check.py --out "$OUT" --label imagenet32 --batch-size 256 --iterations 25,35,40,60,25 "$@" \
  || status=1
# the GPU backends' opt-in chain: the sparse Triton kernels on the pooled dh2, each layer on its own stream
DTP_FAST_POOLED_CHAIN=1 DTP_FAST_LAYER_STREAMS=1 "$PY" benchmarks/gpu_check.py --out "$OUT" \
  --label cifar10-pooled-streams --batch-size 128 --backends triton,cuda "$@" || status=1
step "done (status $status): results in $OUT"
exit $status
