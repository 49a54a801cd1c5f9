"""The paper's two theory figures as commands (``dtp-fast theory jmc | gmp``).

jmc (Fig. 4.2, the Jacobian Matching Condition): on LeNet with frozen forward
weights, the angle and relative distance between the last layer's feedback
Jacobian J_G and J_F^T over feedback iterations, for L-DRL (G of the last
block) against DRL (the direct feedback into the last hidden layer). For a
Linear last block both Jacobians are the weight matrices themselves.

gmp (Fig. 4.3, the Gradient Matching Property): after feedback training, the
angle between each layer's DTP update and its backprop gradient, for L-DRL,
DRL, random feedback (untrained) and symmetric feedback (G = F^T exactly).

Two presets carry the settings (:data:`THEORY_PRESETS`, in :mod:`.base`): ``paper``, the
official ``theorem_test.py`` on CIFAR-10 (LeNet without biases, one batch of
256 per seed for the feedback training and the angles, 5,000 iterations per
layer, beta 0.4655), and ``quick``, minutes on the embedded digits. Results
are written per seed as they finish, so a run that stops resumes where it
was (the same ``--json`` file and settings).

:mod:`.jacobian` holds jmc, :mod:`.gradient` gmp, :mod:`.output` the tables
and figures beside the paper's values; the options are in :mod:`dtp_fast.cli.theory`.
"""
from .base import THEORY_PRESETS, TheoryPreset, theory_preset
from .gradient import GMP_METHODS, gmp
from .jacobian import jmc
from .output import gmp_markdown, jmc_markdown, plot_gmp, plot_jmc

__all__ = ["TheoryPreset", "THEORY_PRESETS", "theory_preset", "jmc", "gmp", "GMP_METHODS", "gmp_markdown",
           "jmc_markdown", "plot_gmp", "plot_jmc"]
