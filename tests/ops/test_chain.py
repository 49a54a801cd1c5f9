"""The ``chain`` family: ldrl_loss (the L-DRL loss of a conv layer, one reduction) and linear_chain_ (every
iteration of a Linear feedback block in one call), every implementation against its PyTorch reference.

Implementations (tests/helpers.py) and tolerances:

- ``cpu`` (the compiled op, the oracle of the CUDA kernels): the loss within rtol 1e-12 (float64) /
  2 float32 epsilons (float32) of the expression summed in float64; the chain within rtol 1e-10 /
  atol 1e-12 (float64), 1e-4 / 1e-4 (float32) of the engine's per-iteration expressions, atol on the
  scale of the values (``V C_k`` is summed in another order than BLAS's);
- ``cuda`` (the compiled op, marked gpu): against the CPU kernel (the loss as above; the chain within
  rtol 1e-12 / atol 1e-14 in float64, 1e-5 / 1e-6 in float32: the same order of operations, -fmad=false),
  against the reference on the GPU (the cpu tolerances), and the same bits on every run;
- ``triton`` (dtp_fast.ops.triton.chain): the loss within rel 1e-5 of the expression (float32; atomically
  accumulated blocks); the chain within rtol 1e-4 / atol 1e-6 (float32), 1e-9 / 1e-12 (float64), its
  losses within ten times that rtol and atol 1e-6.
"""
import pytest
import torch

from dtp_fast import ops
from helpers import (COMPILED, CUDA, DTYPES, TRITON, assert_close_within, assert_exact, gen, impl_cases, impl_device,
                     layout)

TRITON_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


# --------------------------------------------------------------------------
# ldrl_loss
# --------------------------------------------------------------------------

def _loss_case(dtype, device="cpu", seed=5, shape_r=(3, 4, 5, 6), shape_v=(4, 3, 3, 3)):
    """dr_y (channels_last), A (NCHW) and V (channels_last): the layouts the engine hands over."""
    g = gen(seed)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t  # noqa: E731
    r = cl(torch.randn(shape_r, generator=g, dtype=dtype).to(device))
    A = torch.randn(shape_v, generator=g, dtype=dtype).to(device)
    V = cl(torch.randn(shape_v, generator=g, dtype=dtype).to(device))
    return r, A, V


def _loss(impl, r, A, V, scale):
    if impl == TRITON:
        from dtp_fast.ops.triton import chain, sgd

        out = torch.zeros(2, dtype=V.dtype, device=V.device)
        chain.ldrl_loss_(out[1:], r, A, V, sgd.layer_scalars([(0.1, 0.9, 0.0, 2 * scale, scale)], V)[0], block=64)
        assert out[0].item() == 0  # only the view given is written
        return out[1]
    return ops.ldrl_loss(r, A, V, scale)


def _loss_tol(dtype):
    return dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=2 * torch.finfo(dtype).eps, atol=0)


LOSS_CASES = impl_cases({
    COMPILED: [(d, ((3, 4, 5, 6), (4, 3, 3, 3))) for d in DTYPES],
    CUDA: [(d, s) for d in DTYPES for s in [((3, 4, 5, 6), (4, 3, 3, 3)), ((128, 64, 16, 16), (64, 32, 3, 3)),
                                            ((2, 1, 1, 1), (1, 1, 1, 1)), ((513, 4099), (7, 5))]],
    TRITON: [(torch.float32, ((6, 4, 5, 5), (5, 4, 3, 3)))],
})


@pytest.mark.parametrize("impl,dtype,sizes", LOSS_CASES)
def test_ldrl_loss_matches_ref(impl, dtype, sizes):
    device = impl_device(impl)
    shape_r, shape_v = sizes
    r, A, V = _loss_case(dtype, device, shape_r=shape_r, shape_v=shape_v)
    if impl == TRITON:
        A = A.contiguous(memory_format=torch.channels_last)  # read in V's layout
    out = _loss(impl, r, A, V, 0.3)
    ref = ops.ldrl_loss_ref(r, A, V, 0.3)
    assert out.device == V.device and out.shape == () and out.dtype == dtype
    if impl == TRITON:
        assert out.item() == pytest.approx(ref.item(), rel=1e-5)
        return
    expr = 0.3 * (r.double().pow(2).sum() - 2 * (A.double() * V.double()).sum())
    if impl == COMPILED:
        assert_close_within(out.double(), expr, **_loss_tol(dtype))
        return
    assert_close_within(out.cpu(), ops.ldrl_loss(r.cpu(), A.cpu(), V.cpu(), 0.3), **_loss_tol(dtype))
    for _ in range(3):  # no atomics: the same bits on every run
        assert_exact(ops.ldrl_loss(r, A, V, 0.3), out)
    # other layouts of A and dr_y
    assert_exact(ops.ldrl_loss(layout(r, "noncontiguous"), A, V, 0.3), ops.ldrl_loss(r.contiguous(), A, V, 0.3))
    assert_close_within(out.double(), expr, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        ops.ldrl_loss(r.cpu(), A, V, 0.3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ldrl_loss_layouts_empty_and_errors(ext, dtype):
    r, A, V = _loss_case(dtype)
    tol = _loss_tol(dtype)
    expect = ops.ldrl_loss_ref(r, A, V, 0.3).double()
    assert_close_within(ops.ldrl_loss(r, A, V, 0.3).double(), expect, **tol)
    # any layouts: a strided dr_y, A in another layout than V, V NCHW
    r2 = layout(r, "noncontiguous")
    for a_, v_ in [(A, V), (A.contiguous(memory_format=torch.channels_last), V.contiguous()), (A[..., :], V)]:
        assert_close_within(ops.ldrl_loss(r2, a_, v_, 0.3).double(), expect, **tol)
    # the torch engine's hook gives the same value
    from types import SimpleNamespace

    from dtp_fast.feedback import TorchBackend

    assert_close_within(TorchBackend().conv_loss(SimpleNamespace(scale=0.3), r, A, V).double(), expect,
                        rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    # empty tensors, and the errors
    assert ops.ldrl_loss(r[:0], A[:0], V[:0], 1.0).item() == 0
    with pytest.raises(RuntimeError, match="shape of V"):
        ops.ldrl_loss(r, A[:1], V, 1.0)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.ldrl_loss(r.float() if dtype == torch.float64 else r.double(), A, V, 1.0)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.ldrl_loss(r.half(), A.half(), V.half(), 1.0)


# --------------------------------------------------------------------------
# linear_chain_
# --------------------------------------------------------------------------

def _chain_case(n, d_in, d_out, dtype, device="cpu", seed=6):
    """V, buf, A, C of a Linear chunk; C_k = dh2^T dh2 (symmetric, PSD) as the engine builds it."""
    g = gen(seed)
    V = 0.3 * torch.randn(d_in, d_out, generator=g, dtype=dtype)
    buf = 0.1 * torch.randn(d_in, d_out, generator=g, dtype=dtype)
    A = torch.randn(n, d_in, d_out, generator=g, dtype=dtype)
    dh2 = torch.randn(n, 4, d_out, generator=g, dtype=dtype)
    C = dh2.transpose(1, 2) @ dh2
    return [t.to(device) for t in (V, buf, A, C)]


def _close_on_scale(a, b, rtol, atol):
    """assert_close with atol relative to the largest magnitude of b."""
    big = b.abs().max().item() if b.numel() else 0.0
    assert_close_within(a, b, rtol=rtol, atol=atol * (1 + big))


def _chain(impl, V, buf, A, C, lr, mom, wd, scale, loss_from, cols):
    if impl == TRITON:
        from dtp_fast.ops.triton import chain, sgd

        n = A.shape[0]
        losses = torch.zeros(n, dtype=V.dtype, device=V.device)
        table = sgd.layer_scalars([(lr, mom, wd, 2 * scale, scale)], V)
        chain.linear_chain_(V, buf, A, C, table[0], losses, loss_from, cols=cols)
        first = n if loss_from is None else loss_from
        assert not losses[:first].any()  # before loss_from: untouched
        return losses[first:]
    return ops.linear_chain_(V, buf, A, C, lr, mom, wd, scale, loss_from)


CHAIN_SETTINGS = [(0.05, 0.9, 0.0, 0.125), (0.1, 0.0, 1e-3, 0.5), (0.02, 0.5, 0.01, 1 / 6)]
# (dtype, (n, d_in, d_out), settings, loss_from values (see _loss_from; "none": no loss), Triton's column tile)
CHAIN_CASES = impl_cases({
    COMPILED: [(d, s, "all", ("0", "n-1", "n", "none"), 64) for d in DTYPES
               for s in [(5, 7, 3), (1, 1, 1), (6, 40, 10), (3, 2, 300)]],
    CUDA: [(d, s, "all", ("0", "n-1", "n"), 64) for d in DTYPES
           for s in [(20, 512, 10), (5, 7, 3), (3, 2, 1500), (4, 3000, 1), (1, 1, 1)]],
    TRITON: [(d, (n, d_in, d_out), "one", ("1",), cols) for n, d_in, d_out, cols, d in [
        (5, 37, 10, 64, torch.float32), (3, 40, 70, 16, torch.float32), (4, 19, 10, 64, torch.float64),
        (2, 1, 3, 16, torch.float32)]],  # cols=16 forces several column tiles
})


def _loss_from(code, n):
    return {"0": 0, "1": 1, "n-1": n - 1, "n": n, "none": None}[code]


@pytest.mark.parametrize("impl,dtype,shape,settings,loss_froms,cols", CHAIN_CASES)
def test_linear_chain_matches_ref(impl, dtype, shape, settings, loss_froms, cols):
    """The engine's per-iteration expressions (V @ C_k, the loss with the V before the step, momentum SGD)."""
    device = impl_device(impl)
    n, d_in, d_out = shape
    if impl == COMPILED:
        tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    elif impl == CUDA:
        tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for lr, mom, wd, scale in CHAIN_SETTINGS if settings == "all" else [(0.01, 0.9, 1e-3, 1 / 8)]:
        for code in loss_froms:
            loss_from = _loss_from(code, n)
            V, buf, A, C = _chain_case(n, d_in, d_out, dtype, device)
            V2, b2 = V.clone(), buf.clone()
            A0, C0 = A.clone(), C.clone()
            got = _chain(impl, V, buf, A, C, lr, mom, wd, scale, loss_from, cols)
            expect = ops.linear_chain_ref(V2, b2, A, C, lr, mom, wd, scale, loss_from)
            assert got.shape == (n - (n if loss_from is None else loss_from),) and got.dtype == dtype
            if impl == TRITON:
                assert_close_within(V.cpu(), V2.cpu(), what="V", **TRITON_TOL[dtype])
                assert_close_within(buf.cpu(), b2.cpu(), what="buf", **TRITON_TOL[dtype])
                assert_close_within(got.cpu(), expect.cpu(), rtol=TRITON_TOL[dtype]["rtol"] * 10, atol=1e-6)
                continue
            if impl == COMPILED:
                # float32: V C_k summed in another order than BLAS's; compare on the scale of the values
                for a, b in ((V, V2), (buf, b2), (got, expect)):
                    _close_on_scale(a, b, **tol)
                assert_exact(A, A0)
                assert_exact(C, C0)  # inputs only
                continue
            # CUDA: against the CPU oracle, the reference on the GPU (cpu tolerances), and the same bits again
            Vc, bc = (t.cpu() for t in _chain_case(n, d_in, d_out, dtype)[:2])
            cpu = ops.linear_chain_(Vc, bc, A.cpu(), C.cpu(), lr, mom, wd, scale, loss_from)
            for a, b in ((V, Vc), (buf, bc), (got, cpu)):
                _close_on_scale(a.cpu(), b, **tol)
            loose = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
            for a, b in ((V, V2), (got, expect)):
                _close_on_scale(a, b, **loose)
            V3, b3 = _chain_case(n, d_in, d_out, dtype, device)[:2]
            assert_exact(ops.linear_chain_(V3, b3, A, C, lr, mom, wd, scale, loss_from), got)
            assert_exact(V3, V)


def test_linear_chain_edge_cases_and_errors(ext):
    V, buf, A, C = _chain_case(3, 4, 2, torch.float64)
    V0 = V.clone()
    out = ops.linear_chain_(V, buf, A[:0], C[:0], 0.1, 0.9, 0.0, 1.0, 0)
    assert out.shape == (0,)
    assert_exact(V, V0)
    with pytest.raises(RuntimeError, match="loss_from must be in"):
        ops.linear_chain_(V, buf, A, C, 0.1, 0.9, 0.0, 1.0, 4)
    with pytest.raises(RuntimeError, match="contiguous"):
        ops.linear_chain_(V.t().contiguous().t(), buf, A, C, 0.1, 0.9, 0.0, 1.0, 0)
    with pytest.raises(RuntimeError, match="C must be"):
        ops.linear_chain_(V, buf, A, C[:2], 0.1, 0.9, 0.0, 1.0, 0)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.linear_chain_(V, buf.float(), A, C, 0.1, 0.9, 0.0, 1.0, 0)
    # the fake (meta) kernels give the shapes
    meta = [t.to("meta") for t in (V, buf, A, C)]
    assert torch.ops.dtp_fast.linear_chain_(*meta, 0.1, 0.9, 0.0, 1.0, 1).shape == (2,)
    assert torch.ops.dtp_fast.ldrl_loss(meta[2], meta[0], meta[0], 1.0).shape == ()


# --------------------------------------------------------------------------
# CUDA graphs, opcheck
# --------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_chain_ops_are_graph_capturable():
    impl_device(CUDA)
    V, buf, A, C = _chain_case(6, 40, 10, torch.float32, "cuda")
    r, Al, Vl = _loss_case(torch.float32, "cuda")
    V0, b0 = V.clone(), buf.clone()
    expect_chain = ops.linear_chain_(V.clone(), buf.clone(), A, C, 0.1, 0.9, 0.0, 0.5, 0)
    expect_loss = ops.ldrl_loss(r, Al, Vl, 0.3)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.ldrl_loss(r, Al, Vl, 0.3)  # warm up on the side stream
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            V.copy_(V0)
            buf.copy_(b0)
            losses = ops.linear_chain_(V, buf, A, C, 0.1, 0.9, 0.0, 0.5, 0)
            loss = ops.ldrl_loss(r, Al, Vl, 0.3)
    graph.replay()
    torch.cuda.synchronize()
    assert_exact(losses, expect_chain)
    assert_exact(loss, expect_loss)


@pytest.mark.parametrize("impl", [COMPILED, pytest.param(CUDA, marks=pytest.mark.gpu)])
def test_opcheck(impl):
    device = impl_device(impl)
    for dtype in DTYPES:
        r, A, V = _loss_case(dtype, device)
        torch.library.opcheck(torch.ops.dtp_fast.ldrl_loss.default, (r, A, V, 0.3))
        V, buf, A, C = _chain_case(3, 5, 4, dtype, device)
        torch.library.opcheck(torch.ops.dtp_fast.linear_chain_.default, (V, buf, A, C, 0.1, 0.9, 1e-3, 0.5, 1))
