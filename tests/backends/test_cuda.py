"""The ``cuda`` feedback backend (its CUDA kernels are compared op by op in tests/ops/).

Without a GPU (and a CUDA build of dtp_fast._C) the GPU tests skip; what runs
everywhere: the ``cuda`` backend says why it cannot run and how to get it,
its logic on the CPU kernels of the same ops equals ``reference``, and
setup.py's choice of CUDA sources and flags.

On a GPU the ``cuda`` backend is compared with ``reference``.
"""
import copy

import pytest
import torch
from torch import nn

import dtp_fast
from dtp_fast import _ext
from dtp_fast.feedback import (BackendUnavailableError, FeedbackConfig, FeedbackState, available_backends,
                               momentum_sgd_, resolve_backend, train_feedback)
from dtp_fast.feedback.backends import cuda as cuda_backend
from dtp_fast.feedback.backends.cuda import CUDA_OPS, cuda_kernels_problem
from dtp_fast.noise import CounterNoise, ExplicitNoise
from helpers import DTYPES, assert_same_feedback, feedback_run, gen, pool_id, require_ext, tiny_net

FIX = "pip install --no-build-isolation -e ."


def _gpu_problem():
    if not torch.cuda.is_available():
        return "no CUDA device"
    return cuda_kernels_problem()


def gpu(test):
    """A test that needs a CUDA device and the CUDA kernels: marked ``gpu``."""
    return pytest.mark.gpu(pytest.mark.skipif(_gpu_problem() is not None,
                                              reason="CUDA kernels not usable here: %s" % _gpu_problem())(test))


# =========================================================================== without a GPU
def test_cuda_backend_refuses_cpu_tensors_and_says_what_to_use():
    ok, reason = available_backends("cpu")["cuda"]
    assert not ok and "CUDA device" in reason and "'cpp' or 'torch'" in reason
    with pytest.raises(BackendUnavailableError, match="feedback backend 'cuda' cannot run on cpu"):
        resolve_backend("cuda", "cpu")
    assert resolve_backend("auto", "cpu") != "cuda"
    torch.manual_seed(0)
    net = dtp_fast.mlp((5,), 3, hidden=[4])
    acts, sw = net.activations(torch.randn(2, 5))
    with pytest.raises(BackendUnavailableError, match="CUDA device"):
        train_feedback(net, acts, sw, FeedbackConfig(iterations=1), FeedbackState(), CounterNoise(0), 0,
                       backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_backend_without_gpu_says_why():
    ok, reason = cuda_backend.CudaBackend().availability(torch.device("cuda"))
    assert not ok
    if torch.version.cuda is None:
        assert "CPU-only build" in reason and "install a CUDA build of torch" in reason and FIX in reason
    else:
        assert "no CUDA device" in reason


def test_build_without_cuda_kernels_says_how_to_get_them(monkeypatch):
    require_ext()
    info = dict(_ext.build_info(), with_cuda=False, cuda_version=None)
    monkeypatch.setattr(_ext, "build_info", lambda: info)
    msg = cuda_kernels_problem()
    assert "built without CUDA kernels" in msg and "CUDA_HOME" in msg and FIX in msg
    assert "DTP_FAST_FORCE_CUDA=1" in msg
    # a CUDA build that lacks a kernel (stale) names it
    monkeypatch.setattr(_ext, "build_info", lambda: dict(info, with_cuda=True, cuda_version="13.0"))
    def has_kernel(name, key):
        if name == "dtp_fast::momentum_sgd_":
            raise RuntimeError("operator dtp_fast::momentum_sgd_ does not exist")
        return name != "dtp_fast::pool_unpool_diff"

    monkeypatch.setattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", has_kernel)
    msg = cuda_kernels_problem()
    assert "no CUDA kernel for pool_unpool_diff, momentum_sgd_" in msg and FIX in msg
    # and the backend passes it on when a GPU is there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    ok, reason = cuda_backend.CudaBackend().availability(torch.device("cuda"))
    assert not ok and reason == msg


def test_without_extension_the_reason_is_the_load_error(monkeypatch):
    monkeypatch.setenv("DTP_FAST_DISABLE_EXT", "1")
    assert "DTP_FAST_DISABLE_EXT" in cuda_kernels_problem()


def test_ops_are_listed_in_build_info():
    require_ext()
    names = _ext.build_info()["ops"]
    for op in CUDA_OPS:
        assert "dtp_fast::" + op in names
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dtp_fast::" + op, "CPU")
    assert _ext.build_info()["with_cuda"] == torch._C._dispatch_has_kernel_for_dispatch_key(
        "dtp_fast::philox_normal_", "CUDA")


# ----------------------------------------------------------------- the backend against reference
_net = tiny_net
_assert_same = assert_same_feedback


def _train(net, x, cfg, backend, noise, budget="default", steps=2, noncontig=False, report="all"):
    return feedback_run(net, x, cfg, backend, budget, steps=steps, noise=noise, report=report,
                        noncontig="channels_last" if noncontig else False)


def _train_direct(backend, net, x, cfg, noise, budget, steps=2, report="all", reduce=None):
    """``backend.train`` called directly (no availability check)."""
    net = copy.deepcopy(net)
    state = FeedbackState()
    losses = []
    for s in range(steps):
        acts, sw = net.activations(x)
        losses.append(backend.train(net, [a.detach() for a in acts], sw, cfg.resolve(net.feedback_names), state,
                                    noise, 5 + s, report, memory_budget=budget, reduce=reduce))
    return net, state, losses


class _Calls:
    """Counts the calls of the cuda backend's fused ops (CPU kernels here) while a test runs."""

    def __init__(self, monkeypatch):
        self.sgd, self.chain, self.loss = [], [], []
        for name, log, size in (("momentum_sgd_", self.sgd, lambda a: len(a[0])),
                                ("linear_chain_", self.chain, lambda a: tuple(a[2].shape)),
                                ("ldrl_loss", self.loss, lambda a: tuple(a[2].shape))):
            real = getattr(cuda_backend.ops, name)
            monkeypatch.setattr(cuda_backend.ops, name,
                                lambda *a, _r=real, _l=log, _s=size: (_l.append(_s(a)), _r(*a))[1])


@pytest.mark.parametrize("case", ["conv3x3-pool2", "conv5x5-pool3/2/1", "tanh-odd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_backend_logic_with_the_cpu_kernels(case, dtype):
    """The backend's code paths (in-kernel noise op, fused dh1, multi-tensor update in the interleaved
    loop) run on the CPU kernels of the same ops: the same feedback weights as ``reference``."""
    require_ext()
    kw = {"conv3x3-pool2": dict(kernel=3, pool=(2, 2, 0)), "conv5x5-pool3/2/1": dict(kernel=5, pool=(3, 2, 1)),
          "tanh-odd": dict(act=nn.Tanh, hw=(11, 13), pool=(3, 2, 1))}[case]
    torch.manual_seed(0)
    net = _net(**kw).to(dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2,
                         weight_decay=1e-3)
    backend = cuda_backend.CudaBackend(threads=1)
    monkey = pytest.MonkeyPatch()
    calls = _Calls(monkey)
    try:
        fast = _train_direct(backend, net, x, cfg, CounterNoise(3), None)
    finally:
        monkey.undo()
    # conv_1: one update per iteration (4) and one fused loss each; fc_0 and fc_1 (Linear): one
    # persistent linear_chain_ call per chunk (here the whole feedback phase), per step
    fc0, fc1 = (net.blocks[n].g_op.weight.shape for n in ("fc_0", "fc_1"))
    assert calls.sgd == [1] * 8
    assert calls.chain == [(3, *fc0), (5, *fc1)] * 2
    assert calls.loss == [tuple(net.blocks["conv_1"].g_op.weight.shape)] * 8
    ref = _train(net, x, cfg, "reference", CounterNoise(3), None)
    _assert_same(ref, fast, dtype)
    # with explicit noise (the materialising path) and chunks of one iteration
    from dtp_fast.feedback import minimum_memory_budget
    table = {}
    noise = ExplicitNoise(lambda *key: table.setdefault(key, torch.randn(
        3, *net.block_list()[key[1] - 1 if key[4] == "x" else key[1]].out_shape, generator=gen(len(table)),
        dtype=dtype)))
    one = minimum_memory_budget(net.block_list()[1:], cfg.resolve(net.feedback_names), 3, x.element_size())
    _assert_same(_train(net, x, cfg, "reference", noise, None), _train_direct(backend, net, x, cfg, noise, one),
                 dtype)


@pytest.mark.parametrize("report", ["last", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_backend_reports_with_the_cpu_kernels(dtype, report, monkeypatch):
    """report='last' / 'none' through the persistent Linear chain (loss_from) and the fused conv loss,
    with chunks of one and of several iterations."""
    require_ext()
    torch.manual_seed(2)
    net = _net(kernel=3, pool=(3, 2, 1)).to(dtype)
    x = torch.randn(2, *net.in_shape, dtype=dtype)
    cfg = FeedbackConfig(iterations=[3, 6, 4], lr=[0.05, 0.1, 0.1], noise=0.2, samples=2, momentum=0.5)
    from dtp_fast.feedback import minimum_memory_budget
    one = minimum_memory_budget(net.block_list()[1:], cfg.resolve(net.feedback_names), 2, x.element_size())
    backend = cuda_backend.CudaBackend(threads=1)
    for budget in (None, one, 3 * one):
        calls = _Calls(monkeypatch)
        fast = _train_direct(backend, net, x, cfg, CounterNoise(4), budget, report=report)
        assert calls.chain and len(calls.loss) == (2 if report == "last" else 0)
        ref = _train(net, x, cfg, "reference", CounterNoise(4), None, report=report)
        _assert_same(ref, fast, dtype)
        for a, b in zip(ref[2], fast[2]):
            for name in a:
                assert (a[name]["loss"] is None) == (b[name]["loss"] is None) == (report == "none")
        monkeypatch.undo()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_backend_with_a_reduce_hook_keeps_one_bucket_per_iteration(dtype, monkeypatch):
    """Data-parallel runs: with a reduce hook the Linear layers stay in the engine's loop (no
    persistent chain), so every iteration all-reduces one bucket of every layer's gradient."""
    require_ext()
    torch.manual_seed(3)
    net = _net().to(dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=0.05, noise=0.2, samples=2)
    calls = _Calls(monkeypatch)
    buckets = []
    fast = _train_direct(cuda_backend.CudaBackend(threads=1), net, x, cfg, CounterNoise(3), None,
                         reduce=lambda ts: buckets.append(len(ts)))
    assert calls.chain == []
    assert calls.sgd == [3, 3, 3, 2, 1] * 2  # all layers stepping at iteration k in one update
    assert buckets == [6, 6, 6, 4, 2] * 2     # per iteration: every active layer's gradient and loss
    _assert_same(_train(net, x, cfg, "reference", CounterNoise(3), None), fast, dtype)


def _three_convs():
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4, 3))
    return dtp_fast.from_sequential(seq, (2, 8, 8))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_cuda_backend_layer_streams_run_each_layer_whole(device, monkeypatch):
    """layer_streams=True (or DTP_FAST_LAYER_STREAMS=1): each conv layer's chain runs whole with its own
    momentum steps (on a GPU on its own stream; on a CPU in order), the Linear layer in its persistent chain;
    equal to reference. Without the switch, or with a reduce hook, the layers stay interleaved."""
    require_ext()
    if device == "cuda" and _gpu_problem() is not None:
        pytest.skip("CUDA kernels not usable here: %s" % _gpu_problem())
    seen = []
    step = cuda_backend.CudaBackend.step_layers
    monkeypatch.setattr(cuda_backend.CudaBackend, "step_layers",
                        lambda self, lays, grads, k: seen.append((k, tuple(lay.name for lay in lays)))
                        or step(self, lays, grads, k))
    torch.manual_seed(7)
    net = _three_convs().to(device, torch.float64)
    x = torch.randn(3, *net.in_shape, dtype=torch.float64, device=device)
    cfg = FeedbackConfig(iterations=[3, 2, 2], lr=0.05, noise=0.2)
    ref = _train(net, x, cfg, "reference", CounterNoise(3), None, steps=1)
    whole = [(0, ("conv_1",)), (1, ("conv_1",)), (2, ("conv_1",)), (0, ("conv_2",)), (1, ("conv_2",))]
    for switch in (dict(layer_streams=True), {}):
        if not switch:
            monkeypatch.setenv("DTP_FAST_LAYER_STREAMS", "1")
        seen.clear()
        backend = cuda_backend.CudaBackend(threads=1, **switch)
        assert backend.layer_streams_enabled()
        _assert_same(ref, _train_direct(backend, net, x, cfg, CounterNoise(3), None, steps=1), torch.float64)
        assert seen == whole, seen
    seen.clear()
    _train_direct(backend, net, x, cfg, CounterNoise(3), None, steps=1, reduce=lambda ts: None)
    assert seen == [(0, ("conv_1", "conv_2", "fc_0")), (1, ("conv_1", "conv_2", "fc_0")), (2, ("conv_1",))], seen
    monkeypatch.delenv("DTP_FAST_LAYER_STREAMS")
    seen.clear()
    _train_direct(cuda_backend.CudaBackend(threads=1), net, x, cfg, CounterNoise(3), None, steps=1)
    assert seen == [(0, ("conv_1", "conv_2")), (1, ("conv_1", "conv_2")), (2, ("conv_1",))], seen


@gpu
@pytest.mark.parametrize("case", ["conv3x3-pool2", "conv5x5-pool3/2/1", "relu", "tanh-odd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("budget", ["default", "one"])
def test_cuda_backend_equals_reference(case, dtype, budget, monkeypatch):
    kw = {"conv3x3-pool2": dict(kernel=3, pool=(2, 2, 0)), "conv5x5-pool3/2/1": dict(kernel=5, pool=(3, 2, 1)),
          "relu": dict(act=nn.ReLU), "tanh-odd": dict(act=nn.Tanh, hw=(11, 13), pool=(3, 2, 1))}[case]
    torch.manual_seed(0)
    net = _net(**kw).to("cuda", dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype, device="cuda")
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    b = None
    if budget == "one":
        from dtp_fast.feedback import minimum_memory_budget
        b = minimum_memory_budget(net.block_list()[1:], cfg.resolve(net.feedback_names), 3, x.element_size())
    assert resolve_backend("cuda", "cuda") == "cuda"
    ref = _train(net, x, cfg, "reference", CounterNoise(3), None)
    _assert_same(ref, _train(net, x, cfg, "cuda", CounterNoise(3), b if b else "default"), dtype)


@gpu
@pytest.mark.parametrize("pool", [(3, 2, 1), (2, 2, 0)], ids=pool_id)
def test_cuda_backend_batch_one_explicit_noise_and_layouts(pool):
    torch.manual_seed(1)
    net = _net(kernel=5, pool=pool, hw=(7, 9)).to("cuda", torch.float64)
    x = torch.randn(1, *net.in_shape, dtype=torch.float64, device="cuda")
    cfg = FeedbackConfig(iterations=[6, 2, 3], lr=0.05, noise=0.2, samples=3)
    ref = _train(net, x, cfg, "reference", CounterNoise(7), None)
    _assert_same(ref, _train(net, x, cfg, "cuda", CounterNoise(7), noncontig=True), torch.float64)
    # explicit noise tensors: the materialising path
    table = {}

    def noise(step, layer, iteration, sample, which):
        key = (step, layer, iteration, sample, which)
        if key not in table:
            shape = net.block_list()[layer - 1 if which == "x" else layer].out_shape
            g = torch.Generator().manual_seed(len(table))
            table[key] = torch.randn(1, *shape, generator=g, dtype=torch.float64).cuda()
        return table[key]

    ref = _train(net, x, cfg, "reference", ExplicitNoise(noise), None)
    _assert_same(ref, _train(net, x, cfg, "cuda", ExplicitNoise(noise)), torch.float64)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_cuda_backend_step_layers_matches_apply(device, dtype):
    """step_layers (one fused launch for all layers; the CPU version of the op on a CPU) performs
    LayerState.apply's update; a dtype the kernels lack (bfloat16) takes the engine's per-layer update."""
    from types import SimpleNamespace

    from dtp_fast.feedback import LayerState
    from dtp_fast.feedback.engine import LayerHParams

    require_ext()
    if device == "cuda" and _gpu_problem() is not None:
        pytest.skip("CUDA kernels not usable here: %s" % _gpu_problem())
    layers, expect = [], []
    for k, shape in enumerate([(4, 3, 3, 3), (6, 4), (5, 5)]):
        V, buf, grad = (torch.randn(shape, generator=gen(10 * k + j), dtype=torch.float64).to(device, dtype)
                        for j in range(3))
        hp = LayerHParams(iterations=3, lr=0.1 * (k + 1), noise=0.1, momentum=0.9, weight_decay=0.01 * k)
        lay = SimpleNamespace(weight=V, momentum_buffer=buf, hp=hp, next_k=0)
        lay.apply = lambda g, it, lay=lay: LayerState.apply(lay, g, it)
        layers.append(lay)
        v2, b2 = V.clone(), buf.clone()
        momentum_sgd_([v2], [grad.clone()], [b2], hp.lr, hp.momentum, hp.weight_decay)
        expect.append((v2, b2, grad))
    cuda_backend.CudaBackend().step_layers(layers, [e[2] for e in expect], 4)
    tol = dict(rtol=1e-14, atol=1e-15) if dtype == torch.float64 else dict(rtol=0, atol=0)
    for lay, (v2, b2, _) in zip(layers, expect):
        torch.testing.assert_close(lay.weight, v2, **tol)
        torch.testing.assert_close(lay.momentum_buffer, b2, **tol)
        assert lay.next_k == 5
