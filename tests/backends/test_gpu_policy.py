"""The GPU policy of the triton and cuda backends (dtp_fast.feedback.gpu), checked on a CPU: the device made
current for a launch, TF32 through the new fp32_precision API only, determinism, the stopwatch's device, and
the opt-in pooled chain (the sparse Triton kernels in the interpreter) against reference."""
import contextlib

import pytest
import torch

from dtp_fast.feedback import CudaBackend, FeedbackConfig, TritonBackend, gpu
from dtp_fast.utils import Stopwatch
from helpers import (DTYPES, assert_same_feedback, feedback_run, require_cuda_ops, require_ext, tiny_net,
                     triton_device)


@pytest.fixture
def precision_flags():
    """Restore torch's TF32 and cuDNN flags after the test."""
    conv, mm, cudnn = torch.backends.cudnn.conv, torch.backends.cuda.matmul, torch.backends.cudnn
    saved = conv.fp32_precision, mm.fp32_precision, cudnn.deterministic, cudnn.benchmark
    yield
    conv.fp32_precision, mm.fp32_precision = saved[:2]
    cudnn.deterministic, cudnn.benchmark = saved[2:]


def test_tf32_switch_uses_only_the_new_api(precision_flags):
    """A library set cuDNN's precision through the new API (reading the legacy allow_tf32 flag then raises on
    torch >= 2.9): the switch still works, sets convolutions and matrix products, and restores both."""
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    with pytest.raises(RuntimeError, match="legacy and new"):
        torch.backends.cudnn.allow_tf32           # what the backends read before
    saved = torch.backends.cuda.matmul.fp32_precision
    for tf32, value in ((True, "tf32"), (False, "ieee")):
        with gpu.fp32_precision(tf32):
            assert torch.backends.cudnn.conv.fp32_precision == value
            assert torch.backends.cuda.matmul.fp32_precision == value
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == saved


class _Recorder:
    def __init__(self):
        self.entered = []

    def __call__(self, device):
        @contextlib.contextmanager
        def ctx():
            self.entered.append(torch.device(device))
            yield
        return ctx()


@pytest.mark.parametrize("backend", [TritonBackend, CudaBackend])
@pytest.mark.parametrize("tf32,deterministic", [(None, False), (False, True), (True, False)])
def test_gpu_context_makes_the_tensors_device_current_with_one_policy(backend, tf32, deterministic, monkeypatch,
                                                                       precision_flags):
    """Both backends run on the tensors' device (cuda:1 here, not the current device 0), with the TF32 switch
    (default: on for compute capability >= 8.0) and cuDNN determinism as asked, all restored after."""
    devices = _Recorder()
    monkeypatch.setattr(gpu.torch.cuda, "device", devices)
    monkeypatch.setattr(gpu.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("DTP_FAST_TF32", raising=False)
    impl = backend(tf32=tf32, deterministic=deterministic)
    before = torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.deterministic
    with impl.gpu_context(torch.device("cuda", 1)):
        assert devices.entered == [torch.device("cuda", 1)]
        assert torch.backends.cudnn.conv.fp32_precision == ("ieee" if tf32 is False else "tf32")
        assert torch.backends.cudnn.deterministic is deterministic
    assert (torch.backends.cudnn.conv.fp32_precision, torch.backends.cudnn.deterministic) == before
    with impl.gpu_context(torch.device("cpu")):      # nothing on a CPU
        assert len(devices.entered) == 1


def test_tf32_default_follows_the_capability_and_the_environment(monkeypatch):
    monkeypatch.setattr(gpu.torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.delenv("DTP_FAST_TF32", raising=False)
    assert gpu.tf32_default("cuda:0") and not gpu.tf32_default("cpu")
    monkeypatch.setenv("DTP_FAST_TF32", "0")
    assert not gpu.tf32_default("cuda:0")
    monkeypatch.delenv("DTP_FAST_TF32")
    monkeypatch.setattr(gpu.torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert not gpu.tf32_default("cuda:0")


def test_stopwatch_synchronizes_its_own_device(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    watch = Stopwatch(torch.device("cuda", 1))
    with watch("phase"):
        pass
    assert synced == [torch.device("cuda", 1)] * 2 and "phase" in watch.totals
    with Stopwatch(torch.device("cuda", 1), sync=False)("phase"):
        pass
    assert len(synced) == 2


def test_the_auto_budget_and_the_graph_decision_survive_the_caching_allocator(monkeypatch):
    """After the first batch torch's caching allocator keeps its blocks, so the free GPU memory shrinks: the
    auto budget counts those cached blocks as available, so the chunks (and with them the decision to graph
    the whole chain) stay those of the first batch. A 40 GiB GPU, SimpleVGG at half width and ImageNet32's
    batch 256: 8 GiB hold every iteration, 4 GiB (what a quarter of the free memory alone gives on the second
    batch) would split them into chunks, and the chain would never be graphed."""
    import dtp_fast
    from dtp_fast.feedback import memory

    net = dtp_fast.simple_vgg((3, 32, 32), 1000, channels=(64, 64, 128, 128, 256))
    cfg = dtp_fast.FeedbackConfig(iterations=[25, 35, 40, 60, 25])
    hp, blocks = cfg.resolve(net.feedback_names), net.block_list()[1:]
    gib = 2**30

    def plan(free, reserved, allocated):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 40 * gib))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
        need = memory.minimum_memory_budget(blocks, hp, 256, 4)
        budget = memory.resolve_budget("auto", "cuda:0", need)
        return budget, memory.plan_chunk(blocks, net.feedback_names, hp, 256, 4, budget)

    first = plan(39 * gib, 0, 0)
    assert first == (8 * gib, 60)                       # a quarter of 39 GiB, capped; every iteration in one chunk
    assert plan(19 * gib, 20 * gib, 1 * gib) == first   # 20 GiB cached, 1 GiB of it in use


def test_a_whole_imagenet32_phase_fits_one_chunk_of_the_default_gpu_budget(monkeypatch):
    """SimpleVGG at the paper's width, ImageNet32's batch 256 and iterations (25, 35, 40, 60, 25): with dh2 held
    at pooled resolution every iteration of every layer fits one chunk (so the whole chain can be one CUDA graph)
    within the default budget of an 80 GiB GPU (a quarter of the free memory, capped at 8 GiB); with dh2
    stored unpooled the planner needed 8.4 GiB. One iteration's stored dh2 is 4x smaller behind 2x2 pools."""
    import math

    import dtp_fast
    from dtp_fast.feedback import memory

    net = dtp_fast.simple_vgg((3, 32, 32), 1000)
    cfg = dtp_fast.FeedbackConfig(iterations=[25, 35, 40, 60, 25])
    hp, blocks = cfg.resolve(net.feedback_names), net.block_list()[1:]
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    budget = memory.resolve_budget("auto", "cuda:0", memory.minimum_memory_budget(blocks, hp, 256, 4))
    assert budget == 8 * gib
    assert memory.plan_chunk(blocks, net.feedback_names, hp, 256, 4, budget) == 60
    assert memory.chunk_memory_budget(60, blocks, hp, 256, 4) < 7.5 * gib
    conv_1 = blocks[0]
    unpooled = (256 * math.prod(conv_1.pre_pool_shape) + conv_1.g_op.weight.numel()) * 4
    assert unpooled / memory.layer_memory(conv_1, 256, 1, 4)[0] > 3.5


def test_determinism_from_the_environment_when_not_set(monkeypatch):
    impl = TritonBackend()
    monkeypatch.delenv("DTP_FAST_DETERMINISTIC", raising=False)
    assert impl.deterministic_enabled() is False
    monkeypatch.setenv("DTP_FAST_DETERMINISTIC", "1")
    assert impl.deterministic_enabled() is True
    assert TritonBackend(deterministic=False).deterministic_enabled() is False


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_deterministic_runs_are_bit_identical_on_a_gpu(backend, monkeypatch):
    """deterministic=True: two runs of the same feedback phases give the same bits (weights, momentum, losses)."""
    from dtp_fast.feedback import FeedbackConfig, available_backends, get_backend
    from helpers import feedback_run, tiny_net

    ok, why = available_backends("cuda").get(backend, (False, "not registered"))
    if not ok:
        pytest.skip(why)
    impl = get_backend(backend, "cuda")
    monkeypatch.setattr(impl, "deterministic", True)
    torch.manual_seed(0)
    net = tiny_net(kernel=5, pool=(3, 2, 1)).cuda()
    x = torch.randn(8, *net.in_shape, device="cuda")
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    (n1, s1, l1), (n2, s2, l2) = (feedback_run(net, x, cfg, backend, steps=3) for _ in range(2))
    for name in net.feedback_names:
        assert torch.equal(n1.blocks[name].g_op.weight, n2.blocks[name].g_op.weight), name
        assert torch.equal(s1.buffers[f"{name}.weight"], s2.buffers[f"{name}.weight"]), name
    assert l1 == l2


@pytest.mark.parametrize("backend", [TritonBackend, CudaBackend])
def test_train_runs_inside_the_gpu_context(backend, monkeypatch):
    """Both backends' train() enters gpu_context for the activations' device before the engine runs."""
    from dtp_fast.feedback.backends.torch import TorchBackend

    seen = []

    @contextlib.contextmanager
    def context(self, device):
        seen.append(("enter", torch.device(device)))
        yield
        seen.append(("exit",))

    monkeypatch.setattr(gpu.GpuPolicy, "gpu_context", context)
    monkeypatch.setattr(TorchBackend, "train", lambda self, *a, **k: seen.append(("engine",)) or "stats")
    acts = [torch.zeros(2, 3)]
    assert backend().train(None, acts, [None], [], None, None, 0, "last") == "stats"
    assert seen == [("enter", torch.device("cpu")), ("engine",), ("exit",)]


@pytest.mark.triton
@pytest.mark.parametrize("backend", [TritonBackend, CudaBackend])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pooled_chain_on_the_sparse_kernels_equals_reference(backend, dtype, monkeypatch):
    """pooled_chain=True (or DTP_FAST_POOLED_CHAIN=1): the chain of a layer behind a 2x2 pool runs on the sparse
    Triton kernels (both GPU backends; the interpreter here), one transposed convolution per iteration; a 3/2/1
    pool (overlapping windows) keeps the unpooling path. Both equal reference. Without Triton the switch says
    what is missing."""
    device = triton_device()
    if backend is CudaBackend:    # its other ops: their CUDA kernels on a GPU, their CPU versions here
        require_cuda_ops() if device == "cuda" else require_ext()
    from dtp_fast.ops import triton as kernels
    from dtp_fast.ops.triton import sparse

    calls = []
    conv_t = sparse.pooled_conv_t
    monkeypatch.setattr(sparse, "pooled_conv_t", lambda d2, *a, **k: calls.append(d2.shape) or conv_t(d2, *a, **k))
    torch.manual_seed(6)
    cfg = FeedbackConfig(iterations=[4, 3, 2], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    for pool, used, switch in (((2, 2, 0), 4, dict(pooled_chain=True)), ((2, 2, 0), 4, {}), ((3, 2, 1), 0, {})):
        if not switch:
            monkeypatch.setenv("DTP_FAST_POOLED_CHAIN", "1")
        calls.clear()
        net = tiny_net(kernel=3, pool=pool, hw=(10, 8)).to(dtype)
        x = torch.randn(3, *net.in_shape, dtype=dtype)
        impl = backend(tf32=False, **switch)
        assert impl.pooled_chain_enabled()
        got = feedback_run(net.to(device), x.to(device), cfg, impl, None)
        assert_same_feedback(feedback_run(net.cpu(), x, cfg, "reference", None), got, dtype)
        assert len(calls) == used and all(shape[0] == 2 * 3 for shape in calls), (pool, calls)
    monkeypatch.delenv("DTP_FAST_POOLED_CHAIN")
    assert not backend().pooled_chain_enabled()
    monkeypatch.setattr(kernels, "available", lambda: False)
    monkeypatch.setattr(kernels, "load_error", lambda: "triton is not importable (ImportError: x)")
    with pytest.raises(RuntimeError, match=r"pooled_chain \(DTP_FAST_POOLED_CHAIN\) runs on Triton kernels, and "
                                           r"triton is not importable .*or leave it off"):
        feedback_run(tiny_net().to(device, dtype), torch.randn(2, 3, 9, 7, dtype=dtype, device=device), cfg,
                     backend(pooled_chain=True), None)
