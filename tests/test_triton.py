"""The `triton` backend and its kernels (dtp_fast.kernels) against PyTorch references and the `torch` backend.

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py),
so shapes are small. With a GPU (and TRITON_INTERPRET unset) the same tests run on CUDA tensors, and the
GPU-only tests (CUDA graphs, TF32) run too.
"""
import copy
import importlib.util
import math
import pathlib
import sys

import pytest
import torch

import dtp_fast
from dtp_fast import kernels, ops
from dtp_fast.feedback import (BackendUnavailableError, FeedbackConfig, FeedbackState, available_backends,
                               resolve_backend, train_feedback)
from dtp_fast.feedback import AnalyticBackend, minimum_memory_budget
from dtp_fast.feedback import TritonBackend
from dtp_fast.noise import CounterNoise, ExplicitNoise, NoiseBlock, philox_normal

if not kernels.available():
    pytest.skip(f"triton unavailable: {kernels.load_error()}", allow_module_level=True)
if kernels.interpreting():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("no GPU and TRITON_INTERPRET is not set: Triton kernels cannot run", allow_module_level=True)

from dtp_fast.kernels import chain, pool  # noqa: E402  (after TRITON_INTERPRET is settled)
from dtp_fast.kernels import noise as knoise  # noqa: E402

needs_gpu = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (Triton compiled, not interpreted)")
ROOT = pathlib.Path(__file__).resolve().parents[1]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}
POOLS = {"2x2/2": ((2, 2), (2, 2), (0, 0)), "3/2/1": ((3, 3), (2, 2), (1, 1))}


def _noncontiguous(t):
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def _close(got, want, dtype, what=""):
    diff = (got - want).abs().nan_to_num(0.0).max().item() if got.numel() else 0.0
    print(f"{what}: max abs diff {diff:.3g}")
    torch.testing.assert_close(got, want, **TOL[dtype], equal_nan=True, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------- noise
@pytest.mark.parametrize("shape,offset,iteration,sample", [((3, 37), 7, 11, 0), ((2, 5, 3, 3), 0, 4, 2),
                                                           ((1, 1), 2**32 - 1, 2**32 - 1, 0)])
def test_in_kernel_noise_is_bit_identical_to_philox_normal(shape, offset, iteration, sample):
    key = CounterNoise(3).key(5, 2, "y")
    want = philox_normal(shape, key, offset, iteration, sample)
    got = knoise.philox_normal(shape, key, offset, iteration, sample, device=DEVICE).cpu()
    assert torch.equal(got, want)  # bit for bit (correctly rounded div/sqrt, no FMA contraction)


def test_noise_fill_blocks_rows_and_channels_last_layout():
    key = CounterNoise(0).key(1, 3, "x")
    B, n, S = 3, 2, 2
    out = torch.empty(n * S * B, 5, 3, 2, device=DEVICE).contiguous(memory_format=torch.channels_last)
    knoise.noise_fill_(out, key, 1.0, batch=B, offset=4, iteration=6, samples=S)
    want = torch.cat([philox_normal((B, 5, 3, 2), key, 4, 6 + m // S, m % S) for m in range(n * S)])
    assert torch.equal(out.cpu(), want)
    # float64: the float32 normals cast, times sigma in float64
    out64 = knoise.noise_fill_(torch.empty(n * S * B, 7, dtype=torch.float64, device=DEVICE), key, 0.3, batch=B,
                               offset=4, iteration=6, samples=S)
    want64 = torch.cat([philox_normal((B, 7), key, 4, 6 + m // S, m % S) for m in range(n * S)]).double() * 0.3
    assert torch.equal(out64.cpu(), want64)


def test_in_kernel_noise_statistics_across_iterations_samples_and_rows():
    key = CounterNoise(11).key(0, 1, "y")
    rows, feat, n, S = 16, 1024, 2, 2
    z = knoise.noise_fill_(torch.empty(n * S * rows, feat, device=DEVICE), key, 1.0, batch=rows, iteration=0,
                           samples=S).cpu().double()
    N = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(N)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / N)
    assert abs((z ** 4).mean().item() - 3) < 0.1            # Gaussian kurtosis
    assert abs((z.abs() < 1).double().mean().item() - 0.6827) < 0.01
    blocks = z.reshape(n * S, rows * feat)                  # (iteration, sample) blocks
    corr = torch.corrcoef(blocks)
    off = corr[~torch.eye(n * S, dtype=torch.bool)]
    assert off.abs().max().item() < 5 / math.sqrt(rows * feat)  # independent across iterations and samples
    per_row = z.reshape(n * S * rows, feat)
    rc = torch.corrcoef(per_row[:rows])                     # and across data rows
    assert rc[~torch.eye(rows, dtype=torch.bool)].abs().max().item() < 6 / math.sqrt(feat)
    lag = torch.corrcoef(torch.stack([z.flatten()[:-1], z.flatten()[1:]]))[0, 1].item()
    assert abs(lag) < 5 / math.sqrt(N)                      # and between neighbouring elements


# ---------------------------------------------------------------------------- dh1, dh2
def _pooled(act, k, s, p, B, C, H, W, dtype):
    y0 = torch.randn(B, C, H, W, dtype=dtype)
    y, I = ops.act_pool2d_ref(y0, act, k, s, p)
    h0 = ops._activate(ops.unpool2d_last_wins(y, I, (H, W)), act)
    return y, I, h0


@pytest.mark.parametrize("act", ["elu", "relu", "tanh", "identity"])
@pytest.mark.parametrize("pool_name", list(POOLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dh1_equals_reference(act, pool_name, dtype):
    torch.manual_seed(0)
    k, s, p = POOLS[pool_name]
    B, M, C, H, W = 3, 2, 4, 7, 9
    z1 = torch.randn(M * B, C, H, W, dtype=dtype) * 2
    z1[0, 0, :3, :3] = -40.0           # ELU / tanh / ReLU saturate: ties in a window
    z1[1, 1, 2, :4] = float("-inf")    # a window of -inf
    z1[2, 2, 4, 4] = float("nan")      # NaN wins its windows
    z1[2, 3, 1, 1:3] = float("nan")    # the last NaN wins
    _, _, h0 = _pooled(act, k, s, p, B, C, H, W, dtype)
    want = ops.pool_unpool_diff_ref(z1, h0, act, k, s, p)
    for layout in ("nchw", "channels_last", "strided"):
        z = z1.to(DEVICE)
        z = {"nchw": z, "channels_last": z.contiguous(memory_format=torch.channels_last),
             "strided": _noncontiguous(z)}[layout]
        got = pool.pool_unpool_diff(z, _noncontiguous(h0.to(DEVICE)), act, k, s, p)
        assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        _close(got.cpu(), want, dtype, f"dh1 {act} {pool_name} {layout}")
        assert torch.equal(got.cpu().isnan(), want.isnan())


@pytest.mark.parametrize("pool_name", list(POOLS))
def test_dh1_batch_one_odd_planes(pool_name):
    k, s, p = POOLS[pool_name]
    z1 = torch.randn(3, 2, 5, 11)
    _, _, h0 = _pooled("elu", k, s, p, 1, 2, 5, 11, torch.float32)
    _close(pool.pool_unpool_diff(z1.to(DEVICE), h0.to(DEVICE), "elu", k, s, p).cpu(),
           ops.pool_unpool_diff_ref(z1, h0, "elu", k, s, p), torch.float32, "dh1 batch 1")


@pytest.mark.parametrize("act", ["elu", "tanh", "relu"])
@pytest.mark.parametrize("pool_name", list(POOLS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dh2_with_given_noise_equals_reference(act, pool_name, dtype):
    torch.manual_seed(1)
    k, s, p = POOLS[pool_name]
    B, M, C, H, W = 2, 3, 3, 9, 7
    y, I, h0 = _pooled(act, k, s, p, B, C, H, W, dtype)
    eps = torch.randn(M * B, *y.shape[1:], dtype=dtype)
    want = ops.noisy_unpool_diff_ref(y, eps, 0.3, I, h0, act, (H, W))
    d = DEVICE
    got = pool.noisy_unpool_diff(_noncontiguous(y.to(d)), _noncontiguous(I.to(d)), h0.to(d), act, POOLS[pool_name],
                                 0.3, M, eps=eps.to(d).contiguous(memory_format=torch.channels_last),
                                 channels_last=True)
    assert got.is_contiguous(memory_format=torch.channels_last)
    _close(got.cpu(), want, dtype, f"dh2 {act} {pool_name}")


def test_dh2_duplicate_switches_last_write_wins():
    """Overlapping 3/2/1 windows that pick the same input: the last pooled position (row-major) wins."""
    z = torch.tensor([[[[0., 0., 0., 0.], [0., 9., 0., 0.], [0., 0., 0., 0.], [0., 0., 0., 0.]]]])
    y, I = ops.act_pool2d_ref(z, "identity", 3, 2, 1)
    assert (I == 5).sum() >= 2
    h0 = ops.unpool2d_last_wins(y, I, (4, 4))
    eps = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)
    want = ops.noisy_unpool_diff_ref(y, eps, 1.0, I, h0, "identity", (4, 4))
    got = pool.noisy_unpool_diff(y.to(DEVICE), I.to(DEVICE), h0.to(DEVICE), "identity", POOLS["3/2/1"], 1.0, 1,
                                 eps=eps.to(DEVICE))
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("pool_name", list(POOLS) + ["linear"])
def test_dh2_in_kernel_noise_equals_the_torch_backend(pool_name):
    """dh2 with dy drawn in the kernel = the torch backend's dh2 on the materialised counter noise."""
    torch.manual_seed(2)
    from dtp_fast.blocks import conv_block, linear_block

    if pool_name == "linear":
        block = linear_block((6,), 5, act="elu")
    else:
        k, s, p = POOLS[pool_name]
        block = conv_block((2, 7, 9), 3, kernel_size=3, pool=(k[0], s[0], p[0]))
    B, n, S = 2, 3, 2
    x = torch.randn(B, *block.in_shape)
    y, sw = block.f(x)
    h0 = block.h(y, sw)
    nb = NoiseBlock(CounterNoise(5), 7, 2, "y", 4, n, S, 3, tuple(y.shape))
    want = AnalyticBackend().dh2(block, y, nb, 0.2, sw, h0)
    block.to(DEVICE)
    dsw = None if sw is None else sw.to(DEVICE)
    got = TritonBackend(tf32=False).dh2(block, y.to(DEVICE), nb, 0.2, dsw, h0.to(DEVICE))
    assert got.shape == want.shape
    _close(got.cpu(), want, torch.float32, f"dh2 in-kernel noise {pool_name}")


def test_noisy_input_equals_the_torch_backend():
    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    nb = NoiseBlock(CounterNoise(1), 2, 1, "x", 3, 2, 2, 5, tuple(x.shape))
    want = AnalyticBackend().noisy_input(nb, 0.4, x, torch.channels_last)
    got = TritonBackend(tf32=False).noisy_input(nb, 0.4, x.to(DEVICE), torch.channels_last)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), want)


# ---------------------------------------------------------------------------- the chain
def test_loss_kernel_both_terms():
    torch.manual_seed(3)
    dr_y = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    V = torch.randn(5, 4, 3, 3)
    A = torch.randn(5, 4, 3, 3).contiguous(memory_format=torch.channels_last)  # read in V's layout
    table = chain.layer_scalars([(0.1, 0.9, 0.0, 2 / 6, 1 / 6)], V)
    out = torch.zeros(2, device=DEVICE)
    chain.ldrl_loss_(out[1:], dr_y.to(DEVICE), A.to(DEVICE), V.to(DEVICE), table.to(DEVICE)[0], block=64)
    want = (dr_y.pow(2).sum() - 2 * (A * V).sum()) / 6
    assert out[0].item() == 0
    assert out[1].item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multi_tensor_momentum_matches_torch_sgd(dtype):
    """Six tensors (two launches of up to four), channels_last and odd sizes, weight decay, three steps."""
    torch.manual_seed(4)
    params = [torch.randn(3, 4, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last),
              torch.randn(17, dtype=dtype), torch.randn(5, 5, dtype=dtype), torch.randn(1, dtype=dtype),
              torch.randn(2, 3, dtype=dtype), torch.randn(4099, dtype=dtype)]
    cfg = [(0.1, 0.9, 0.0), (0.05, 0.5, 1e-2), (0.2, 0.0, 0.0), (0.01, 0.9, 0.1), (0.3, 0.8, 0.0), (0.02, 0.9, 1e-4)]
    refs = [p.clone().requires_grad_() for p in params]
    opts = [torch.optim.SGD([r], lr=lr, momentum=m, weight_decay=wd) for r, (lr, m, wd) in zip(refs, cfg)]
    mine = [p.clone().to(DEVICE) for p in params]
    bufs = [torch.zeros_like(p) for p in mine]
    table = chain.layer_scalars([(lr, m, wd, 1.0, 1.0) for lr, m, wd in cfg], mine[0])
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for r, o, g in zip(refs, opts, grads):
            r.grad = g.clone()
            o.step()
        chain.momentum_step_(mine, bufs, [g.to(DEVICE) for g in grads], table, block=256)
    for r, m, b, o in zip(refs, mine, bufs, opts):
        _close(m.cpu(), r.detach(), dtype, "param")
        if o.param_groups[0]["momentum"]:  # torch keeps no buffer without momentum
            _close(b.cpu(), o.state[r]["momentum_buffer"], dtype, "momentum buffer")


def test_multi_tensor_momentum_with_the_ldrl_gradient():
    """g = gs * (quad - A) + wd * V, as the torch engine's gradient() and apply()."""
    torch.manual_seed(5)
    V, buf, Q, A = (torch.randn(4, 3, 3, 3) for _ in range(4))
    lr, mom, wd, gs = 0.05, 0.9, 1e-3, 2 / 8
    want_buf = buf * mom + ((Q - A) * gs + wd * V)
    want_V = V - lr * want_buf
    Vd, bd = V.to(DEVICE), buf.to(DEVICE)
    chain.momentum_step_([Vd], [bd], [Q.to(DEVICE)], chain.layer_scalars([(lr, mom, wd, gs, 0)], Vd),
                         subtract=[A.to(DEVICE)])
    _close(Vd.cpu(), want_V, torch.float32, "V")
    _close(bd.cpu(), want_buf, torch.float32, "buf")


@pytest.mark.parametrize("d_in,d_out,n,cols,dtype", [(37, 10, 5, 64, torch.float32), (40, 70, 3, 16, torch.float32),
                                                     (19, 10, 4, 64, torch.float64), (1, 3, 2, 16, torch.float32)])
def test_linear_persistent_kernel_equals_the_torch_chain(d_in, d_out, n, cols, dtype):
    """Every iteration of a Linear block in one launch against the torch engine's per-iteration chain
    (V C_k, the loss before the step, momentum SGD); cols=16 forces several column tiles."""
    torch.manual_seed(6)
    V, buf = torch.randn(d_in, d_out, dtype=dtype), 0.1 * torch.randn(d_in, d_out, dtype=dtype)
    A = torch.randn(n, d_in, d_out, dtype=dtype)
    X = torch.randn(n, 8, d_out, dtype=dtype)
    C = X.transpose(1, 2) @ X
    lr, mom, wd, scale = 0.01, 0.9, 1e-3, 1 / 8
    Vr, br, losses = V.clone(), buf.clone(), []
    for k in range(n):
        quad = Vr @ C[k]
        losses.append(scale * ((quad * Vr).sum() - 2 * (A[k] * Vr).sum()))
        grad = (quad - A[k]).mul_(2 * scale).add_(Vr, alpha=wd)
        br.mul_(mom).add_(grad)
        Vr.add_(br, alpha=-lr)
    Vd, bd = V.to(DEVICE), buf.to(DEVICE)
    got_losses = torch.zeros(n, dtype=dtype, device=DEVICE)
    table = chain.layer_scalars([(lr, mom, wd, 2 * scale, scale)], Vd)
    chain.linear_chain_(Vd, bd, A.to(DEVICE), C.to(DEVICE), table[0], got_losses, 1, cols=cols)
    _close(Vd.cpu(), Vr, dtype, "V")
    _close(bd.cpu(), br, dtype, "buf")
    assert got_losses[0].item() == 0  # before loss_from
    torch.testing.assert_close(got_losses[1:].cpu(), torch.stack(losses[1:]), rtol=TOL[dtype]["rtol"] * 10, atol=1e-6)


# ---------------------------------------------------------------------------- the whole backend
def _net(kernel=3, pool=(2, 2, 0), act=torch.nn.ELU, hw=(9, 7), channels=(3, 4, 5), hidden=6, classes=3):
    c0, c1, c2 = channels
    k, s, p = pool
    h, w = hw[0] // 2, hw[1] // 2
    h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    nn = torch.nn
    seq = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1), nn.ELU(), nn.MaxPool2d(2, 2),
                        nn.Conv2d(c1, c2, kernel, padding=kernel // 2), act(), nn.MaxPool2d(k, s, p),
                        nn.Flatten(), nn.Linear(c2 * h * w, hidden), act(), nn.Linear(hidden, classes))
    return dtp_fast.from_sequential(seq, (c0, *hw))


def _run(net, x, cfg, backend, budget, steps=2, noise=None, noncontig=False, reduce=None):
    """Feedback training for ``steps`` batches; ``backend`` a name or a backend object (called directly,
    so that the triton backend also runs on CPU tensors under the interpreter)."""
    net = copy.deepcopy(net)
    state, out = FeedbackState(), []
    noise = CounterNoise(3) if noise is None else noise
    hp = cfg.resolve(net.feedback_names)
    for s in range(steps):
        acts, sw = net.activations(x)
        acts = [a.detach() for a in acts]
        if noncontig:
            acts = [_noncontiguous(a) for a in acts]
            sw = [None if i is None else _noncontiguous(i) for i in sw]
        if isinstance(backend, str):
            out.append(train_feedback(net, acts, sw, cfg, state, noise, 5 + s, backend=backend, report="all",
                                      memory_budget=budget))
        else:
            out.append(backend.train(net, acts, sw, hp, state, noise, 5 + s, "all", memory_budget=budget,
                                     reduce=reduce))
    return net, state, out


def _assert_same(ref, fast, dtype):
    (n_ref, st_ref, l_ref), (n_fast, st_fast, l_fast) = ref, fast
    for name in n_ref.feedback_names:
        a, b = n_ref.blocks[name].g_op, n_fast.blocks[name].g_op
        _close(b.weight.detach().cpu(), a.weight.detach().cpu(), dtype, f"{name} weight")
        _close(st_fast.buffers[f"{name}.weight"].cpu(), st_ref.buffers[f"{name}.weight"].cpu(), dtype,
               f"{name} momentum")
    for a, b in zip(l_ref, l_fast):
        for name in a:
            assert b[name]["loss"] == pytest.approx(a[name]["loss"], rel=TOL[dtype]["rtol"] * 10, abs=1e-6)


@pytest.mark.parametrize("case", ["conv3x3-pool2", "conv5x5-pool3/2/1", "tanh-odd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunking", ["one", "all"])
def test_triton_backend_equals_torch_and_reference(case, dtype, chunking):
    torch.manual_seed(0)
    kw = {"conv3x3-pool2": dict(kernel=3, pool=(2, 2, 0)), "conv5x5-pool3/2/1": dict(kernel=5, pool=(3, 2, 1)),
          "tanh-odd": dict(act=torch.nn.Tanh, hw=(11, 13), pool=(3, 2, 1))}[case]
    net = _net(**kw).to(dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    hp = cfg.resolve(net.feedback_names)
    budget = minimum_memory_budget(net.block_list()[1:], hp, 3, x.element_size()) if chunking == "one" else None
    ref = _run(net, x, cfg, "reference", None)
    _assert_same(ref, _run(net, x, cfg, "torch", budget), dtype)
    backend = TritonBackend(tf32=False)
    fast = _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, budget)
    assert backend.last_chain.startswith("eager" if DEVICE == "cpu" or chunking == "one" else "graph")
    _assert_same(ref, fast, dtype)


def test_triton_backend_batch_one_noncontiguous_lenet_mlp_and_explicit_noise():
    torch.manual_seed(1)
    backend = TritonBackend(tf32=False)
    net = _net(kernel=5, pool=(3, 2, 1), hw=(7, 9)).double()
    x = torch.randn(1, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[6, 2, 3], lr=0.05, noise=0.2, samples=3)
    ref = _run(net, x, cfg, "reference", None)
    _assert_same(ref, _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, None, noncontig=True), torch.float64)
    # noise the kernels cannot draw themselves (ExplicitNoise): read from tensors instead
    table = {}

    def explicit(step, layer, iteration, sample, which):
        key = (step, layer, iteration, sample, which)
        if key not in table:
            shape = net.block_list()[layer].in_shape if which == "x" else net.block_list()[layer].out_shape
            table[key] = torch.randn(1, *shape, dtype=torch.float64)
        return table[key]
    noise = ExplicitNoise(explicit)
    ref = _run(net.cpu(), x, cfg, "reference", None, noise=noise)
    _assert_same(ref, _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, None, noise=noise), torch.float64)
    net = dtp_fast.lenet((3, 16, 16), 10, channels=(4, 8), hidden=16).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[3, 4, 2], lr=[7.19e-4, 1.25e-4, 3.54e-2], noise=[0.4164, 0.3826, 0.1395])
    _assert_same(_run(net, x, cfg, "reference", None), _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, "default"),
                 torch.float64)
    net = dtp_fast.mlp((5,), 4, hidden=[7, 6], act="tanh").double()
    x = torch.randn(4, 5, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[5, 7], lr=[0.1, 0.2], noise=[0.1, 0.05])
    _assert_same(_run(net, x, cfg, "reference", None), _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, None),
                 torch.float64)


def test_triton_backend_reduce_hook_runs_the_per_iteration_chain():
    """Data-parallel seam: with a reduce hook the chain runs iteration by iteration (same buckets as torch)."""
    torch.manual_seed(4)
    net = _net().double()
    x = torch.randn(3, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[2, 3, 1], lr=0.05, noise=0.2)
    seen = []
    got = _run(net.to(DEVICE), x.to(DEVICE), cfg, TritonBackend(tf32=False), None, steps=1,
               reduce=lambda ts: seen.append([tuple(t.shape) for t in ts]))
    _assert_same(_run(net.cpu(), x, cfg, "torch", None, steps=1), got, torch.float64)
    assert len(seen) == 3 and len(seen[0]) == 3 + 3  # 3 gradients and 3 losses at k = 0 ("all")


def test_asking_for_triton_without_a_gpu_says_why():
    ok, why = available_backends("cpu")["triton"]
    assert not ok and "CUDA" in why and "'cpp'" in why
    with pytest.raises(BackendUnavailableError, match="triton.*CUDA devices only"):
        resolve_backend("triton", "cpu")
    assert resolve_backend("auto", "cpu") != "triton"


# ---------------------------------------------------------------------------- GPU only
@needs_gpu
def test_cuda_graph_capture_and_replay_equal_reference():
    """Batch 1 runs eagerly (warm-up), batch 2 captures the conv chain, batch 3 replays it."""
    torch.manual_seed(7)
    net = _net(kernel=5, pool=(3, 2, 1)).cuda()
    x = torch.randn(4, *net.in_shape, device="cuda")
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1])
    backend = TritonBackend(tf32=False)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        chains = []
        ref = _run(net, x, cfg, "reference", None, steps=3)
        net2, state, out = copy.deepcopy(net), FeedbackState(), []
        for s in range(3):
            acts, sw = net2.activations(x)
            out.append(backend.train(net2, [a.detach() for a in acts], sw, cfg.resolve(net2.feedback_names), state,
                                     CounterNoise(3), 5 + s, "all"))
            chains.append(backend.last_chain)
        assert chains[0].startswith("eager") and chains[1] == "graph-capture" and chains[2] == "graph-replay"
        _assert_same(ref, (net2, state, out), torch.float32)
    finally:
        torch.backends.cudnn.allow_tf32 = saved


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)
    spec.loader.exec_module(mod)
    return mod


@needs_gpu
def test_tf32_does_not_change_alignment_beyond_tolerance():
    res = _gpu_check_module().tf32_alignment_check("cuda")
    assert res["passed"], res


def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter misses compile-only errors (e.g. a non-constexpr global): compile the float32 ELU
    specializations for sm_90 through ptxas, in a process without TRITON_INTERPRET."""
    import os
    import subprocess

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as err:
        pytest.skip(f"triton without its NVIDIA backend: {err}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "dtp_fast.kernels.compile_check", "--quick"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all kernels compiled for sm_90" in proc.stdout
