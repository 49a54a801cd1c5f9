"""The CUDA kernels (csrc/cuda/) and the ``cuda`` feedback backend.

Without a GPU (and a CUDA build of dtp_fast._C) the GPU tests skip; what runs
everywhere: the ``cuda`` backend says why it cannot run and how to get it,
the CPU kernels of the ops added for the CUDA backend (the oracles of the
CUDA kernels) equal their PyTorch references, and setup.py's choice of CUDA
sources and flags.

On a GPU every CUDA op is compared with its CPU kernel and its PyTorch
reference (run on the GPU): bit for bit where the operations are the same
IEEE operations (noise, identity / ReLU, the momentum update), within
float tolerances where ELU / tanh come from CUDA's libdevice (expm1f / tanhf
of the toolkit that compiled the kernel versus ATen's CUDA kernels or the
CPU's Sleef) -- and the ``cuda`` backend with ``reference``.
"""
import copy
import os
import runpy

import pytest
import torch
from torch import nn

import dtp_fast
from dtp_fast import _ext, ops
from dtp_fast.feedback import (BackendUnavailableError, FeedbackConfig, FeedbackState, available_backends,
                               momentum_sgd_, resolve_backend, train_feedback)
from dtp_fast.feedback import cuda as cuda_backend
from dtp_fast.feedback.cuda import CUDA_OPS, cuda_kernels_problem, noisy_unpool_diff_philox, noisy_unpool_diff_philox_ref
from dtp_fast.noise import CounterNoise, ExplicitNoise, philox_normal
from conftest import require_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = "pip install --no-build-isolation -e ."
ACTS = list(ops.ACTIVATIONS)
DTYPES = [torch.float32, torch.float64]
POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1)]
_pool_id = lambda p: "k%ds%dp%d" % p  # noqa: E731


def _gpu_problem():
    if not torch.cuda.is_available():
        return "no CUDA device"
    return cuda_kernels_problem()


gpu = pytest.mark.skipif(_gpu_problem() is not None, reason="CUDA kernels not usable here: %s" % _gpu_problem())


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _layout(x, layout):
    """x (any device) as NCHW, channels_last, a strided NCHW-like view or a channels_last-like view."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    N, C, H, W = x.shape
    if layout == "slice":
        big = torch.zeros(N, C + 1, 2 * H, W + 3, dtype=x.dtype, device=x.device)
        view = big[:, 1:, ::2, 2:W + 2]
    elif layout == "cl_slice":
        big = torch.zeros(N, 2 * C, H + 1, W, dtype=x.dtype, device=x.device).contiguous(
            memory_format=torch.channels_last)
        view = big[:, ::2, 1:, :]
    else:
        return x.contiguous()
    view.copy_(x)
    return view


def _format_of(x):
    return ops._memory_format(x)


def _switches(shape, pool, act, dtype, seed):
    """Clean pooled values y, switches and h0 = unpool_act2d(y, switches) on the CPU."""
    z = 2 * torch.randn(shape, generator=_gen(seed), dtype=torch.float64)
    y, i = ops.act_pool2d_ref(z.to(dtype), act, *pool)
    return y, i, ops.unpool_act2d_ref(y, i, act, shape[2:])


def _exact(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _close(a, b, act):
    """Bit for bit for identity / ReLU; float tolerance where ELU / tanh come from another math library."""
    if act in ("identity", "relu"):
        _exact(a, b)
    else:
        torch.testing.assert_close(a, b, equal_nan=True)


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


# ----------------------------------------------------------------- setup.py and the sources
def _setup_namespace(monkeypatch):
    import setuptools

    monkeypatch.setenv("DTP_FAST_NO_EXT", "1")
    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="dtp_fast_setup")


def test_setup_compiles_cuda_sources_only_in_the_cuda_build(monkeypatch):
    ns = _setup_namespace(monkeypatch)
    cuda = ns["cuda_sources_of"](ns["_sources"])
    assert sorted(os.path.basename(p) for p in cuda) == [
        "chain_cuda.cu", "chain_cuda_bind.cpp", "dh_cuda.cu", "dh_cuda_bind.cpp",
        "noise_cuda.cu", "noise_cuda_bind.cpp", "sgd_cuda.cu", "sgd_cuda_bind.cpp"]
    assert all(p.startswith(os.path.join("csrc", "cuda")) for p in cuda)
    cpu = ns["_sources"]("csrc/*.cpp") + ns["_sources"]("csrc/cpu/*.cpp")
    assert not any("cuda" in p for p in cpu) and os.path.join("csrc", "cpu", "chain_cpu.cpp") in cpu
    assert ns["cuda_sources_of"](lambda pattern: []) == []
    assert ns["cuda_sources_of"](lambda pattern: [] if pattern.endswith(".cu") else ["x.cpp"]) == []
    assert "-fmad=false" in ns["NVCC_FLAGS"]


def test_cuda_kernel_files_include_no_torch_headers():
    """Only the binding includes torch: a .cu with torch/extension.h costs ~80 s and 3 GB to compile."""
    folder = os.path.join(ROOT, "csrc", "cuda")
    for name in os.listdir(folder):
        if name.endswith((".cu", ".cuh", ".h")):
            text = open(os.path.join(folder, name)).read()
            for banned in ("<torch/", "<ATen/", "<c10/"):
                assert banned not in text, (name, banned)


# ----------------------------------------------------------------- CPU kernels of the new ops
def _eps_block(shape, key, offset, iteration, samples, copies, dtype):
    B = shape[0]
    blocks = [philox_normal(shape, key, offset, iteration + m // samples, m % samples) for m in range(copies)]
    return torch.stack(blocks).reshape(copies * B, *shape[1:]).to(dtype)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice"])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)], ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_philox_cpu_equals_reference(dtype, act, pool, layout):
    require_ext()
    B, C, H, W = 2, 3, 9, 7
    y, i, h0 = _switches((B, C, H, W), pool, act, dtype, seed=1)
    y, i, h0 = (_layout(t, layout) for t in (y, i, h0))
    key, offset, iteration = (0x12345678, 0x9ABCDEF0), 5, 7
    for samples, copies in [(1, 1), (3, 6)]:
        args = (y, 0.3, i, h0, act, (H, W), key, offset, iteration, samples, copies)
        out = noisy_unpool_diff_philox(*args)
        assert out.shape == (copies * B, C, H, W) and out.dtype == dtype
        assert out.is_contiguous(memory_format=_format_of(y))
        # bit for bit: the compiled noisy_unpool_diff given the PyTorch mirror's noise
        eps = _eps_block(y.shape, key, offset, iteration, samples, copies, dtype)
        eps = eps.contiguous(memory_format=_format_of(y))
        _exact(out, ops.noisy_unpool_diff(y, eps, 0.3, i, h0, act, (H, W), impl="compiled"))
        # the pure-PyTorch reference: bit for bit but for ATen's CPU ELU remainder ulps (test_ldrl_ops.py)
        ref = noisy_unpool_diff_philox_ref(*args)
        assert ref.stride() == out.stride()
        if act == "elu":
            torch.testing.assert_close(out, ref, equal_nan=True)
        else:
            _exact(out, ref)


def test_noisy_unpool_diff_philox_rows_are_global_samples():
    """Row b of a call with offset o has the noise of row o + b of the whole batch."""
    require_ext()
    B, C, H, W = 4, 2, 6, 6
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), "identity", torch.float32, seed=2)
    full = noisy_unpool_diff_philox(y, 1.0, i, h0, "identity", (H, W), (1, 2), 0, 3, 2, 4)
    part = noisy_unpool_diff_philox(y[2:], 1.0, i[2:], h0[2:], "identity", (H, W), (1, 2), 2, 3, 2, 4)
    _exact(part, full.view(4, B, C, H, W)[:, 2:].reshape(8, C, H, W))


def test_noisy_unpool_diff_philox_errors():
    require_ext()
    y, i, h0 = _switches((2, 3, 6, 6), (2, 2, 0), "elu", torch.float32, seed=3)
    op = torch.ops.dtp_fast.noisy_unpool_diff_philox
    with pytest.raises(RuntimeError, match="samples must be in"):
        op(y, 0.1, i, h0, 1, [6, 6], 0, 0, 0, 0, 0, 2)
    with pytest.raises(RuntimeError, match="iterations .* must be in"):
        op(y, 0.1, i, h0, 1, [6, 6], 0, 0, 0, 2**32 - 1, 1, 2)
    with pytest.raises(RuntimeError, match="key words"):
        op(y, 0.1, i, h0, 1, [6, 6], -1, 0, 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="offset"):
        op(y, 0.1, i, h0, 1, [6, 6], 0, 0, 2**32 - 1, 0, 1, 2)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op(y.half(), 0.1, i, h0, 1, [6, 6], 0, 0, 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="h0 must be"):
        op(y, 0.1, i, h0[:1], 1, [6, 6], 0, 0, 0, 0, 1, 2)
    assert op(y, 0.1, i, h0, 1, [6, 6], 0, 0, 0, 0, 1, 0).shape == (0, 3, 6, 6)


def _sgd_case(device, dtype, count=30):
    """count tensors of varied shapes and layouts, with per-tensor hyperparameters."""
    g = _gen(4)
    params, grads, bufs, lr, mom, wd = [], [], [], [], [], []
    for k in range(count):
        shape = [(5, 3, 3, 3), (7,), (0, 4), (33, 65), (2, 3, 4, 5)][k % 5]
        p = torch.randn(shape, generator=g, dtype=dtype)
        gr = torch.randn(shape, generator=g, dtype=dtype)
        b = torch.randn(shape, generator=g, dtype=dtype)
        if len(shape) == 4 and k % 2:
            p, b = (t.contiguous(memory_format=torch.channels_last) for t in (p, b))  # grad stays NCHW
        if k % 7 == 3:
            gr = torch.randn(*shape[:-1], 2 * shape[-1], generator=g, dtype=dtype)[..., ::2]  # strided grad
        params.append(p.to(device))
        grads.append(gr.to(device))
        bufs.append(b.to(device))
        lr.append(0.01 * (k + 1))
        mom.append(0.9 if k % 3 else 0.0)
        wd.append(0.0 if k % 2 else 1e-3 * k)
    return params, grads, bufs, lr, mom, wd


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_momentum_sgd_cpu_equals_torch_sgd(dtype):
    require_ext()
    params, grads, bufs, lr, mom, wd = _sgd_case("cpu", dtype)
    p2, g2, b2 = ([t.clone() for t in ts] for ts in (params, grads, bufs))
    grads_before = [g.clone() for g in grads]
    cuda_backend.fused_momentum_sgd_(params, grads, bufs, lr, mom, wd)
    for k in range(len(p2)):
        momentum_sgd_([p2[k]], [g2[k]], [b2[k]], lr[k], mom[k], wd[k])
    for a, b in zip(params + bufs, p2 + b2):
        torch.testing.assert_close(a, b, rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
    for a, b in zip(grads, grads_before):
        _exact(a, b)  # grads are inputs only
    with pytest.raises(RuntimeError, match="one value per tensor"):
        torch.ops.dtp_fast.momentum_sgd_(params[:2], grads[:2], bufs[:2], [0.1], [0.9, 0.9], [0.0, 0.0])
    with pytest.raises(RuntimeError, match="buf must have its strides"):
        p = torch.zeros(2, 3, 4, 5, dtype=dtype)
        cuda_backend.fused_momentum_sgd_([p], [p.clone()], [p.contiguous(memory_format=torch.channels_last)],
                                         0.1, 0.9, 0.0)


def _loss_case(dtype, device="cpu", seed=5, shape_r=(3, 4, 5, 6), shape_v=(4, 3, 3, 3)):
    """dr_y (channels_last), A (NCHW) and V (channels_last): the layouts the engine hands over."""
    g = _gen(seed)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t  # noqa: E731
    r = cl(torch.randn(shape_r, generator=g, dtype=dtype).to(device))
    A = torch.randn(shape_v, generator=g, dtype=dtype).to(device)
    V = cl(torch.randn(shape_v, generator=g, dtype=dtype).to(device))
    return r, A, V


def _loss_expr(r, A, V, scale):
    """The engine's expression (AnalyticBackend.conv_loss), summed in float64."""
    r, A, V = (t.double() for t in (r, A, V))
    return scale * (r.pow(2).sum() - 2 * (A * V).sum())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ldrl_loss_cpu_equals_the_engine_expression(dtype):
    require_ext()
    r, A, V = _loss_case(dtype)
    out = cuda_backend.fused_ldrl_loss(r, A, V, 0.3)
    assert out.shape == () and out.dtype == dtype
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=2 * torch.finfo(dtype).eps, atol=0)
    torch.testing.assert_close(out.double(), _loss_expr(r, A, V, 0.3), **tol)
    # any layouts: a strided dr_y, A in another layout than V, V NCHW
    r2 = _noncontiguous_last(r)
    for a_, v_ in [(A, V), (A.contiguous(memory_format=torch.channels_last), V.contiguous()), (A[..., :], V)]:
        torch.testing.assert_close(cuda_backend.fused_ldrl_loss(r2, a_, v_, 0.3).double(), _loss_expr(r, A, V, 0.3),
                                   **tol)
    # the torch engine's hook gives the same value
    from dtp_fast.feedback.analytic import AnalyticBackend
    from types import SimpleNamespace
    torch.testing.assert_close(AnalyticBackend().conv_loss(SimpleNamespace(scale=0.3), r, A, V).double(),
                               _loss_expr(r, A, V, 0.3), rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    # empty tensors, and the errors
    assert cuda_backend.fused_ldrl_loss(r[:0], A[:0], V[:0], 1.0).item() == 0
    with pytest.raises(RuntimeError, match="shape of V"):
        cuda_backend.fused_ldrl_loss(r, A[:1], V, 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        cuda_backend.fused_ldrl_loss(r.float() if dtype == torch.float64 else r.double(), A, V, 1.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        cuda_backend.fused_ldrl_loss(r.half(), A.half(), V.half(), 1.0)


def _noncontiguous_last(t):
    big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    big[..., ::2] = t
    return big[..., ::2]


def _chain_case(n, d_in, d_out, dtype, device="cpu", seed=6):
    """V, buf, A, C of a Linear chunk; C_k = dh2^T dh2 (symmetric, PSD) as the engine builds it."""
    g = _gen(seed)
    V = 0.3 * torch.randn(d_in, d_out, generator=g, dtype=dtype)
    buf = 0.1 * torch.randn(d_in, d_out, generator=g, dtype=dtype)
    A = torch.randn(n, d_in, d_out, generator=g, dtype=dtype)
    dh2 = torch.randn(n, 4, d_out, generator=g, dtype=dtype)
    C = dh2.transpose(1, 2) @ dh2
    return [t.to(device) for t in (V, buf, A, C)]


def _close_on_scale(a, b, rtol, atol):
    """assert_close with atol relative to the largest magnitude of b."""
    big = b.abs().max().item() if b.numel() else 0.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * (1 + big))


CHAIN_SETTINGS = [(0.05, 0.9, 0.0, 0.125), (0.1, 0.0, 1e-3, 0.5), (0.02, 0.5, 0.01, 1 / 6)]


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 1, 1), (6, 40, 10), (3, 2, 300)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_chain_cpu_equals_the_engine_iterations(dtype, shape):
    """The oracle of the persistent kernel: the engine's per-iteration expressions
    (V @ C_k, the loss with the V before the step, momentum SGD), every loss_from."""
    require_ext()
    n, d_in, d_out = shape
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for lr, mom, wd, scale in CHAIN_SETTINGS:
        for loss_from in (0, n - 1, n, None):
            V, buf, A, C = _chain_case(n, d_in, d_out, dtype)
            V2, b2 = V.clone(), buf.clone()
            A0, C0 = A.clone(), C.clone()
            got = cuda_backend.fused_linear_chain_(V, buf, A, C, lr, mom, wd, scale, loss_from)
            expect = cuda_backend.fused_linear_chain_ref(V2, b2, A, C, lr, mom, wd, scale, loss_from)
            assert got.shape == (n - (n if loss_from is None else loss_from),) and got.dtype == dtype
            # float32: V C_k summed in another order than BLAS's; compare on the scale of the values
            for a, b in ((V, V2), (buf, b2), (got, expect)):
                _close_on_scale(a, b, **tol)
            _exact(A, A0)
            _exact(C, C0)  # inputs only


def test_linear_chain_cpu_edge_cases_and_errors():
    require_ext()
    V, buf, A, C = _chain_case(3, 4, 2, torch.float64)
    V0 = V.clone()
    out = cuda_backend.fused_linear_chain_(V, buf, A[:0], C[:0], 0.1, 0.9, 0.0, 1.0, 0)
    assert out.shape == (0,)
    _exact(V, V0)
    with pytest.raises(RuntimeError, match="loss_from must be in"):
        cuda_backend.fused_linear_chain_(V, buf, A, C, 0.1, 0.9, 0.0, 1.0, 4)
    with pytest.raises(RuntimeError, match="contiguous"):
        cuda_backend.fused_linear_chain_(V.t().contiguous().t(), buf, A, C, 0.1, 0.9, 0.0, 1.0, 0)
    with pytest.raises(RuntimeError, match="C must be"):
        cuda_backend.fused_linear_chain_(V, buf, A, C[:2], 0.1, 0.9, 0.0, 1.0, 0)
    with pytest.raises(RuntimeError, match="one dtype"):
        cuda_backend.fused_linear_chain_(V, buf.float(), A, C, 0.1, 0.9, 0.0, 1.0, 0)
    # the fake (meta) kernels give the shapes
    meta = [t.to("meta") for t in (V, buf, A, C)]
    assert torch.ops.dtp_fast.linear_chain_(*meta, 0.1, 0.9, 0.0, 1.0, 1).shape == (2,)
    assert torch.ops.dtp_fast.ldrl_loss(meta[2], meta[0], meta[0], 1.0).shape == ()


# =========================================================================== on a GPU
@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (3, 5), (2, 3, 7, 5), (5, 1024), (2, 4099)])
def test_philox_normal_cuda_equals_cpu(dtype, shape):
    key = (0xDEADBEEF, 0x01234567)
    cpu = torch.empty(shape, dtype=dtype)
    torch.ops.dtp_fast.philox_normal_(cpu, *key, 11, 3, 2)
    dev = torch.empty(shape, dtype=dtype, device="cuda")
    torch.ops.dtp_fast.philox_normal_(dev, *key, 11, 3, 2)
    dev = dev.cpu()
    # at most 1 ulp (float32) apart, and in practice the same bits
    f32 = torch.float32
    torch.testing.assert_close(dev.to(f32), cpu.to(f32), rtol=torch.finfo(f32).eps, atol=0)
    assert (dev == cpu).float().mean() > 0.999
    # and the PyTorch mirror on the GPU
    mirror = philox_normal(shape, key, 11, 3, 2, device="cuda").cpu().to(dtype)
    torch.testing.assert_close(dev.to(f32), mirror.to(f32), rtol=torch.finfo(f32).eps, atol=0)


@gpu
def test_philox_normal_cuda_slices_and_errors():
    """Row by row into slices of a buffer: 16-byte aligned rows take the float4 stores, shifted ones not."""
    base = torch.empty(1 + 6 * 8, device="cuda")
    expect = philox_normal((6, 8), (1, 2), 0, 0, 0)
    for shift in (0, 1):
        out = base[shift:shift + 48].view(6, 8)
        for m in range(6):  # row m of the batch: sample index m
            torch.ops.dtp_fast.philox_normal_(out[m:m + 1], 1, 2, m, 0, 0)
        torch.testing.assert_close(out.cpu(), expect, rtol=torch.finfo(torch.float32).eps, atol=0)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.dtp_fast.philox_normal_(out.t(), 1, 2, 0, 0, 0)
    with pytest.raises(RuntimeError, match="2\\^32"):
        torch.ops.dtp_fast.philox_normal_(out, 1, 2, 2**32, 0, 0)


def _pool_case(shape, M, pool, act, dtype, layout, seed):
    B, C, H, W = shape
    z1 = _layout(2 * torch.randn(M * B, C, H, W, generator=_gen(seed), dtype=torch.float64).to(dtype), layout)
    h0 = _layout(torch.randn(B, C, H, W, generator=_gen(seed + 1), dtype=torch.float64).to(dtype), "nchw")
    return z1, h0


@gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice", "cl_slice"])
@pytest.mark.parametrize("shape,M", [((1, 3, 7, 5), 1), ((2, 5, 11, 13), 3), ((3, 16, 8, 8), 2)])
@pytest.mark.parametrize("pool", POOLS + [(2, 1, 1)], ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_unpool_diff_cuda(dtype, act, pool, shape, M, layout):
    z1, h0 = _pool_case(shape, M, pool, act, dtype, layout, seed=5)
    cpu = ops.pool_unpool_diff(z1, h0, act, *pool, impl="compiled")
    z1d, h0d = _layout(z1.cuda(), layout), _layout(h0.cuda(), "channels_last" if layout == "nchw" else "nchw")
    out = ops.pool_unpool_diff(z1d, h0d, act, *pool, impl="compiled")
    assert out.device.type == "cuda" and out.is_contiguous(memory_format=_format_of(z1d))
    _close(out.cpu(), cpu, act)
    _close(out, ops.pool_unpool_diff_ref(z1d, h0d, act, *pool), act)  # ATen's CUDA activations
    _exact(out, ops.pool_unpool_diff(z1d, h0d, act, *pool, impl="compiled"))  # deterministic


@gpu
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)], ids=_pool_id)
def test_pool_unpool_diff_cuda_ties_nan_inf(pool):
    z1 = torch.tensor([[[[float("nan"), 1.0, 1.0, -float("inf"), 2.0, 2.0],
                         [1.0, float("nan"), -float("inf"), -float("inf"), 2.0, 2.0],
                         [-40.0, -50.0, -60.0, 0.0, 0.0, 3.0],
                         [-30.0, -45.0, -33.0, 0.0, float("inf"), 3.0]]]], dtype=torch.float32)
    h0 = torch.zeros(1, 1, 4, 6)
    for act in ACTS:
        cpu = ops.pool_unpool_diff(z1, h0, act, *pool, impl="compiled")
        # a wrong switch would be far off; ELU / tanh values may differ by an ulp (libdevice vs Sleef)
        _close(ops.pool_unpool_diff(z1.cuda(), h0.cuda(), act, *pool, impl="compiled").cpu(), cpu, act)


def _noisy_case(shape, M, pool, act, dtype, seed):
    B, C, H, W = shape
    y, i, h0 = _switches(shape, pool, act, dtype, seed)
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=_gen(seed + 1), dtype=torch.float64).to(dtype)
    return y, i, h0, eps


@gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice", "cl_slice"])
@pytest.mark.parametrize("shape,M", [((1, 3, 7, 5), 1), ((2, 5, 11, 13), 3), ((3, 16, 8, 8), 2)])
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_cuda(dtype, act, pool, shape, M, layout):
    """Overlapping pools (3/2/1, 3/1/1) give duplicate switches: the last write must win, without races."""
    y, i, h0, eps = _noisy_case(shape, M, pool, act, dtype, seed=7)
    H, W = shape[2:]
    cpu = ops.noisy_unpool_diff(y, eps, 0.4, i, h0, act, (H, W), impl="compiled")
    yd, id_, hd = (_layout(t.cuda(), "nchw" if layout == "channels_last" else layout) for t in (y, i, h0))
    ed = _layout(eps.cuda(), layout)
    out = ops.noisy_unpool_diff(yd, ed, 0.4, id_, hd, act, (H, W), impl="compiled")
    assert out.is_contiguous(memory_format=_format_of(ed))
    _close(out.cpu(), cpu, act)
    _close(out, ops.noisy_unpool_diff_ref(yd, ed, 0.4, id_, hd, act, (H, W)), act)
    for _ in range(3):
        _exact(out, ops.noisy_unpool_diff(yd, ed, 0.4, id_, hd, act, (H, W), impl="compiled"))


@gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "cl_slice"])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)], ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_philox_cuda(dtype, act, pool, layout):
    B, C, H, W = 3, 5, 11, 9
    y, i, h0 = _switches((B, C, H, W), pool, act, dtype, seed=9)
    key, offset, iteration = (0xCAFEF00D, 77), 1000, 40
    for samples, copies in [(1, 1), (2, 6), (3, 3)]:
        cpu = noisy_unpool_diff_philox(y, 0.25, i, h0, act, (H, W), key, offset, iteration, samples, copies)
        yd = _layout(y.cuda(), layout)
        args = (yd, 0.25, i.cuda(), h0.cuda(), act, (H, W), key, offset, iteration, samples, copies)
        out = noisy_unpool_diff_philox(*args)
        assert out.is_contiguous(memory_format=_format_of(yd))
        _close(out.cpu(), cpu, act)
        _close(out, noisy_unpool_diff_philox_ref(*args), act)
        # the same as noisy_unpool_diff given the CUDA philox_normal_'s noise block
        eps = torch.empty(copies, B, C, *y.shape[2:], device="cuda")
        for m in range(copies):
            torch.ops.dtp_fast.philox_normal_(eps[m], *key, offset, iteration + m // samples, m % samples)
        eps = eps.flatten(0, 1).to(dtype).contiguous(memory_format=_format_of(yd))
        _exact(out, ops.noisy_unpool_diff(yd, eps, 0.25, i.cuda(), h0.cuda(), act, (H, W), impl="compiled"))


@gpu
def test_cuda_ops_are_graph_capturable():
    """No host synchronisation: the fused ops can be captured in a CUDA graph (issue: graphs per batch)."""
    B, C, H, W = 2, 4, 8, 8
    y, i, h0 = (t.cuda() for t in _switches((B, C, H, W), (2, 2, 0), "elu", torch.float32, seed=11))
    z1 = torch.randn(3 * B, C, H, W, device="cuda")
    args = (y, 0.5, i, h0, "elu", (H, W), (3, 4), 0, 0, 1, 3)
    expect = (noisy_unpool_diff_philox(*args), ops.pool_unpool_diff(z1, h0, "elu", 2, 2, 0, impl="compiled"))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        noisy_unpool_diff_philox(*args)  # warm up on the side stream
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            got = (noisy_unpool_diff_philox(*args), ops.pool_unpool_diff(z1, h0, "elu", 2, 2, 0, impl="compiled"))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, expect):
        _exact(a, b)


@gpu
def test_cuda_op_argument_errors():
    y, i, h0 = (t.cuda() for t in _switches((2, 3, 6, 6), (2, 2, 0), "elu", torch.float32, seed=12))
    eps = torch.randn(4, 3, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.dtp_fast.noisy_unpool_diff(y, eps, 0.1, i.cpu(), h0, 1, [6, 6])
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.dtp_fast.noisy_unpool_diff(y, eps, 0.1, i, h0.cpu(), 1, [6, 6])
    with pytest.raises(RuntimeError, match="multiple of the batch size"):
        torch.ops.dtp_fast.noisy_unpool_diff(y, eps[:3], 0.1, i, h0, 1, [6, 6])
    with pytest.raises(RuntimeError, match="float32 and float64"):
        torch.ops.dtp_fast.pool_unpool_diff(eps.half(), h0.half(), 1, [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.dtp_fast.pool_unpool_diff(eps, h0[:1].cpu(), 1, [2, 2], [2, 2], [0, 0])


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_momentum_sgd_cuda(dtype):
    params, grads, bufs, lr, mom, wd = _sgd_case("cpu", dtype)
    dev = [[t.cuda() for t in ts] for ts in (params, grads, bufs)]
    for ts in dev[0] + dev[2]:
        assert ts.is_contiguous() or ts.is_contiguous(memory_format=torch.channels_last) or ts.numel() == 0
    cuda_backend.fused_momentum_sgd_(params, grads, bufs, lr, mom, wd)  # CPU kernel
    cuda_backend.fused_momentum_sgd_(*dev, lr, mom, wd)  # 30 tensors: two launches
    for a, b in zip(dev[0] + dev[2], params + bufs):
        _exact(a.cpu(), b)  # the same roundings (no FMA on either side)
    # and torch's own SGD step on the GPU, within an ulp or so (ATen may fuse a * alpha + b)
    p2, g2, b2 = ([t.cuda() for t in ts] for ts in _sgd_case("cpu", dtype)[:3])
    for k in range(len(p2)):
        momentum_sgd_([p2[k]], [g2[k]], [b2[k]], lr[k], mom[k], wd[k])
    for a, b in zip(dev[0] + dev[2], p2 + b2):
        torch.testing.assert_close(a, b, rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)


@gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sizes", [((3, 4, 5, 6), (4, 3, 3, 3)), ((128, 64, 16, 16), (64, 32, 3, 3)),
                                   ((2, 1, 1, 1), (1, 1, 1, 1)), ((513, 4099), (7, 5))])
def test_ldrl_loss_cuda_equals_cpu_and_is_deterministic(dtype, sizes):
    """Both terms in one two-pass reduction (float64 sums): the CPU oracle's value, the same bits on
    every run (no atomics), also with more elements than the kernel's 1024 partial blocks cover."""
    shape_r, shape_v = sizes
    r, A, V = _loss_case(dtype, shape_r=shape_r, shape_v=shape_v)
    cpu = cuda_backend.fused_ldrl_loss(r, A, V, 0.3)
    rd, Ad, Vd = r.cuda(), A.cuda(), V.cuda()
    out = cuda_backend.fused_ldrl_loss(rd, Ad, Vd, 0.3)
    assert out.device.type == "cuda" and out.shape == () and out.dtype == dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2 * torch.finfo(dtype).eps, atol=0)
    torch.testing.assert_close(out.cpu(), cpu, **tol)
    for _ in range(3):
        _exact(cuda_backend.fused_ldrl_loss(rd, Ad, Vd, 0.3), out)
    # other layouts of A and dr_y
    _exact(cuda_backend.fused_ldrl_loss(_noncontiguous_last(rd), Ad, Vd, 0.3),
           cuda_backend.fused_ldrl_loss(rd.contiguous(), Ad, Vd, 0.3))
    torch.testing.assert_close(out.double(), _loss_expr(rd, Ad, Vd, 0.3), rtol=1e-5 if dtype == torch.float32
                               else 1e-12, atol=1e-6)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        cuda_backend.fused_ldrl_loss(r, Ad, Vd, 0.3)


@gpu
@pytest.mark.parametrize("shape", [(20, 512, 10), (5, 7, 3), (3, 2, 1500), (4, 3000, 1), (1, 1, 1)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_linear_chain_cuda_equals_cpu(dtype, shape):
    """The persistent kernel against its CPU oracle: V C_k in the same order with separately
    rounded products and sums (-fmad=false on both sides), float64 loss sums; deterministic."""
    n, d_in, d_out = shape
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for lr, mom, wd, scale in CHAIN_SETTINGS:
        for loss_from in (0, n - 1, n):
            V, buf, A, C = _chain_case(n, d_in, d_out, dtype)
            Vd, bd, Ad, Cd = (t.cuda() for t in (V, buf, A, C))
            got = cuda_backend.fused_linear_chain_(Vd, bd, Ad, Cd, lr, mom, wd, scale, loss_from)
            expect = cuda_backend.fused_linear_chain_(V, buf, A, C, lr, mom, wd, scale, loss_from)
            for a, b in ((Vd, V), (bd, buf), (got, expect)):
                _close_on_scale(a.cpu(), b, **tol)
            # and the engine's torch expressions on the GPU
            V2, b2 = (t.cuda() for t in _chain_case(n, d_in, d_out, dtype)[:2])
            ref = cuda_backend.fused_linear_chain_ref(V2, b2, Ad, Cd, lr, mom, wd, scale, loss_from)
            loose = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
            for a, b in ((Vd, V2), (got, ref)):
                _close_on_scale(a, b, **loose)
            # the same bits on a second run
            V3, b3 = (t.cuda() for t in _chain_case(n, d_in, d_out, dtype)[:2])
            _exact(cuda_backend.fused_linear_chain_(V3, b3, Ad, Cd, lr, mom, wd, scale, loss_from), got)
            _exact(V3, Vd)


@gpu
def test_cuda_chain_ops_are_graph_capturable():
    V, buf, A, C = (t.cuda() for t in _chain_case(6, 40, 10, torch.float32))
    r, Al, Vl = _loss_case(torch.float32, "cuda")
    V0, b0 = V.clone(), buf.clone()
    expect_chain = cuda_backend.fused_linear_chain_(V.clone(), buf.clone(), A, C, 0.1, 0.9, 0.0, 0.5, 0)
    expect_loss = cuda_backend.fused_ldrl_loss(r, Al, Vl, 0.3)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        cuda_backend.fused_ldrl_loss(r, Al, Vl, 0.3)  # warm up on the side stream
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            V.copy_(V0)
            buf.copy_(b0)
            losses = cuda_backend.fused_linear_chain_(V, buf, A, C, 0.1, 0.9, 0.0, 0.5, 0)
            loss = cuda_backend.fused_ldrl_loss(r, Al, Vl, 0.3)
    graph.replay()
    torch.cuda.synchronize()
    _exact(losses, expect_chain)
    _exact(loss, expect_loss)


# ----------------------------------------------------------------- the backend against reference
from test_backends import _net  # noqa: E402  (conv_0, conv_1 under test, fc_0, fc_1)


def _train(net, x, cfg, backend, noise, budget="default", steps=2, noncontig=False, report="all"):
    net = copy.deepcopy(net)
    state = FeedbackState()
    losses = []
    for s in range(steps):
        acts, sw = net.activations(x)
        if noncontig:
            acts = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in acts]
        losses.append(train_feedback(net, acts, sw, cfg, state, noise, 5 + s, backend=backend, report=report,
                                     memory_budget=budget))
    return net, state, losses


def _assert_same(ref, fast, dtype):
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
    (n_ref, st_ref, l_ref), (n_fast, st_fast, l_fast) = ref, fast
    for name in n_ref.feedback_names:
        torch.testing.assert_close(n_fast.blocks[name].g_op.weight, n_ref.blocks[name].g_op.weight, **tol)
        torch.testing.assert_close(st_fast.buffers[f"{name}.weight"], st_ref.buffers[f"{name}.weight"], **tol)
    for a, b in zip(l_ref, l_fast):
        for name in a:
            if a[name]["loss"] is None:
                assert b[name]["loss"] is None
            else:
                assert b[name]["loss"] == pytest.approx(a[name]["loss"], rel=tol["rtol"] * 10, abs=1e-6)


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
        for name, log, size in (("fused_momentum_sgd_", self.sgd, lambda a: len(a[0])),
                                ("fused_linear_chain_", self.chain, lambda a: tuple(a[2].shape)),
                                ("fused_ldrl_loss", self.loss, lambda a: tuple(a[2].shape))):
            real = getattr(cuda_backend, name)
            monkeypatch.setattr(cuda_backend, name,
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
    from dtp_fast.feedback.analytic import minimum_memory_budget
    table = {}
    noise = ExplicitNoise(lambda *key: table.setdefault(key, torch.randn(
        3, *net.block_list()[key[1] - 1 if key[4] == "x" else key[1]].out_shape, generator=_gen(len(table)),
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
    from dtp_fast.feedback.analytic import minimum_memory_budget
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


@gpu
@pytest.mark.parametrize("case", ["conv3x3-pool2", "conv5x5-pool3/2/1", "relu", "tanh-odd"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("budget", ["default", "one"])
def test_cuda_backend_equals_reference(case, dtype, budget, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    kw = {"conv3x3-pool2": dict(kernel=3, pool=(2, 2, 0)), "conv5x5-pool3/2/1": dict(kernel=5, pool=(3, 2, 1)),
          "relu": dict(act=nn.ReLU), "tanh-odd": dict(act=nn.Tanh, hw=(11, 13), pool=(3, 2, 1))}[case]
    torch.manual_seed(0)
    net = _net(**kw).to("cuda", dtype)
    x = torch.randn(3, *net.in_shape, dtype=dtype, device="cuda")
    cfg = FeedbackConfig(iterations=[4, 3, 5], lr=[0.05, 0.05, 0.1], noise=[0.3, 0.2, 0.1], samples=2)
    b = None
    if budget == "one":
        from dtp_fast.feedback.analytic import minimum_memory_budget
        b = minimum_memory_budget(net.block_list()[1:], cfg.resolve(net.feedback_names), 3, x.element_size())
    assert resolve_backend("cuda", "cuda") == "cuda"
    ref = _train(net, x, cfg, "reference", CounterNoise(3), None)
    _assert_same(ref, _train(net, x, cfg, "cuda", CounterNoise(3), b if b else "default"), dtype)


@gpu
@pytest.mark.parametrize("pool", [(3, 2, 1), (2, 2, 0)], ids=_pool_id)
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


@gpu
def test_cuda_backend_step_layers_matches_apply():
    """step_layers (one fused launch for all layers) performs _Layer.apply's update."""
    from types import SimpleNamespace

    from dtp_fast.feedback.engine import LayerHParams

    layers, expect = [], []
    for k, shape in enumerate([(4, 3, 3, 3), (6, 4), (5, 5)]):
        V = torch.randn(shape, device="cuda", dtype=torch.float64)
        buf = torch.randn(shape, device="cuda", dtype=torch.float64)
        grad = torch.randn(shape, device="cuda", dtype=torch.float64)
        hp = LayerHParams(iterations=3, lr=0.1 * (k + 1), noise=0.1, momentum=0.9, weight_decay=0.01 * k)
        layers.append(SimpleNamespace(Vw=V, bufw=buf, hp=hp, next_k=0))
        v2, b2 = V.clone(), buf.clone()
        momentum_sgd_([v2], [grad.clone()], [b2], hp.lr, hp.momentum, hp.weight_decay)
        expect.append((v2, b2, grad))
    cuda_backend.CudaBackend().step_layers(layers, [e[2] for e in expect], 4)
    for lay, (v2, b2, _) in zip(layers, expect):
        torch.testing.assert_close(lay.Vw, v2, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(lay.bufw, b2, rtol=1e-14, atol=1e-15)
        assert lay.next_k == 5
