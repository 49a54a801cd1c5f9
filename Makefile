# Two commands on a fresh machine:
#   make demo   L-DRL and backprop side by side on the embedded digits
#   make test   the test suite
# Both create .venv and install dtp_fast into it (compiling dtp_fast._C).
PYTHON ?= python3
VENV   ?= .venv
# The torch to build against; override for a CUDA machine, e.g. make TORCH="torch==2.11.0" test
TORCH  ?= torch==2.13.0
# CI pins triton 3.8.0 (3.9.0's interpreter miscomputes bf16 * fp32 scalars); empty to skip
TRITON ?= triton==3.8.0
BIN := $(VENV)/bin
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh \
           csrc/cuda/*.h csrc/cuda/*.cpp)

.PHONY: install demo test clean cpp-test cuda-check

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(TRITON) setuptools wheel ninja pybind11 numpy
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test]"
	$(BIN)/dtp-fast info
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/dtp-fast demo

test: install
	DTP_FAST_REQUIRE_EXT=1 $(BIN)/python -m pytest -q

# C++ tests of the CPU kernels: CMake + ctest against the torch of $(VENV)
cpp-test: install
	cmake -S . -B build/cmake -DCMAKE_PREFIX_PATH="$$($(BIN)/python -c 'import torch;print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j 2
	cd build/cmake && ctest --output-on-failure

# Compile-and-import check of the CUDA build (no GPU needed): its own venv with
# torch==2.11.0 (CUDA 13) and triton==3.6.0, nvcc from CUDA_HOME (default /usr/local/cuda), and the test suite there
cuda-check:
	bash .ci/cuda_check.sh

clean:
	rm -rf build dtp_fast/_C*.so *.egg-info
