"""The compiled ops of ``dtp_fast._C`` (``torch.ops.dtp_fast.*``) with their Python wrappers and
pure-PyTorch references, one module per family (the C++ sources use the same stems:
``csrc/cpu/<family>_cpu.cpp``, ``csrc/cuda/<family>_cuda.cu``):

- :mod:`.pool`: ``act_pool2d``, ``unpool_act2d`` (with autograd);
- :mod:`.dh`: ``pool_unpool_diff``, ``noisy_unpool_diff``, ``noisy_unpool_diff_philox``
  (the L-DRL perturbations dh1 and dh2);
- :mod:`.noise`: ``philox_normal_`` and its PyTorch mirror ``philox_normal``; ``philox_noisy_input``;
- :mod:`.sgd`: ``momentum_sgd_`` (many tensors in one call);
- :mod:`.chain`: ``ldrl_loss``, ``linear_chain_`` (the sequential chain of a feedback layer);
- :mod:`.sparse`: ``switch_lists``, ``pooled_conv_t``, ``pooled_wgrad``, ``pooled_chain_`` (the chain of a pooled conv
  feedback layer from dh2 held at pooled resolution; CPU only).

Each op ``x`` has its reference ``x_ref`` (``philox_normal`` for the noise), which defines
its result. :mod:`.triton` holds the Triton kernels of the ``triton`` backend, by family too.

The fake (meta) kernels and autograd formulas of the compiled ops live in their family's module
(``FAKES``, ``AUTOGRAD``); :func:`_register_python_impls` registers them, called by
:mod:`dtp_fast._ext` once the library has loaded (and by this package's import when it already
had: torch imports it to find them).
"""
from __future__ import annotations

import sys

import torch

from . import chain, dh, noise, pool, sgd, sparse
from ._common import ACTIVATIONS
from .chain import ldrl_loss, ldrl_loss_ref, linear_chain_, linear_chain_ref
from .dh import (noisy_act_diff_philox, noisy_unpool_diff, noisy_unpool_diff_philox, noisy_unpool_diff_philox_ref, noisy_unpool_diff_ref,
                 pool_unpool_diff, pool_unpool_diff_ref)
from .noise import philox4x32, philox_noisy_input, philox_noisy_input_ref, philox_normal, philox_normal_
from .pool import act_pool2d, act_pool2d_ref, unpool2d_last_wins, unpool_act2d, unpool_act2d_ref
from .sgd import momentum_sgd_, momentum_sgd_ref
from .sparse import (SwitchLists, interior, pooled_chain_, pooled_chain_ref, pooled_conv_t, pooled_wgrad, switch_lists,
                     unpool2d)

__all__ = [
    "ACTIVATIONS",
    "SwitchLists",
    "act_pool2d",
    "act_pool2d_ref",
    "ldrl_loss",
    "ldrl_loss_ref",
    "linear_chain_",
    "linear_chain_ref",
    "momentum_sgd_",
    "momentum_sgd_ref",
    "noisy_act_diff_philox",
    "noisy_unpool_diff",
    "noisy_unpool_diff_philox",
    "noisy_unpool_diff_philox_ref",
    "noisy_unpool_diff_ref",
    "philox4x32",
    "philox_noisy_input",
    "philox_noisy_input_ref",
    "philox_normal",
    "philox_normal_",
    "pool_unpool_diff",
    "pool_unpool_diff_ref",
    "unpool2d_last_wins",
    "unpool_act2d",
    "unpool_act2d_ref",
    "interior",
    "pooled_chain_ref",
    "pooled_conv_t",
    "pooled_wgrad",
    "pooled_chain_",
    "switch_lists",
    "unpool2d",
]

#: The op families, in the order their Python parts are registered.
FAMILIES = (pool, dh, noise, sgd, chain, sparse)
_registered = False


def _register_python_impls() -> None:
    """Register the fake kernels (``FAKES``) and autograd formulas (``AUTOGRAD``) of every family; idempotent.

    Needs the library loaded (the ops defined): called by dtp_fast._ext after loading it. The
    registration calls are made here, not in the family modules: torch checks that
    ``register_fake`` is called from the module the C++ library names in its
    ``m.set_python_module("dtp_fast.ops")`` (csrc/ops.cpp).
    """
    global _registered
    if _registered:
        return
    _registered = True
    for family in FAMILIES:
        for op, fake in family.FAKES.items():
            torch.library.register_fake(op, fake)
        for op, (backward, setup) in family.AUTOGRAD.items():
            torch.library.register_autograd(op, backward, setup_context=setup)


if "dtp_fast._C" in sys.modules:  # loaded before this package (e.g. by torch's pystub lookup)
    _register_python_impls()
