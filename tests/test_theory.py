"""The paper's theory figures at small sizes: the qualitative results pinned."""
import json

import pytest

from dtp_fast import theory
from dtp_fast.cli import main


@pytest.mark.slow
def test_jmc_ldrl_keeps_falling_while_drl_stalls(tmp_path):
    out = tmp_path / "jmc.json"
    assert main(["theory", "jmc", "--iterations", "1000", "--seeds", "0", "--json", str(out), "--plot",
                 str(tmp_path / "jmc.png"), "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"iterations", "ldrl", "drl"} and len(r["iterations"]) == len(r["ldrl"]["angle_deg"])
    ldrl, drl = r["ldrl"]["angle_deg"], r["drl"]["angle_deg"]
    assert ldrl[0] > 80 and drl[0] > 80                   # random feedback at the start
    assert ldrl[-1] < 10                                  # L-DRL: a few degrees
    assert ldrl[-1] < ldrl[len(ldrl) * 3 // 4]            # ... and still falling
    assert drl[-1] > ldrl[-1] + 3                         # DRL stalls higher
    assert abs(drl[-1] - drl[len(drl) // 2]) < 2          # ... and has stopped moving
    assert (tmp_path / "jmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_gmp_ldrl_angles_grow_downward_and_beat_random():
    r = theory.gmp(iterations=500, seeds=(0,), width=0.5, methods=("ldrl", "random", "symmetric"))["mean"]
    ldrl, rnd = r["ldrl"], r["random"]
    layers = list(ldrl)
    assert layers == ["conv_0", "conv_1", "fc1", "fc2"]
    assert ldrl["fc2"] < 0.1                              # the output layer's target is BP's
    assert ldrl["conv_0"] > ldrl["conv_1"] > ldrl["fc1"]  # angles grow from the output downward
    for layer in layers[:-1]:
        assert rnd[layer] > 75                            # random feedback: about 90 degrees
        assert ldrl[layer] < rnd[layer] - 20              # L-DRL: well below it
    assert r["symmetric"]["fc1"] < 0.1                    # exact transposes: BP up to float32 rounding


def test_one_layer_at_a_time_equals_all_layers_at_once():
    """gmp trains L-DRL one layer at a time (every thread on the costly layer): the same feedback weights
    as one joint feedback phase per block, since layers are independent and the noise is keyed by layer."""
    import torch

    from dtp_fast.data import load_dataset
    from dtp_fast.feedback import FeedbackConfig, FeedbackState
    from dtp_fast.noise import CounterNoise
    from dtp_fast.theory.base import _feedback_step, _Run
    from dtp_fast.theory.gradient import _gmp_one

    preset = theory.THEORY_PRESETS["quick"]
    ds = load_dataset("digits")
    separate = _Run(ds, preset, 0, 0.25)
    _gmp_one(separate, "ldrl", preset, 6, 0)
    joint = _Run(ds, preset, 0, 0.25)
    state, noise = FeedbackState(), CounterNoise(0)
    for k in range(6):   # 6 iterations: blocks of max(1, 6 // 10) = 1, each on the next training batch
        cfg = FeedbackConfig(iterations=1, momentum=preset.momentum, **preset.ldrl).resolve(joint.net.feedback_names)
        _feedback_step("ldrl", joint.net, joint.batch()[0], cfg, state, noise, k)
    for a, b in zip(separate.net.parameters(), joint.net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
