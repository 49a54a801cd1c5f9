"""The `triton` backend against the `reference` and `torch` backends (its kernels: tests/ops/).

Without a GPU the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py),
so shapes are small. With a GPU (and TRITON_INTERPRET unset) the same tests run on CUDA tensors, and the
GPU-only tests (CUDA graphs, TF32) run too.
"""
import copy
import importlib.util
import pathlib
import sys

import pytest
import torch

import dtp_fast
from dtp_fast.feedback import (BackendUnavailableError, FeedbackConfig, FeedbackState, available_backends,
                               resolve_backend)
from dtp_fast.feedback import TritonBackend, minimum_memory_budget
from dtp_fast.feedback.gpu import full_float32
from dtp_fast.noise import CounterNoise, ExplicitNoise
from dtp_fast.ops import triton as kernels
from helpers import assert_same_feedback, feedback_run, tiny_net

if not kernels.available():
    pytest.skip(f"triton unavailable: {kernels.load_error()}", allow_module_level=True)
if kernels.interpreting():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("no GPU and TRITON_INTERPRET is not set: Triton kernels cannot run", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.triton     # with a GPU: compiled, and selected by pytest -m gpu (conftest.py)


def needs_gpu(test):
    """A test that needs Triton compiled for a GPU (not the interpreter): marked ``gpu``."""
    return pytest.mark.gpu(pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU (Triton compiled, not "
                                                                       "interpreted)")(test))


# ---------------------------------------------------------------------------- the whole backend
_net = tiny_net


def _run(net, x, cfg, backend, budget, steps=2, **kw):
    return feedback_run(net, x, cfg, backend, budget, steps=steps, **kw)


_assert_same = assert_same_feedback


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


def test_layer_streams_run_each_layer_whole_and_equal_reference(monkeypatch):
    """layer_streams=True (or DTP_FAST_LAYER_STREAMS=1): each conv layer's chain runs whole, with its own
    momentum steps (on a GPU on its own stream; here in order), and equals reference; with one conv layer,
    or without the switch, the layers stay interleaved."""
    seen = []
    step = TritonBackend._conv_step
    monkeypatch.setattr(TritonBackend, "_conv_step",
                        lambda self, k, layers, conv, *a: seen.append((k, tuple(conv))) or step(self, k, layers, conv, *a))
    torch.manual_seed(7)
    seq = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ELU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ELU(), torch.nn.MaxPool2d(2),
                              torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ELU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3))
    net = dtp_fast.from_sequential(seq, (2, 8, 8)).double()
    x = torch.randn(3, *net.in_shape, dtype=torch.float64)
    cfg = FeedbackConfig(iterations=[3, 2, 2], lr=0.05, noise=0.2)
    ref = _run(net, x, cfg, "reference", None, steps=1)
    for backend in (TritonBackend(tf32=False, layer_streams=True), TritonBackend(tf32=False)):
        if backend.layer_streams is None:
            monkeypatch.setenv("DTP_FAST_LAYER_STREAMS", "1")
        seen.clear()
        assert backend.layer_streams_enabled()
        _assert_same(ref, _run(net.to(DEVICE), x.to(DEVICE), cfg, backend, None, steps=1), torch.float64)
        assert seen == [(0, (0,)), (1, (0,)), (2, (0,)), (0, (1,)), (1, (1,))], seen
    monkeypatch.delenv("DTP_FAST_LAYER_STREAMS")
    seen.clear()
    _assert_same(ref, _run(net.to(DEVICE), x.to(DEVICE), cfg, TritonBackend(tf32=False), None, steps=1),
                 torch.float64)
    assert seen == [(0, (0, 1)), (1, (0, 1)), (2, (0, 1))], seen


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
    """Batch 1 runs eagerly (warm-up), batch 2 captures the conv chain, batch 3 replays it; three different
    batches, so that a replay which kept the capture batch's switches (dh2 is unpooled at them in the graph)
    would differ from reference."""
    torch.manual_seed(7)
    net = _net(kernel=5, pool=(3, 2, 1)).cuda()
    x = [torch.randn(4, *net.in_shape, device="cuda") for _ in range(3)]
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1])
    backend = TritonBackend(tf32=False)
    with full_float32():
        chains = []
        ref = _run(net, x, cfg, "reference", None, steps=3)
        net2, state, out = copy.deepcopy(net), FeedbackState(), []
        for s in range(3):
            acts, sw = net2.activations(x[s])
            out.append(backend.train(net2, [a.detach() for a in acts], sw, cfg.resolve(net2.feedback_names), state,
                                     CounterNoise(3), 5 + s, "all"))
            chains.append(backend.last_chain)
        assert chains[0].startswith("eager") and chains[1] == "graph-capture" and chains[2] == "graph-replay"
        _assert_same(ref, (net2, state, out), torch.float32)


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
    proc = subprocess.run([sys.executable, "-m", "dtp_fast.ops.triton.compile_check", "--quick"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all kernels compiled for sm_90" in proc.stdout
