"""Build script of the compiled part of dtp_fast (the extension dtp_fast._C).

Project metadata lives in pyproject.toml; this file only adds the extension.
Build against the torch that is already installed:

    pip install --no-build-isolation -e .

What gets built:
- always (unless DTP_FAST_NO_EXT=1): the schemas csrc/ops.cpp and the CPU
  kernels csrc/cpu/<family>_cpu.cpp;
- in addition the CUDA kernels csrc/cuda/<family>_cuda.cu and their torch
  bindings csrc/cuda/<family>_cuda_bind.cpp (not <family>_cuda.cpp: setuptools
  names an object after its source without the suffix, and a .cu and a .cpp
  of one stem would both build <family>_cuda.o), with WITH_CUDA defined,
  when torch is a CUDA build and CUDA_HOME (nvcc) is found, or when
  DTP_FAST_FORCE_CUDA=1. The .cu files include no torch headers (seconds
  each to compile) and are compiled with -fmad=false, so that the in-kernel
  noise of csrc/philox.h rounds every multiply and add as the CPU kernel and
  the PyTorch mirror do.

Environment switches:
    DTP_FAST_NO_EXT=1      build no extension (pure-Python install)
    DTP_FAST_NO_CUDA=1     never compile the CUDA sources
    DTP_FAST_FORCE_CUDA=1  require the CUDA build: fail with a clear error
                           instead of falling back to CPU only (a GPU is
                           never needed at build time)
    TORCH_CUDA_ARCH_LIST   CUDA targets, default "8.0;9.0+PTX"
    MAX_JOBS               parallel compile jobs, default min(4, cpus)
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _sources(pattern):
    # setuptools wants paths relative to the directory of setup.py.
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# No FMA contraction (the noise must round as its CPU and PyTorch versions do);
# IEEE division and square root, denormals kept (nvcc's defaults, made explicit).
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false", "-prec-div=true", "-prec-sqrt=true",
              "-ftz=false"]


def cuda_sources_of(sources):
    """The CUDA build's extra sources: the kernels (.cu, no torch headers) and
    their binding (.cpp); ``sources(pattern)`` lists the files of a pattern.
    Empty when there are no kernels (then nothing CUDA is built)."""
    kernels = sources("csrc/cuda/*.cu")
    return kernels + sources("csrc/cuda/*.cpp") if kernels else []


def _want_cuda(torch, cuda_home):
    """(build CUDA?, why) from the switches, the torch build and CUDA_HOME."""
    if _env_flag("DTP_FAST_NO_CUDA"):
        return False, "DTP_FAST_NO_CUDA=1"
    if _env_flag("DTP_FAST_FORCE_CUDA"):
        # Forced: fail here, clearly, rather than fall back to a CPU-only build.
        if torch.version.cuda is None:
            raise RuntimeError(
                "DTP_FAST_FORCE_CUDA=1 but torch %s is a CPU-only build: install a "
                "CUDA build of torch first (or unset DTP_FAST_FORCE_CUDA)" % torch.__version__)
        if cuda_home is None:
            raise RuntimeError(
                "DTP_FAST_FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME "
                "to the toolkit (the folder holding bin/nvcc)")
        return True, "DTP_FAST_FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch %s is not a CUDA build" % torch.__version__
    if cuda_home is None:
        return False, "CUDA_HOME / nvcc not found"
    return True, "torch CUDA %s, CUDA_HOME=%s" % (torch.version.cuda, cuda_home)


def _openmp_flags():
    if sys.platform == "win32":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang has no -fopenmp; kernels then run single-threaded.
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def _extensions():
    if _env_flag("DTP_FAST_NO_EXT"):
        print("dtp_fast: building no extension (DTP_FAST_NO_EXT=1): pure-Python install")
        return [], {}

    import torch
    from torch.utils.cpp_extension import (
        CUDA_HOME,
        BuildExtension,
        CppExtension,
        CUDAExtension,
    )

    os.environ.setdefault("MAX_JOBS", str(max(1, min(4, os.cpu_count() or 1))))

    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = cuda_sources_of(_sources)
    want_cuda, why = _want_cuda(torch, CUDA_HOME)
    use_cuda = want_cuda and bool(cuda_sources)
    if want_cuda and not cuda_sources:
        why += ", but there are no CUDA sources in csrc/cuda/"

    omp_cflags, omp_ldflags = _openmp_flags()
    # No -std flag: BuildExtension adds the standard torch itself was built
    # with (C++20 for torch >= 2.10, C++17 before); the sources are C++17.
    # No floating-point contraction: the noise of csrc/philox.h must be bit for
    # bit the pure-PyTorch mirror's (separately rounded multiplies and adds).
    cxx_flags = (["/O2", "/fp:precise"] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-math-errno"]) + omp_cflags
    define_macros = [("DTP_FAST_PYTHON_MODULE", None)]
    extra_compile_args = {"cxx": cxx_flags}

    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        define_macros.append(("WITH_CUDA", None))
        extra_compile_args["nvcc"] = NVCC_FLAGS
        ext_cls = CUDAExtension
        sources = sources + cuda_sources
        what = "CPU + CUDA kernels (arch %s; %s)" % (os.environ["TORCH_CUDA_ARCH_LIST"], why)
    else:
        ext_cls = CppExtension
        what = "CPU kernels only (%s)" % why
    print(
        "dtp_fast: building dtp_fast._C with %s against torch %s, MAX_JOBS=%s"
        % (what, torch.__version__, os.environ["MAX_JOBS"]),
        flush=True,
    )

    ext = ext_cls(
        name="dtp_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=omp_ldflags,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
