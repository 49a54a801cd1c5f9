"""The DTP family (vanilla DTP, TP, DRL, parallel L-DRL): each rule, and each trains the digits."""
import pytest
import torch
from torch import nn

import dtp_fast
from dtp_fast.api import make_run, train
from dtp_fast.dtp import first_target, propagate_targets
from dtp_fast.family import (drl_loss, ensure_direct_feedback, reconstruction_loss, train_family_feedback,
                             upper_forward)
from dtp_fast.feedback import FeedbackConfig, FeedbackState
from dtp_fast.noise import CounterNoise


pytestmark = pytest.mark.usefixtures("float64_default")


def test_reconstruction_loss_is_lee_et_al():
    torch.manual_seed(0)
    block = dtp_fast.conv_block((2, 6, 6), 3, pool=(2, 2, 0))
    x, eps = torch.randn(4, 2, 6, 6), torch.randn(4, 2, 6, 6)
    xn = x + 0.3 * eps
    y, sw = block.f(xn)
    expected = ((xn - block.g(y, sw)) ** 2).sum() / 4
    loss = reconstruction_loss(block, x, eps, 0.3)
    torch.testing.assert_close(loss, expected)
    gw, gb = torch.autograd.grad(loss, [block.g_op.weight, block.g_op.bias])
    assert gb.abs().max() > 1e-3  # unlike L-DRL, the bias is trained


def test_target_rules():
    torch.manual_seed(1)
    net = dtp_fast.mlp((5,), 3, hidden=[4, 4])
    x, labels = torch.randn(6, 5), torch.randint(0, 3, (6,))
    acts, sw = net.activations(x)
    top = first_target(acts[-1], labels, 0.5)
    b = net.block_list()
    tp = propagate_targets(net, acts, sw, top, "tp")
    torch.testing.assert_close(tp[1], b[2].g(top, None))
    torch.testing.assert_close(tp[0], b[1].g(tp[1], None))
    diff = propagate_targets(net, acts, sw, top, "difference")
    torch.testing.assert_close(diff[0], acts[0] + b[1].g(diff[1], None) - b[1].g(acts[1], None))
    ensure_direct_feedback(net)
    direct = propagate_targets(net, acts, sw, top, "direct")
    for i, name in enumerate(net.names[:-1]):
        torch.testing.assert_close(direct[i], acts[i] + (top - acts[-1]) @ net.direct[name].weight.t())
    with pytest.raises(ValueError, match="unknown target rule"):
        propagate_targets(net, acts, sw, top, "magic")


def test_drl_loss_and_its_minimiser():
    """DRL reconstructs the noise through the upper layers: with a square linear top, Q -> W^-1."""
    torch.manual_seed(2)
    seq = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    net = dtp_fast.from_sequential(seq, (6,))
    x = torch.randn(16, 6)
    acts, sw = net.activations(x)
    ensure_direct_feedback(net)
    q, w = net.direct["fc_0"].weight, seq[1].weight
    eps = torch.randn(16, 6)
    expected = ((0.1 * eps @ w.t()) @ q.t() - 0.1 * eps).pow(2).sum(1).mean()
    torch.testing.assert_close(drl_loss(net, 0, acts[0], eps, 0.1), expected)
    clean = upper_forward(net, 0, acts[0])      # what train_family_feedback computes once per phase
    assert torch.equal(drl_loss(net, 0, acts[0], eps, 0.1, clean), drl_loss(net, 0, acts[0], eps, 0.1))
    cfg = FeedbackConfig(iterations=3000, lr=20.0, noise=0.1, momentum=0.9).resolve(net.names[:-1])
    train_family_feedback("drl", net, acts, sw, cfg, FeedbackState(), CounterNoise(0), 0, report="none")
    torch.testing.assert_close(net.direct["fc_0"].weight.detach(), torch.linalg.inv(w.detach()), rtol=0.05,
                               atol=0.05)


def test_parallel_is_one_iteration_with_many_samples():
    t = make_run("mlp", "digits", algo="parallel", feedback_iters=[5, 7], epochs=1, limit_batches=1,
                 progress=False)
    assert [(h.iterations, h.samples) for h in t.fb_hparams] == [(1, 7), (1, 7)]


@pytest.mark.parametrize("algo,settings,floor", [
    ("dtp", dict(feedback_lr=1e-3), 0.8),
    ("tp", dict(feedback_lr=3e-4, lr=0.02), 0.2),
    ("drl", dict(), 0.8),
    ("parallel", dict(), 0.8),
])
def test_family_method_trains_digits_above_chance(algo, settings, floor):
    torch.set_default_dtype(torch.float32)
    s = train("mlp", "digits", algo=algo, epochs=3, progress=False, **settings)
    assert s["test_accuracy"] > floor, s["test_accuracy"]
    assert s["gradient_angle_deg"]["fc_2"] < 0.1  # the output layer's update is the BP gradient (float32)
