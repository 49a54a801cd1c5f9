"""The reference L-DRL backend against ALGORITHM.md sections 3 and 5, and its learning behaviour."""
import pytest
import torch
import torch.nn.functional as F

import dtp_fast
from dtp_fast.feedback import (FeedbackConfig, FeedbackState, ReferenceBackend, ldrl_loss, momentum_sgd_,
                               train_feedback)
from dtp_fast.noise import CounterNoise, ExplicitNoise

pytestmark = pytest.mark.usefixtures("float64_default")


def _transcribed_conv_loss(W, b, V, c, x, eps1, eps2, sigma, pool):
    """ALGORITHM.md section 3 written out with raw torch.nn.functional calls."""
    k, s, p = pool

    def Fwd(inp):
        z = F.elu(F.conv2d(inp, W, b, padding=W.shape[-1] // 2))
        y, idx = F.max_pool2d(z, k, s, p, return_indices=True)
        return y, idx, z.shape[-2:]

    def G(out, idx, size):
        u = F.max_unpool2d(out, idx, k, s, p, output_size=size)
        return F.conv_transpose2d(F.elu(u), V, c, padding=V.shape[-1] // 2)

    y, I0, size = Fwd(x)
    r = G(y, I0, size)
    dx = sigma * eps1
    with torch.no_grad():
        y1, I1, _ = Fwd(x + dx)
    dr = G(y1, I1, size) - r
    dy = sigma * eps2
    dr_y = G(y + dy, I0, size) - r
    B = x.shape[0]
    return -2 * (dx * dr).sum() / B + (dr_y ** 2).sum() / B, (y, I0, I1)


@pytest.mark.parametrize("ksize,pool", [(3, (2, 2, 0)), (5, (3, 2, 1))])
def test_reference_loss_and_gradient_equal_transcription(ksize, pool):
    torch.manual_seed(0)
    block = dtp_fast.conv_block((3, 9, 7), 4, kernel_size=ksize, pool=pool).double()
    x = torch.randn(2, 3, 9, 7)
    y, I0 = block.f(x)
    eps1, eps2 = torch.randn_like(x), torch.randn_like(y)
    loss = ldrl_loss(block, x, y, I0, eps1, eps2, 0.3)
    V, c = block.g_op.weight, block.g_op.bias
    grads = torch.autograd.grad(loss, [V, c])
    V2, c2 = V.detach().clone().requires_grad_(), c.detach().clone().requires_grad_()
    loss_t, _ = _transcribed_conv_loss(block.f_op.weight, block.f_op.bias, V2, c2, x, eps1, eps2, 0.3, pool)
    grads_t = torch.autograd.grad(loss_t, [V2, c2])
    torch.testing.assert_close(loss, loss_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads_t[0], rtol=1e-12, atol=1e-12)
    # the bias of G gets a zero gradient (it cancels in dr and dr_y)
    assert grads[0].abs().max() > 1e-3
    assert grads[1].abs().max() < 1e-12


def test_switches_right_in_each_term():
    """dr uses the noisy pass's switches I1, dr_y the clean switches I0: swapping either changes the loss."""
    torch.manual_seed(1)
    block = dtp_fast.conv_block((2, 8, 8), 3, pool=(2, 2, 0)).double()
    x = torch.randn(4, 2, 8, 8)
    y, I0 = block.f(x)
    eps1, eps2 = torch.randn_like(x), torch.randn_like(y)
    sigma = 0.5
    y1, I1 = block.f(x + sigma * eps1)
    assert not torch.equal(I0, I1)  # the noise moves some switches
    loss = ldrl_loss(block, x, y, I0, eps1, eps2, sigma)
    r = block.g(y, I0)
    dx, dy = sigma * eps1, sigma * eps2

    def loss_with(i_dr, i_dry):
        dr = block.g(y1, i_dr) - r
        dr_y = block.g(y + dy, i_dry) - r
        return -2 * (dx * dr).sum() / 4 + (dr_y ** 2).sum() / 4

    with torch.no_grad():
        torch.testing.assert_close(loss, loss_with(I1, I0), rtol=1e-12, atol=1e-12)
        assert abs(float(loss - loss_with(I0, I0))) > 1e-6
        assert abs(float(loss - loss_with(I1, I1))) > 1e-6


def _analytic_grad_V(block, x, y, I0, eps1, eps2, sigma):
    """ALGORITHM.md section 5: grad_V without autograd, for a conv block."""
    V = block.g_op
    y1, I1 = block.f(x + sigma * eps1)
    h0 = block.h(y, I0)
    dh1 = block.h(y1, I1) - h0
    dh2 = block.h(y + sigma * eps2, I0) - h0
    dr_y = block.g_linear(dh2, bias=False)
    B = x.shape[0]
    inp = torch.cat([dh2, dh1])
    gout = torch.cat([dr_y, -sigma * eps1])
    # weight gradient of conv_transpose2d(inp) given grad_out: by autograd of a linear map in V only
    Vw = V.weight.detach().clone().requires_grad_()
    out = F.conv_transpose2d(inp, Vw, None, V.stride, V.padding, V.output_padding)
    (g,) = torch.autograd.grad(out, Vw, gout)
    return 2 / B * g


@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)])
def test_analytic_gradient_of_section5_equals_autograd(pool):
    torch.manual_seed(2)
    block = dtp_fast.conv_block((3, 7, 9), 5, kernel_size=3, pool=pool).double()
    x = torch.randn(3, 3, 7, 9)
    y, I0 = block.f(x)
    eps1, eps2 = torch.randn_like(x), torch.randn_like(y)
    (g_auto,) = torch.autograd.grad(ldrl_loss(block, x, y, I0, eps1, eps2, 0.2), [block.g_op.weight])
    torch.testing.assert_close(_analytic_grad_V(block, x, y, I0, eps1, eps2, 0.2), g_auto, rtol=1e-10, atol=1e-12)


def test_reference_backend_steps_match_manual_momentum_sgd():
    """Two iterations, two noise samples, explicit noise: the update is SGD with momentum on the averaged loss."""
    torch.manual_seed(3)
    net = dtp_fast.mlp((6,), 4, hidden=[5]).double()
    x = torch.randn(3, 6)
    acts, sw = net.activations(x)
    eps = {}
    for it in range(2):
        for s in range(2):
            eps[(7, 1, it, s, "x")] = torch.randn(3, 5)
            eps[(7, 1, it, s, "y")] = torch.randn(3, 4)
    blk = net.block_list()[1]
    V, c = blk.g_op.weight.detach().clone(), blk.g_op.bias.detach().clone()
    hp = FeedbackConfig(iterations=2, lr=0.1, noise=0.3, momentum=0.9, samples=2)
    stats = train_feedback(net, acts, sw, hp, FeedbackState(), ExplicitNoise(eps), step=7, report="all")
    # manual: loss transcribed for a linear block (G = V y + c, no activation)
    buf = torch.zeros_like(V)
    losses = []
    for it in range(2):
        Vg = V.clone().requires_grad_()
        total = 0
        for s in range(2):
            e1, e2 = eps[(7, 1, it, s, "x")], eps[(7, 1, it, s, "y")]
            y = acts[1]
            w, b = blk.f_op.weight, blk.f_op.bias
            dx, dy = 0.3 * e1, 0.3 * e2
            y1 = (acts[0] + dx) @ w.T + b
            dr = (y1 - y) @ Vg.T
            dr_y = dy @ Vg.T
            total = total + (-2 * (dx * dr).sum(1).mean() + (dr_y ** 2).sum(1).mean())
        loss = total / 2
        (g,) = torch.autograd.grad(loss, Vg)
        losses.append(float(loss.detach()))
        buf = 0.9 * buf + g
        V = V - 0.1 * buf
    torch.testing.assert_close(blk.g_op.weight.detach(), V, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blk.g_op.bias.detach(), c, rtol=0, atol=1e-12)  # bias untouched
    assert stats["fc_1"]["loss"] == pytest.approx(losses, rel=1e-10)


def test_counter_noise_is_keyed_not_ordered():
    n = CounterNoise(5)
    kw = dict(shape=(4, 3), device="cpu", dtype=torch.float64)
    a = n.normal(step=1, layer=2, iteration=3, sample=0, which="x", **kw)
    n.normal(step=9, layer=1, iteration=0, sample=0, which="y", **kw)  # other draws in between
    assert torch.equal(a, n.normal(step=1, layer=2, iteration=3, sample=0, which="x", **kw))
    others = [dict(step=2, layer=2, iteration=3, sample=0, which="x"), dict(step=1, layer=1, iteration=3, sample=0, which="x"),
              dict(step=1, layer=2, iteration=4, sample=0, which="x"), dict(step=1, layer=2, iteration=3, sample=1, which="x"),
              dict(step=1, layer=2, iteration=3, sample=0, which="y")]
    for o in others:
        assert not torch.equal(a, n.normal(**o, **kw))
    assert not torch.equal(a, CounterNoise(6).normal(step=1, layer=2, iteration=3, sample=0, which="x", **kw))


def test_hparam_list_length_error_names_layers():
    net = dtp_fast.lenet((1, 16, 16), 10)
    acts, sw = net.activations(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"iterations has 2 value\(s\).*3 trainable feedback layer\(s\): conv_1, fc1, fc2"):
        train_feedback(net, acts, sw, FeedbackConfig(iterations=[1, 2]), FeedbackState(), CounterNoise(), 0)
    with pytest.raises(ValueError, match="noise of layer 'fc1' must be > 0"):
        FeedbackConfig(noise=[0.1, 0.0, 0.1]).resolve(net.feedback_names)
    with pytest.raises(ValueError, match="unknown feedback backend 'fastest'"):
        train_feedback(net, acts, sw, FeedbackConfig(iterations=1), FeedbackState(), CounterNoise(), 0, backend="fastest")


def _train_single_block(block, x, iters, lr, sigma, samples=1):
    y, sw = block.f(x)
    hp = FeedbackConfig(iterations=1, lr=lr, noise=sigma, samples=samples).resolve(["b"])[0]
    backend, state, noise = ReferenceBackend(), FeedbackState(), CounterNoise(0)
    params = [block.g_op.weight, block.g_op.bias]
    bufs = [state.buffer("b", "weight", params[0]), state.buffer("b", "bias", params[1])]
    for k in range(iters):
        loss = backend.layer_loss(block, 1, x, y, sw, hp, noise, 0, k)
        grads = torch.autograd.grad(loss, params)
        momentum_sgd_(params, grads, bufs, hp.lr, hp.momentum)


def test_ldrl_aligns_linear_block():
    """The paper's Fig. 4.2 in small: the angle between V and W^T falls from ~90 to < 10 degrees."""
    torch.manual_seed(0)
    net = dtp_fast.mlp((20,), 10, hidden=[30])
    block = net.block_list()[1]
    start = dtp_fast.diagnostics.angle_and_distance(block.f_op.weight, block.g_op.weight.t())["angle_deg"]
    assert 75 < start < 105
    x = torch.randn(64, 30)
    _train_single_block(block, x, 300, 0.2, 0.1)
    end = dtp_fast.weight_alignment(net)["fc_1"]["angle_deg"]
    assert end < 10, end


@pytest.mark.parametrize("pool,bound", [((2, 2, 0), 10), ((3, 2, 1), 12)])
def test_ldrl_aligns_conv_block(pool, bound):
    """For conv blocks the weight angle has a floor of a few degrees: finite noise at the ELU/pool kinks,
    and (for overlapping pools) unpooling is not exactly the pool's transpose."""
    torch.manual_seed(0)
    block = dtp_fast.conv_block((4, 8, 8), 6, kernel_size=3, pool=pool)
    start = dtp_fast.diagnostics.angle_and_distance(block.f_op.weight, block.g_op.weight)["angle_deg"]
    assert 75 < start < 105
    x = F.elu(torch.randn(64, 4, 8, 8))
    _train_single_block(block, x, 600, 0.05, 0.05)
    end = dtp_fast.diagnostics.angle_and_distance(block.f_op.weight, block.g_op.weight)["angle_deg"]
    assert end < bound, end


def test_gradient_matching_after_feedback_training_mlp():
    """After feedback training, each layer's DTP update is within 30 degrees of the backprop gradient."""
    torch.manual_seed(0)
    net = dtp_fast.mlp((20,), 5, hidden=[32, 32])
    x, labels = torch.randn(64, 20), torch.randint(0, 5, (64,))
    before = dtp_fast.gradient_alignment(net, x, labels)
    acts, sw = net.activations(x)
    cfg = FeedbackConfig(iterations=[400, 400], lr=[0.2, 0.2], noise=[0.05, 0.05])
    train_feedback(net, acts, sw, cfg, FeedbackState(), CounterNoise(0), 0, report="none")
    after = dtp_fast.gradient_alignment(net, x, labels)
    assert before["fc_0"] > 60  # random feedback: far from backprop
    assert after["fc_2"] < 1e-3  # the last layer's target is the backprop gradient
    for name, angle in after.items():
        assert angle < 30, (name, angle, after)


def test_counter_noise_fill_equals_normal():
    """The fast backends fill preallocated slices; the values must be the reference's."""
    n = CounterNoise(11)
    buf = torch.empty(3, 5, 4, 7)
    n.fill_(buf[1], step=2, layer=1, iteration=4, sample=0, which="y")
    expected = n.normal(step=2, layer=1, iteration=4, sample=0, which="y", shape=(5, 4, 7), device="cpu",
                        dtype=torch.float64)
    assert torch.equal(buf[1], expected)
    nc = torch.empty(5, 7, 4).transpose(1, 2)  # non-contiguous target: generic path
    n.fill_(nc, step=2, layer=1, iteration=4, sample=0, which="y")
    assert torch.equal(nc, expected)


@pytest.mark.parametrize("settings, word", [
    (dict(iterations="20"), "feedback iterations must be an integer"),
    (dict(lr=[0.1, None]), "feedback lr must be a finite number"),
    (dict(noise=float("nan")), "feedback noise must be a finite number"),
    (dict(momentum=1.5), "feedback momentum must be in"),
    (dict(samples=0), "feedback samples must be an integer >= 1"),
    (dict(weight_decay=-1.0), "feedback weight_decay must be a finite number >= 0"),
])
def test_feedback_config_checks_types_at_construction(settings, word):
    with pytest.raises(ValueError, match=word):
        FeedbackConfig(**settings)
