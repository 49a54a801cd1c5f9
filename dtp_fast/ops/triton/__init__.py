"""Triton kernels of the ``triton`` feedback backend (ALGORITHM.md section 5), by op family.

Each module holds the ``@triton.jit`` kernels and the Python wrappers that launch them:

- :mod:`.noise`: the counter-based Philox normals of :mod:`dtp_fast.ops.noise`,
  drawn inside kernels (same bits as ``philox_normal``), and ``dx = sigma * eps``;
- :mod:`.dh`: the perturbations dh1 (activation + max-pool with switches,
  unpool, minus the clean pass) and dh2 (noise drawn in the kernel, unpool
  with the clean switches, activation, minus the clean pass);
- :mod:`.sgd`: a multi-tensor momentum-SGD step for several layers in one launch;
- :mod:`.chain`: the L-DRL loss of a layer (both terms, one reduction) and a
  persistent kernel running every iteration of a Linear feedback block in one launch.

:mod:`.compile_check` compiles them all for a CUDA target without a GPU.

Triton is optional: importing this package does not import it;
:func:`available` says whether it can be. The kernels run on CUDA tensors,
or on CPU tensors under ``TRITON_INTERPRET=1`` (set before the kernel modules
are imported; slow, for tests). ``import triton`` in these modules is the
triton package (absolute imports), not this folder.
"""
from __future__ import annotations

import os

__all__ = ["available", "load_error", "interpreting"]

_ERROR: str | None = None
_CHECKED = False


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    """Whether ``triton`` (>= 3.6) imports here."""
    global _ERROR, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        try:
            import triton
            import triton.language as tl

            major, minor = (int(v) for v in triton.__version__.split(".")[:2])
            if (major, minor) < (3, 6):
                _ERROR = f"triton {triton.__version__} is too old (>= 3.6 needed): pip install 'triton>=3.6'"
            elif not all(hasattr(tl, f) for f in ("umulhi", "sqrt_rn", "div_rn", "debug_barrier")):
                _ERROR = f"triton {triton.__version__} lacks triton.language functions the kernels use"
        except Exception as err:  # noqa: BLE001 - any import failure means "not available"
            _ERROR = f"triton is not importable ({type(err).__name__}: {err}); install it with pip install 'triton>=3.6'"
    return _ERROR is None


def load_error() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    available()
    return _ERROR
