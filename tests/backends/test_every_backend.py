"""Every fast feedback backend against `reference`: same noise in, same feedback weights out."""
import copy

import pytest
import torch
from torch import nn

import dtp_fast
from dtp_fast.api import make_run
from dtp_fast.feedback import (FeedbackConfig, FeedbackState, available_backends, get_backend, resolve_backend,
                               train_feedback)
from dtp_fast.feedback import chunk_memory_budget, minimum_memory_budget, plan_chunk
from dtp_fast.noise import CounterNoise
from helpers import assert_same_feedback, feedback_run, tiny_net

FAST = [name for name, (ok, _) in available_backends("cpu").items() if ok and name != "reference"]
_net, _run, _assert_same = tiny_net, feedback_run, assert_same_feedback


CASES = {
    "conv3x3-pool2": dict(kernel=3, pool=(2, 2, 0)),
    "conv5x5-pool3/2/1": dict(kernel=5, pool=(3, 2, 1)),
    "relu": dict(act=nn.ReLU),
    "tanh-odd": dict(act=nn.Tanh, hw=(11, 13), pool=(3, 2, 1)),
}


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("chunking", ["one", "all"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fast_backend_equals_reference(backend, case, dtype, chunking, threads, monkeypatch):
    """threads=1: layers interleaved on one thread; 2: layers spread over two worker threads."""
    monkeypatch.setattr(get_backend(backend), "threads", threads)
    torch.manual_seed(0)
    net = _net(**CASES[case]).to(dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    hp = cfg.resolve(net.feedback_names)
    blocks = net.block_list()[1:]
    budget = minimum_memory_budget(blocks, hp, 3, x.element_size(), threads) if chunking == "one" else None
    assert get_backend(backend).workers(x.device, hp, budget, blocks, 3, x.element_size()) == threads
    assert plan_chunk(blocks, net.feedback_names, hp, 3, x.element_size(), budget, threads) == (
        1 if chunking == "one" else 5)
    ref = _run(net, x, cfg, "reference", None, steps=2)
    fast = _run(net, x, cfg, backend, budget, steps=2)
    _assert_same(ref, fast, dtype)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("pool", [(3, 2, 1), (2, 2, 0)])
def test_batch_one_noncontiguous_and_default_chunking(backend, pool):
    torch.manual_seed(1)
    net = _net(kernel=5, pool=pool, hw=(7, 9)).double()
    x = torch.randn(1, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[6, 2, 3], lr=0.05, noise=0.2, samples=3)
    ref = _run(net, x, cfg, "reference", None)
    # a budget that holds two iterations per chunk: chunks of 2, 2, 2 (layers interleaved)
    hp = cfg.resolve(net.feedback_names)
    two = chunk_memory_budget(2, net.block_list()[1:], hp, 1, 8)
    assert plan_chunk(net.block_list()[1:], net.feedback_names, hp, 1, 8, two) == 2
    _assert_same(ref, _run(net, x, cfg, backend, two, noncontig=True), torch.float64)
    _assert_same(ref, _run(net, x, cfg, backend, "default"), torch.float64)


@pytest.mark.parametrize("geometry", [
    dict(n=3, c_in=5, c_out=7, hw=(2, 2), k=3, stride=1, padding=1, dilation=1),   # SimpleVGG's conv_4
    dict(n=2, c_in=4, c_out=3, hw=(4, 4), k=3, stride=1, padding=1, dilation=1),   # and conv_3
    dict(n=1, c_in=3, c_out=2, hw=(2, 3), k=5, stride=1, padding=2, dilation=1),
    dict(n=2, c_in=4, c_out=6, hw=(1, 3), k=3, stride=1, padding=1, dilation=1),
    dict(n=2, c_in=3, c_out=4, hw=(4, 3), k=3, stride=2, padding=1, dilation=1),
    dict(n=2, c_in=3, c_out=4, hw=(5, 4), k=3, stride=1, padding=2, dilation=2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_small_plane_weight_gradient_is_the_patch_product(geometry, dtype):
    """Where a plane has at most twice as many positions as the kernel has taps, LayerState.wgrad takes the
    patch product: the weight gradient of conv2d (any stride, padding, dilation), from strided views, in V's
    layout."""
    from dtp_fast.feedback.layer import _wgrad_patches

    g = geometry
    k, conv = g["k"], dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"])
    x = torch.randn(g["n"], g["c_in"], *g["hw"], dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(g["c_out"], g["c_in"], k, k, dtype=dtype)
    out = torch.nn.functional.conv2d(x, w, **conv)
    grad = torch.randn(out.shape[0], out.shape[1], out.shape[2], 2 * out.shape[3], dtype=dtype)[..., ::2]
    expect = torch.ops.aten.convolution_backward(grad, x, w, None, [conv["stride"]] * 2, [conv["padding"]] * 2,
                                                 [conv["dilation"]] * 2, False, [0, 0], 1, [False, True, False])[1]
    got = _wgrad_patches(grad, x, k, k, *([conv[a]] * 2 for a in ("stride", "padding", "dilation")))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, expect, **tol)
    assert got.is_contiguous(memory_format=torch.channels_last)
    for fmt in (torch.channels_last, torch.contiguous_format):   # into a tensor: the product straight into it, or a copy
        out = torch.full_like(w, float("nan"), memory_format=fmt)
        assert _wgrad_patches(grad, x, k, k, *([conv[a]] * 2 for a in ("stride", "padding", "dilation")), out) is out
        torch.testing.assert_close(out, expect, **tol)


def test_a_kernel_larger_than_the_plane_takes_the_patch_product(monkeypatch):
    """conv5x5 on a 3x4 plane (the CASES entry): every A_k of the fast CPU backends through _wgrad_patches."""
    from dtp_fast.feedback import layer as layer_mod

    calls = []
    patches = layer_mod._wgrad_patches
    monkeypatch.setattr(layer_mod, "_wgrad_patches", lambda *a: calls.append(a[0].shape) or patches(*a))
    net = _net(**CASES["conv5x5-pool3/2/1"]).double()
    x = torch.randn(2, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[3, 2, 2], lr=0.05, noise=0.2, samples=2)
    ref = _run(net, x, cfg, "reference", None)
    for backend in FAST:
        calls.clear()
        _assert_same(ref, _run(net, x, cfg, backend), torch.float64)
        assert len(calls) >= 3 and all(shape[2:] == (4, 3) for shape in calls), backend


def test_cpu_chunks_are_per_layer_short_for_large_layers_long_for_small(monkeypatch):
    """On a CPU each layer precomputes about CPU_CHUNK_BYTES of transient work per chunk (at least
    CPU_AUTO_ITERATIONS iterations): SimpleVGG's large first layer short chunks, its small last conv layers
    long ones; an explicit budget caps them all alike; the engine hands every layer its own length."""
    from dtp_fast.feedback import memory
    from dtp_fast.feedback.layer import LayerState
    from dtp_fast.presets import simple_vgg

    net = simple_vgg((3, 32, 32), 10, channels=[32, 32, 64, 64, 128])
    blocks, names = net.block_list()[1:], net.feedback_names
    hp = FeedbackConfig(iterations=[20, 30, 35, 55, 20]).resolve(names)
    targets = memory.cpu_chunk_targets(blocks, hp, 32, 4)
    transient = [memory.layer_memory(b, 32, 1, 4)[1] for b in blocks]
    assert transient[0] > memory.CPU_CHUNK_BYTES / memory.CPU_AUTO_ITERATIONS    # conv_1: the minimum
    assert targets[0] == memory.CPU_AUTO_ITERATIONS
    for t, k, h in zip(targets, transient, hp):
        assert 1 <= t <= h.iterations
        assert t == h.iterations or t == memory.CPU_AUTO_ITERATIONS or (t - 1) * k < memory.CPU_CHUNK_BYTES <= t * k
    assert targets[3] > 10 * targets[0]                                             # conv_4: long chunks
    assert targets == [2, 4, 13, 32, 20]                                            # as README states
    assert plan_chunk(blocks, names, hp, 32, 4, None, 2, targets) == max(targets)
    three = chunk_memory_budget(3, blocks, hp, 32, 4, 2, targets)
    assert three < chunk_memory_budget(3, blocks, hp, 32, 4, 2)
    assert plan_chunk(blocks, names, hp, 32, 4, three, 2, targets) == 3

    seen = {}
    init = LayerState.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen[self.name] = self.chunk
    monkeypatch.setattr(LayerState, "__init__", spy)
    torch.manual_seed(0)
    small = _net(kernel=3, pool=(2, 2, 0))
    x = torch.randn(2, *small.in_shape)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=0.05, noise=0.2)
    with torch.no_grad():
        acts, switches = small.activations(x)
    shp = cfg.resolve(small.feedback_names)
    want = memory.cpu_chunk_targets(small.block_list()[1:], shp, 2, 4)
    train_feedback(small, acts, switches, cfg, FeedbackState(), CounterNoise(0), 0, backend="torch")
    assert [seen[n] for n in small.feedback_names] == want
    two = chunk_memory_budget(2, small.block_list()[1:], shp, 2, 4, 3, want)
    train_feedback(small, acts, switches, cfg, FeedbackState(), CounterNoise(0), 0, backend="torch", memory_budget=two)
    assert [seen[n] for n in small.feedback_names] == [min(2, t) for t in want]


@pytest.mark.parametrize("backend", FAST)
def test_mlp_and_paper_lenet_shapes(backend):
    torch.manual_seed(2)
    net = dtp_fast.mlp((5,), 4, hidden=[7, 6], act="tanh").double()
    x = torch.randn(4, 5, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[5, 7], lr=[0.1, 0.2], noise=[0.1, 0.05])
    _assert_same(_run(net, x, cfg, "reference", None), _run(net, x, cfg, backend, None), torch.float64)
    net = dtp_fast.lenet((3, 16, 16), 10, channels=(4, 8), hidden=16).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[3, 4, 2], lr=[7.19e-4, 1.25e-4, 3.54e-2], noise=[0.4164, 0.3826, 0.1395])
    _assert_same(_run(net, x, cfg, "reference", None), _run(net, x, cfg, backend, "default"), torch.float64)


@pytest.mark.parametrize("backend", FAST)
def test_training_run_matches_reference(backend):
    runs = {}
    for b in ("reference", backend):
        t = make_run("lenet", "digits", backend=b, dtype="float64", epochs=1, limit_batches=3, batch_size=8,
                     progress=False, diagnostics=False, feedback_iters=[3, 2, 4])
        t.fit()
        runs[b] = t.net.state_dict()
    for k, v in runs["reference"].items():
        torch.testing.assert_close(runs[backend][k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")


def test_memory_budget_too_small_names_the_minimum():
    net = _net()
    acts, sw = net.activations(torch.randn(2, *net.in_shape))
    cfg = FeedbackConfig(iterations=[2, 2, 2])
    need = minimum_memory_budget(net.block_list()[1:], cfg.resolve(net.feedback_names), 2, 4)
    with pytest.raises(ValueError, match=rf"too small .* minimum .* \({need} bytes\)"):
        train_feedback(net, acts, sw, cfg, FeedbackState(), CounterNoise(), 0, backend="torch",
                       memory_budget=need - 1)


def test_dtype_mismatch_names_both():
    net = _net()
    acts, sw = net.activations(torch.randn(2, *net.in_shape))
    acts = [a.double() for a in acts]
    with pytest.raises(ValueError, match=r"torch.float32 on cpu .* torch.float64 on cpu"):
        train_feedback(net, acts, sw, FeedbackConfig(iterations=1), FeedbackState(), CounterNoise(), 0,
                       backend="torch")


def test_auto_prefers_a_fast_backend_and_reference_is_always_there():
    assert resolve_backend("auto", "cpu") != "reference"
    assert available_backends("cpu")["reference"][0]



def test_concurrent_layers_fall_back_to_what_the_budget_holds_and_raise_worker_errors(monkeypatch):
    net = _net()
    x = torch.randn(2, *net.in_shape)
    cfg = FeedbackConfig(iterations=[2, 3, 2])
    hp, blocks, torch_backend = cfg.resolve(net.feedback_names), net.block_list()[1:], get_backend("torch")
    monkeypatch.setattr(torch_backend, "threads", 3)
    one = minimum_memory_budget(blocks, hp, 2, 4, 1)
    assert minimum_memory_budget(blocks, hp, 2, 4, 2) > one
    assert torch_backend.workers(x.device, hp, one, blocks, 2, 4) == 1
    assert torch_backend.workers(x.device, hp, None, blocks, 2, 4) == 3
    assert torch_backend.workers(torch.device("meta"), hp, None, blocks, 2, 4) == 1
    threads = torch.get_num_threads()

    def broken(*args, **kwargs):
        raise RuntimeError("noise went away")
    acts, sw = net.activations(x)
    noise = CounterNoise()
    monkeypatch.setattr(noise, "fill_", broken)
    with pytest.raises(RuntimeError, match="noise went away"):
        train_feedback(net, acts, sw, cfg, FeedbackState(), noise, 0, backend="torch", memory_budget=None)
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_reduce_hook_sees_one_bucket_per_iteration_in_a_fixed_order(backend):
    """The data-parallel seam: with an identity reduce the result is unchanged, and the buckets
    (shapes, in order) are the same on every call, so every process can all-reduce them."""
    torch.manual_seed(4)
    net = _net().double()
    x = torch.randn(3, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[2, 3, 1], lr=0.05, noise=0.2)
    buckets = []
    plain = _run(net, x, cfg, backend, None)
    runs = []
    for _ in range(2):
        seen = []
        net2, state = copy.deepcopy(net), FeedbackState()
        acts, sw = net2.activations(x)
        losses = train_feedback(net2, acts, sw, cfg, state, CounterNoise(3), 5, backend=backend, report="all",
                                reduce=lambda ts: seen.append([tuple(t.shape) for t in ts]))
        runs.append((net2, state, [losses]))
        buckets.append(seen)
    assert buckets[0] == buckets[1] and buckets[0]
    _assert_same(plain, runs[0], torch.float64)
    if backend != "reference":  # interleaved: iteration 0 of all layers in one bucket, with their losses
        assert len(buckets[0]) == 3 and len(buckets[0][0]) == 6


@pytest.mark.parametrize("backend", ["reference"] + FAST)
def test_asynchronous_reduce_overlaps_the_next_chunks_precomputation(backend, monkeypatch):
    """A reduce that returns a completion function (an all-reduce in flight): same result, and the
    fast engine precomputes the chunks that start at the next iteration before completing it."""
    from dtp_fast.feedback import LayerState

    torch.manual_seed(5)
    net = _net().double()
    x = torch.randn(2, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=0.05, noise=0.2)
    hp = cfg.resolve(net.feedback_names)
    two = chunk_memory_budget(2, net.block_list()[1:], hp, 2, 8)   # chunks of 2 iterations
    plain = _run(net, x, cfg, backend, two)
    events = []
    prepare = LayerState.prepare
    monkeypatch.setattr(LayerState, "prepare", lambda lay, k0: (events.append(("prepare", k0)),
                                                                      prepare(lay, k0))[1])
    net2, state = copy.deepcopy(net), FeedbackState()
    acts, sw = net2.activations(x)
    losses = train_feedback(net2, acts, sw, cfg, state, CounterNoise(3), 5, backend=backend, report="all",
                            memory_budget=two,
                            reduce=lambda ts: (events.append(("reduce",)), lambda: events.append(("wait",)))[1])
    _assert_same(plain, (net2, state, [losses]), torch.float64)
    if backend != "reference":
        inside = [e for i, e in enumerate(events) if e[0] == "prepare" and events[i - 1] == ("reduce",)]
        assert inside and all(k0 % 2 == 0 for _, k0 in inside), events


def test_a_backend_written_from_the_documented_seam_equals_reference(monkeypatch):
    """README "Write a backend": subclass TorchBackend, override hooks using only LayerState's public
    attributes, register it. Here dh2 is written out by hand (noisy output, activation, minus a0; the engine
    unpools it) and the momentum step is a loop of its own; the result must equal `reference`."""
    from dtp_fast.blocks import ACTIVATIONS
    from dtp_fast.feedback import TorchBackend, engine, register_backend

    calls = {"dh2": 0, "step_layers": 0}

    class HandWritten(TorchBackend):
        name = "hand-written"

        def availability(self, device):
            return device.type == "cpu", "CPU only"

        def dh2(self, block, y, eps, sigma, a0):
            calls["dh2"] += 1
            copies = eps.n * eps.samples           # eps: a NoiseBlock of n iterations x samples x batch rows
            noisy = y.repeat(copies, *[1] * (y.dim() - 1)) + sigma * eps.materialize(y.device, y.dtype)
            h2 = ACTIVATIONS[block.act](noisy)      # act(y + dy), at the block's output resolution
            return (h2.unflatten(0, (copies, -1)) - a0).flatten(0, 1)

        def step_layers(self, layers, grads, k):
            calls["step_layers"] += 1
            for lay, g in zip(layers, grads):
                g = g + lay.hp.weight_decay * lay.weight
                lay.momentum_buffer.mul_(lay.hp.momentum).add_(g)
                lay.weight.sub_(lay.hp.lr * lay.momentum_buffer)
                lay.next_k = k + 1

    monkeypatch.setattr(engine, "_BACKENDS", dict(engine._BACKENDS))
    monkeypatch.setattr(engine, "_AUTO_ORDER", list(engine._AUTO_ORDER))
    register_backend(HandWritten(threads=1), priority=-1)
    assert resolve_backend("auto") != "hand-written"
    torch.manual_seed(1)
    net = _net(**CASES["conv5x5-pool3/2/1"]).double()
    x = torch.randn(3, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[3, 4, 2], lr=0.05, noise=0.2, samples=2)
    ref = _run(net, x, cfg, "reference", None)
    _assert_same(ref, _run(net, x, cfg, "hand-written", None), torch.float64)
    assert calls["dh2"] and calls["step_layers"]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_feedback_weight_decay_steps_weight_and_bias_as_reference(backend, momentum):
    """With feedback weight decay (the official configs' b_optim.weight_decay) the bias, whose L-DRL gradient is
    exactly 0, decays as torch.optim.SGD decays it in reference: same weights, biases and both momentum buffers
    over several batches, to float64 rounding."""
    torch.manual_seed(4)
    net = _net(kernel=5, pool=(3, 2, 1)).double()
    for name in net.feedback_names:                   # biases far from 0, so that decay shows
        torch.nn.init.uniform_(net.blocks[name].g_op.bias, 0.5, 1.5)
    x = torch.randn(2, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=0.2, weight_decay=0.05, momentum=momentum)
    ref = _run(net, x, cfg, "reference", None, steps=3)
    fast = _run(net, x, cfg, backend, None, steps=3)
    _assert_same(ref, fast, torch.float64)
    for name in net.feedback_names:
        moved = (ref[0].blocks[name].g_op.bias - net.blocks[name].g_op.bias).abs().min()
        assert moved > 1e-3, name                     # the bias did decay
        key = f"{name}.bias"
        torch.testing.assert_close(fast[1].buffers[key], ref[1].buffers[key], rtol=1e-9, atol=1e-12)


def test_cpp_runs_pooled_chains_on_the_sparse_ops_and_others_dense(monkeypatch):
    """The cpp backend's chain of a pooled layer with a stride-1 feedback convolution runs on the switch-sparse
    ops (its chunks in pooled_chain_ calls, index lists built once per batch and layer); a stride-2
    convolution takes the dense path. Both equal reference, with one worker thread or two."""
    if "cpp" not in FAST:
        pytest.skip("cpp backend unavailable")
    from dtp_fast import ops
    from dtp_fast.blocks import from_sequential

    calls = {"lists": 0, "chain iterations": 0}
    lists, chain = ops.switch_lists, ops.pooled_chain_
    monkeypatch.setattr(ops, "switch_lists", lambda *a, **k: calls.__setitem__("lists", calls["lists"] + 1)
                        or lists(*a, **k))
    monkeypatch.setattr(ops, "pooled_chain_", lambda values, *a: calls.__setitem__(
        "chain iterations", calls["chain iterations"] + values.shape[0]) or chain(values, *a))
    torch.manual_seed(5)
    seq = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),           # G_0: none
                        nn.Conv2d(3, 4, 3, padding=1), nn.ELU(), nn.MaxPool2d(2),           # sparse
                        nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ELU(), nn.MaxPool2d(2),  # dense (stride 2)
                        nn.Flatten(), nn.Linear(5, 3))
    net = from_sequential(seq, (2, 16, 16)).double()
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[5, 4, 3], lr=0.05, noise=0.2, samples=2)
    ref = _run(net, x, cfg, "reference", None, steps=2)
    for threads in (1, 2):
        monkeypatch.setattr(get_backend("cpp"), "threads", threads)
        calls.update({"lists": 0, "chain iterations": 0})
        _assert_same(ref, _run(net, x, cfg, "cpp", "default", steps=2), torch.float64)
        assert calls == {"lists": 2, "chain iterations": 2 * 5}
