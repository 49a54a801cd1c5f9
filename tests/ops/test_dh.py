# Over 500 lines, deliberately: the three dh ops share one set of comparison rules, oracles and input makers,
# and their tests read best beside them.
"""The ``dh`` family: pool_unpool_diff (dh1), noisy_unpool_diff (dh2) and noisy_unpool_diff_philox (dh2 with
the noise drawn in the kernel), every implementation against its PyTorch reference.

Implementations (tests/helpers.py): ``cpu`` (the compiled CPU kernel), ``cuda`` (the compiled CUDA kernel,
marked gpu) and ``triton`` (dtp_fast.ops.triton.dh: the interpreter on a CPU, compiled on a GPU). Each keeps
its comparison rule (``_check``):

- cpu: bit for bit (rtol=0, atol=0, NaN equal to NaN) with an oracle, with one exception that ATen makes:
  its CPU ELU computes the scalar remainder of each thread's chunk (the last n % (2 * vector width)
  elements) with std::expm1 instead of the vectorised Sleef expm1 of all other elements, and the two
  differ by one ulp on some negative inputs. The kernels use the vectorised ELU for every element. So
  the compiled ops are compared bit for bit with an oracle (the reference with ELU before the pool and
  the activation after the unpooling applied through ATen's vectorised path for every element), and with the literal reference
  everywhere except where the reference itself differs from that oracle (then by at most an ulp);
- cuda: bit for bit for identity / ReLU; torch's default float tolerance for ELU / tanh, which come
  from CUDA's libdevice (expm1f / tanhf) rather than ATen's CUDA kernels or the CPU's Sleef; against
  the CPU kernel and the reference run on the GPU, and the same bits on every run;
- triton: rtol 1e-4 / atol 1e-6 in float32, rtol 1e-9 / atol 1e-12 in float64 (polynomial expm1, a
  few ulp from ATen's ELU / tanh).
"""
import itertools

import pytest
import torch
import torch.nn.functional as F

from dtp_fast import _ext, ops
from dtp_fast.ops import dh as dh_ops
from dtp_fast.ops._common import ACT_CODES, activate
from helpers import (ACTS, COMPILED, CUDA, DTYPES, POOLS, TRITON, assert_close_within, assert_exact, elu_saturating,
                     gen, impl_cases, impl_device, impls, layout, memory_format_of, pool_id, with_nan_inf)

SHAPES = [(1, 3, 7, 5), (2, 5, 11, 13)]  # B, C, H, W
#: Triton's tolerance (see the module doc).
TRITON_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


# --------------------------------------------------------------------------
# inputs, oracles and the comparison rules
# --------------------------------------------------------------------------

def _values(shape, dtype, kind="randn", seed=0):
    x = torch.randn(shape, generator=gen(seed), dtype=torch.float64)
    if kind == "saturated":  # ELU's saturation ties, and a few positives
        x = elu_saturating(shape, seed)
        x.view(-1)[::17] += 31
    elif kind == "special":
        # saturated ties in a window, a window of -inf, NaNs (the last NaN wins)
        x = 2 * x
        x[0, 0, :3, :3] = -40.0
        x[1, 1, 2, :4] = float("-inf")
        x[2, 2, 4, 4] = float("nan")
        x[2, 3, 1, 1:3] = float("nan")
    else:
        x = 2 * x
    return x.to(dtype)


def _in_layout(x, name, which):
    """x in the layout of a case; "mixed": the main tensor (z1 / eps) channels_last, the others NCHW."""
    if name == "mixed":
        name = "channels_last" if which == "main" else "nchw"
    return layout(x, name)


def _format(name):
    return torch.channels_last if name in ("channels_last", "mixed", "cl_slice") else torch.contiguous_format


def _act_vectorised(x, act):
    """ATen's activation with its vectorised kernel for every element: pieces
    of at most 8192 elements (serial in ATen), zero-padded to a multiple of 64."""
    flat = x.reshape(-1)
    n = flat.numel()
    flat = torch.cat([flat, flat.new_zeros((-n) % 64)])
    pieces = [activate(flat[i : i + 8192].clone(), act) for i in range(0, flat.numel(), 8192)]
    return torch.cat(pieces)[:n].view(x.shape)


def _oracle_pool(z1, h0, act, pool):
    M = z1.shape[0] // h0.shape[0]
    if act == "elu":  # the vectorised ELU before the pool too (of the members of the windows that need it)
        y1, i1 = ops.act_pool2d_ref(_act_vectorised(z1, act), "identity", *pool)
    else:
        y1, i1 = ops.act_pool2d_ref(z1, act, *pool)
    u = ops.unpool2d_last_wins(y1, i1, z1.shape[2:])
    return _act_vectorised(u, act) - h0.repeat(M, 1, 1, 1)


def _oracle_noisy(y, eps, sigma, indices, h0, act, size):
    M = eps.shape[0] // y.shape[0]
    noisy = y.repeat(M, 1, 1, 1) + sigma * eps
    u = ops.unpool2d_last_wins(noisy, indices.repeat(M, 1, 1, 1), size)
    return _act_vectorised(u, act) - h0.repeat(M, 1, 1, 1)


def _check_against(out, ref, oracle, act, pool=False):
    """out == oracle bit for bit; out == ref except where ATen's ELU of the
    reference took its scalar remainder path (then within an ulp, unless that
    ulp broke a tie of ELU's saturation before a ``pool`` differently: then a
    switch moved)."""
    assert_exact(out, oracle)
    differ = ~((out == ref) | (out.isnan() & ref.isnan()))
    if act != "elu":
        assert not differ.any(), "%d positions differ from the reference" % int(differ.sum())
        return
    ref_own = ~((ref == oracle) | (ref.isnan() & oracle.isnan()))
    assert not (differ & ~ref_own).any(), "differences outside ATen's ELU remainder positions"
    if not pool:
        torch.testing.assert_close(out, ref, equal_nan=True)  # one ulp: within torch's default float tolerance


def _close_libdevice(a, b, act):
    """Bit for bit for identity / ReLU; torch's default float tolerance where ELU / tanh come from another
    math library (CUDA's libdevice)."""
    if act in ("identity", "relu"):
        assert_exact(a, b)
    else:
        torch.testing.assert_close(a, b, equal_nan=True)


def _check(impl, out, ref, act, dtype, oracle=None, what="", pool=False):
    """``out`` of ``impl`` against the reference ``ref`` (same device) with the rule of ``impl``."""
    if impl == COMPILED:
        _check_against(out, ref, oracle, act, pool)
    elif impl == CUDA:
        _close_libdevice(out, ref, act)
    else:
        assert_close_within(out.cpu(), ref.cpu(), what=what, **TRITON_TOL[dtype])
        assert torch.equal(out.cpu().isnan(), ref.cpu().isnan())


def _switches(shape, pool, act, dtype, seed=0):
    """Clean pooled values y, switches I0 and h0 = unpool_act2d(y, I0)."""
    z = _values(shape, dtype, "randn", seed)
    y, i = ops.act_pool2d_ref(z, act, *pool)
    return y, i, ops.unpool_act2d_ref(y, i, act, shape[2:])


def _product(*lists):
    return list(itertools.product(*lists))


# --------------------------------------------------------------------------
# pool_unpool_diff (dh1)
# --------------------------------------------------------------------------

def _dh1(impl, z1, h0, act, pool):
    if impl == TRITON:
        return dh_ops_triton().pool_unpool_diff(z1, h0, act, *pool)
    return ops.pool_unpool_diff(z1, h0, act, *pool, impl="compiled")


def dh_ops_triton():
    from dtp_fast.ops.triton import dh

    return dh


# (dtype, act, pool, shape, M, z1 layout, h0 layout, values)
DH1_CASES = impl_cases({
    COMPILED: [(d, a, p, s, m, lay, lay, "randn") for d, a, p, s, m, lay in _product(
        DTYPES, ACTS, POOLS, SHAPES, [1, 3], ["nchw", "channels_last", "mixed", "slice", "cl_slice"])],
    CUDA: [(d, a, p, s, m, lay, "channels_last" if lay == "nchw" else "nchw", "randn") for d, a, p, (s, m), lay in
           _product(DTYPES, ACTS, POOLS + [(2, 1, 1)], [((1, 3, 7, 5), 1), ((2, 5, 11, 13), 3), ((3, 16, 8, 8), 2)],
                    ["nchw", "channels_last", "slice", "cl_slice"])],
    TRITON: [(d, a, p, (3, 4, 7, 9), 2, lay, "noncontiguous", "special") for d, a, p, lay in _product(
        DTYPES, ACTS, [(2, 2, 0), (3, 2, 1)], ["nchw", "channels_last", "noncontiguous"])],
})


@pytest.mark.parametrize("impl,dtype,act,pool,shape,M,z_layout,h_layout,values", DH1_CASES)
def test_pool_unpool_diff_matches_ref(impl, dtype, act, pool, shape, M, z_layout, h_layout, values):
    device = impl_device(impl)
    B, C, H, W = shape
    z1 = _in_layout(_values((M * B, C, H, W), dtype, values, seed=1).to(device), z_layout, "main")
    h0 = _in_layout(_values(shape, dtype, seed=2).to(device), h_layout, "other")
    out = _dh1(impl, z1, h0, act, pool)
    ref = ops.pool_unpool_diff_ref(z1, h0, act, *pool)
    assert out.device == z1.device and out.is_contiguous(memory_format=memory_format_of(z1))
    assert ref.stride() == out.stride()
    _check(impl, out, ref, act, dtype, _oracle_pool(z1, h0, act, pool) if impl == COMPILED else None,
           "dh1 %s %s" % (act, z_layout), pool=True)
    if impl == CUDA:
        _close_libdevice(out.cpu(), ops.pool_unpool_diff(z1.cpu(), h0.cpu(), act, *pool, impl="compiled"), act)
        assert_exact(out, _dh1(impl, z1, h0, act, pool))  # deterministic


@pytest.mark.parametrize("impl", impls(COMPILED, CUDA, TRITON))
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)], ids=pool_id)
def test_pool_unpool_diff_ties_nan_inf(impl, pool):
    device = impl_device(impl)
    z1 = torch.tensor([[[[float("nan"), 1.0, 1.0, -float("inf"), 2.0, 2.0],
                         [1.0, float("nan"), -float("inf"), -float("inf"), 2.0, 2.0],
                         [-40.0, -50.0, -60.0, 0.0, 0.0, 3.0],
                         [-30.0, -45.0, -33.0, 0.0, float("inf"), 3.0]]]], dtype=torch.float32)
    h0 = torch.zeros(1, 1, 4, 6)
    for act in ACTS:
        out = _dh1(impl, z1.to(device), h0.to(device), act, pool).cpu()
        # a wrong switch would be far off
        _check(impl, out, ops.pool_unpool_diff_ref(z1, h0, act, *pool), act, torch.float32,
               _oracle_pool(z1, h0, act, pool) if impl == COMPILED else None, "dh1 ties %s" % act, pool=True)


@pytest.mark.parametrize("impl", impls(COMPILED, TRITON))
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 2, 1)], ids=pool_id)
def test_pool_unpool_diff_batch_one_odd_planes(impl, pool):
    device = impl_device(impl)
    z1 = torch.randn(3, 2, 5, 11, generator=gen(31))
    _, _, h0 = _switches((1, 2, 5, 11), pool, "elu", torch.float32, seed=32)
    out = _dh1(impl, z1.to(device), h0.to(device), "elu", pool).cpu()
    _check(impl, out, ops.pool_unpool_diff_ref(z1, h0, "elu", *pool), "elu", torch.float32,
           _oracle_pool(z1, h0, "elu", pool) if impl == COMPILED else None, "dh1 batch 1", pool=True)


def _run_pool(z1, h0, act, pool, expect_format):
    out = ops.pool_unpool_diff(z1, h0, act, *pool, impl="compiled")
    ref = ops.pool_unpool_diff_ref(z1, h0, act, *pool)
    _check_against(out, ref, _oracle_pool(z1, h0, act, pool), act, pool=True)
    assert out.is_contiguous(memory_format=expect_format)
    assert ref.stride() == out.stride()
    return out


@pytest.mark.parametrize("layout_name", ["nchw", "channels_last", "slice"])
@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_unpool_diff_saturated_elu_ties(ext, dtype, pool, layout_name):
    M, B, C, H, W = 3, 2, 5, 11, 13
    z1 = _in_layout(_values((M * B, C, H, W), dtype, "saturated", seed=3), layout_name, "main")
    h0 = _in_layout(_values((B, C, H, W), dtype, seed=4), layout_name, "other")
    for act in ACTS:
        _run_pool(z1, h0, act, pool, _format(layout_name))
    # all of z1 distinct, all of ELU(z1) == -1: the first window position wins
    z = -60 - torch.rand(2, 2, 6, 6, generator=gen(5), dtype=torch.float64).to(dtype)
    h = torch.zeros(1, 2, 6, 6, dtype=dtype)
    out = _run_pool(_in_layout(z, layout_name, "main"), _in_layout(h, layout_name, "other"), "elu", (2, 2, 0),
                    _format(layout_name))
    elu_m1 = _act_vectorised(torch.full((1,), -1.0, dtype=dtype), "elu")
    expect = torch.zeros(2, 2, 6, 6, dtype=dtype)
    expect[..., ::2, ::2] = elu_m1
    assert_exact(out, expect)


@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
def test_pool_unpool_diff_nan_inf(ext, pool):
    z1 = with_nan_inf(torch.randn(4, 3, 8, 7, generator=gen(6)), inf_row=3)
    h0 = torch.randn(2, 3, 8, 7, generator=gen(7))
    for name in ("nchw", "channels_last"):
        for act in ACTS:
            _run_pool(layout(z1, name), layout(h0, name), act, pool, _format(name))


@pytest.mark.parametrize("act", ACTS)
def test_pool_unpool_diff_many_samples(ext, act):
    # Several parallel tasks and sample groups; ATen activation calls of more
    # than one chunk (mostly negative values).
    M, B, C, H, W = 9, 4, 16, 16, 16
    for name in ("nchw", "channels_last"):
        z1 = layout(_values((M * B, C, H, W), torch.float32, seed=8) - 3, name)
        h0 = layout(_values((B, C, H, W), torch.float32, seed=9), name)
        for pool in ((2, 2, 0), (3, 2, 1)):
            _run_pool(z1, h0, act, pool, _format(name))


def test_pool_unpool_diff_definition(ext):
    # Directly from the formula of ALGORITHM.md: h(y1; I1) - h(y; I0).
    M, B, C, H, W = 2, 3, 4, 8, 6
    z = torch.randn(B, C, H, W, generator=gen(10), dtype=torch.float64)
    z1 = z.repeat(M, 1, 1, 1) + 0.3 * torch.randn(M * B, C, H, W, generator=gen(11), dtype=torch.float64)
    y, i0 = F.max_pool2d(F.elu(z), 2, 2, return_indices=True)
    h0 = F.elu(F.max_unpool2d(y, i0, 2, 2, output_size=(H, W)))
    y1, i1 = F.max_pool2d(F.elu(z1), 2, 2, return_indices=True)
    dh1 = F.elu(F.max_unpool2d(y1, i1, 2, 2, output_size=(H, W))) - h0.repeat(M, 1, 1, 1)
    out = ops.pool_unpool_diff(z1, h0, "elu", 2)
    assert_close_within(out, dh1, rtol=0, atol=1e-15)
    # uncovered border (7 rows for a kernel of 2) and stride defaults
    out = ops.pool_unpool_diff(z1[..., :7, :], h0[..., :7, :], "elu", 2, impl="compiled")
    torch.testing.assert_close(out, ops.pool_unpool_diff_ref(z1[..., :7, :], h0[..., :7, :], "elu", 2))
    assert torch.equal(out[..., 6, :], -h0[..., 6, :].repeat(M, 1, 1))


def test_pool_unpool_diff_empty(ext):
    out = ops.pool_unpool_diff(torch.randn(0, 3, 8, 8), torch.randn(2, 3, 8, 8), "elu", 2, impl="compiled")
    assert out.shape == (0, 3, 8, 8)


# --------------------------------------------------------------------------
# noisy_unpool_diff (dh2, noise given)
# --------------------------------------------------------------------------

def _dh2(impl, y, eps, sigma, i, h0, act, pool, size):
    """dh2 of ``impl``, in the memory format of eps."""
    if impl == TRITON:
        cl = eps.dim() == 4 and memory_format_of(eps) == torch.channels_last
        return dh_ops_triton().noisy_unpool_diff(y, i, h0, act, _pool_triple(pool), sigma, eps.shape[0] // y.shape[0],
                                                 eps=eps, channels_last=cl)
    return ops.noisy_unpool_diff(y, eps, sigma, i, h0, act, size, impl="compiled")


def _pool_triple(pool):
    k, s, p = pool
    return (k, k), (s, s), (p, p)


# (dtype, act, pool, shape, M, y/i/h0 layout, eps layout, sigmas)
DH2_CASES = impl_cases({
    COMPILED: [(d, a, p, s, m, lay, lay, (0.4, 0.1)) for d, a, p, s, m, lay in _product(
        DTYPES, ACTS, POOLS, SHAPES, [1, 3], ["nchw", "channels_last", "mixed", "slice", "cl_slice"])],
    CUDA: [(d, a, p, s, m, "nchw" if lay == "channels_last" else lay, lay, (0.4,)) for d, a, p, (s, m), lay in
           _product(DTYPES, ACTS, POOLS, [((1, 3, 7, 5), 1), ((2, 5, 11, 13), 3), ((3, 16, 8, 8), 2)],
                    ["nchw", "channels_last", "slice", "cl_slice"])],
    TRITON: [(d, a, p, (2, 3, 9, 7), 3, "noncontiguous", "channels_last", (0.3,)) for d, a, p in _product(
        DTYPES, ["elu", "tanh", "relu"], [(2, 2, 0), (3, 2, 1)])],
})


@pytest.mark.parametrize("impl,dtype,act,pool,shape,M,y_layout,eps_layout,sigmas", DH2_CASES)
def test_noisy_unpool_diff_matches_ref(impl, dtype, act, pool, shape, M, y_layout, eps_layout, sigmas):
    device = impl_device(impl)
    B, C, H, W = shape
    y, i, h0 = _switches(shape, pool, act, dtype, seed=12)
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=gen(13), dtype=dtype)
    y, i, h0 = (_in_layout(t.to(device), y_layout, "other") for t in (y, i, h0))
    eps = _in_layout(eps.to(device), eps_layout, "main")
    # 0.4 and 0.1 are not float32 numbers: sigma is rounded as PyTorch does
    for sigma in sigmas:
        out = _dh2(impl, y, eps, sigma, i, h0, act, pool, (H, W))
        ref = ops.noisy_unpool_diff_ref(y, eps, sigma, i, h0, act, (H, W))
        assert out.is_contiguous(memory_format=memory_format_of(eps)) and ref.stride() == out.stride()
        _check(impl, out, ref, act, dtype,
               _oracle_noisy(y, eps, sigma, i, h0, act, (H, W)) if impl == COMPILED else None, "dh2 %s" % act)
        if impl == CUDA:  # the CPU kernel, and the same bits on every run (duplicate switches: no races)
            cpu = ops.noisy_unpool_diff(*(t.cpu() for t in (y, eps)), sigma, i.cpu(), h0.cpu(), act, (H, W),
                                        impl="compiled")
            _close_libdevice(out.cpu(), cpu, act)
            for _ in range(3):
                assert_exact(out, _dh2(impl, y, eps, sigma, i, h0, act, pool, (H, W)))


def _run_noisy(y, eps, sigma, i, h0, act, size, expect_format):
    out = ops.noisy_unpool_diff(y, eps, sigma, i, h0, act, size, impl="compiled")
    ref = ops.noisy_unpool_diff_ref(y, eps, sigma, i, h0, act, size)
    _check_against(out, ref, _oracle_noisy(y, eps, sigma, i, h0, act, size), act)
    assert out.is_contiguous(memory_format=expect_format)
    assert ref.stride() == out.stride()
    return out


@pytest.mark.parametrize("impl", impls(COMPILED, TRITON))
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_duplicates_last_write_wins(impl, dtype, act):
    # Overlapping windows: neighbouring pooled positions share a switch, and
    # the noise gives them different values.
    device = impl_device(impl)
    M, B, C, H, W = 3, 2, 3, 11, 13
    y, i, h0 = _switches((B, C, H, W), (3, 2, 1), act, dtype, seed=14)
    flat = i.flatten(2)
    assert any(flat[b, c].unique().numel() < flat.shape[2] for b in range(B) for c in range(C))
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=gen(15), dtype=dtype)
    # explicit: the last pooled position (row-major) holding an index wins
    noisy = (y.repeat(M, 1, 1, 1) + 0.5 * eps).flatten(2)
    expect = torch.zeros(M * B, C, H * W, dtype=dtype)
    for n in range(M * B):
        for c in range(C):
            for p in range(flat.shape[2]):
                expect[n, c, flat[n % B, c, p]] = noisy[n, c, p]
    expect = _act_vectorised(expect.view(M * B, C, H, W), act) - h0.repeat(M, 1, 1, 1)
    for name in ("nchw", "channels_last"):
        args = [layout(t.to(device), name) for t in (y, eps, i, h0)]
        out = _dh2(impl, args[0], args[1], 0.5, args[2], args[3], act, (3, 2, 1), (H, W))
        if impl == COMPILED:
            _run_noisy(args[0], args[1], 0.5, args[2], args[3], act, (H, W), _format(name))
            assert_exact(out, expect)
        else:
            _check(impl, out, expect, act, dtype, what="dh2 duplicates %s" % act)
    # the smallest case: three positions, one switch
    y1 = torch.tensor([[[[1.0, -2.0, 3.0]]]], dtype=dtype)
    e1 = torch.tensor([[[[0.5, 0.5, -9.0]]], [[[1.0, 1.0, 1.0]]]], dtype=dtype)
    i1 = torch.zeros(1, 1, 1, 3, dtype=torch.int64)
    h1 = torch.zeros(1, 1, 1, 3, dtype=dtype)
    if impl == COMPILED:  # a 1x3 "pool" is not a pooling window: the compiled op only
        out = ops.noisy_unpool_diff(y1, e1, 1.0, i1, h1, act, (1, 3), impl="compiled")
        assert_exact(out, activate(torch.tensor([[[[-6.0, 0, 0]]], [[[4.0, 0, 0]]]], dtype=dtype), act))


@pytest.mark.triton
def test_noisy_unpool_diff_identity_duplicates_exact_in_triton():
    """Overlapping 3/2/1 windows that pick the same input: the last pooled position (row-major) wins."""
    device = impl_device(TRITON)
    z = torch.tensor([[[[0., 0., 0., 0.], [0., 9., 0., 0.], [0., 0., 0., 0.], [0., 0., 0., 0.]]]])
    y, I = ops.act_pool2d_ref(z, "identity", 3, 2, 1)
    assert (I == 5).sum() >= 2
    h0 = ops.unpool2d_last_wins(y, I, (4, 4))
    eps = torch.arange(y.numel(), dtype=torch.float32).reshape(y.shape)
    want = ops.noisy_unpool_diff_ref(y, eps, 1.0, I, h0, "identity", (4, 4))
    got = _dh2(TRITON, y.to(device), eps.to(device), 1.0, I.to(device), h0.to(device), "identity", (3, 2, 1), (4, 4))
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("act", ACTS)
def test_noisy_unpool_diff_many_samples(ext, act):
    M, B, C, H, W = 9, 4, 16, 16, 16
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), act, torch.float32, seed=16)
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=gen(17))
    for name in ("nchw", "channels_last"):
        _run_noisy(layout(y, name), layout(eps, name), 3.0, layout(i, name), layout(h0, name), act, (H, W),
                   _format(name))


def test_noisy_unpool_diff_definition(ext):
    # h(y + dy; I0) - h(y; I0) with F.max_unpool2d (no duplicates with (2, 2)).
    M, B, C, H, W = 2, 3, 4, 8, 6
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), "elu", torch.float64, seed=18)
    eps = torch.randn(M * B, C, H // 2, W // 2, generator=gen(19), dtype=torch.float64)
    dh2 = F.elu(F.max_unpool2d(y.repeat(M, 1, 1, 1) + 0.2 * eps, i.repeat(M, 1, 1, 1), 2, 2,
                               output_size=(H, W))) - h0.repeat(M, 1, 1, 1)
    out = ops.noisy_unpool_diff(y, eps, 0.2, i, h0, "elu", (H, W))
    assert_close_within(out, dh2, rtol=0, atol=1e-15)
    # output_size as a full shape
    torch.testing.assert_close(out, ops.noisy_unpool_diff(y, eps, 0.2, i, h0, "elu", torch.Size([B, C, H, W])))


def test_noisy_unpool_diff_empty(ext):
    y, i, h0 = _switches((2, 3, 8, 8), (2, 2, 0), "elu", torch.float32)
    out = ops.noisy_unpool_diff(y, torch.randn(0, 3, 4, 4), 0.4, i, h0, "elu", (8, 8), impl="compiled")
    assert out.shape == (0, 3, 8, 8)


# --------------------------------------------------------------------------
# noisy_unpool_diff_philox (dh2, noise drawn in the kernel)
# --------------------------------------------------------------------------

def _eps_block(shape, key, offset, iteration, samples, copies, dtype, device="cpu"):
    B = shape[0]
    blocks = [ops.philox_normal(shape, key, offset, iteration + m // samples, m % samples, device)
              for m in range(copies)]
    return torch.stack(blocks).reshape(copies * B, *shape[1:]).to(dtype)


def _dh2_philox(impl, y, sigma, i, h0, act, pool, size, key, offset, iteration, samples, copies):
    if impl == TRITON:
        return dh_ops_triton().noisy_unpool_diff(
            y, i, h0, act, _pool_triple(pool), sigma, copies, noise=(key, offset, iteration, samples),
            channels_last=memory_format_of(y) == torch.channels_last)
    return ops.noisy_unpool_diff_philox(y, sigma, i, h0, act, size, key, offset, iteration, samples, copies)


# (dtype, act, pool, layout of y, [(samples, copies)])
PHILOX_CASES = impl_cases({
    COMPILED: [(d, a, p, lay, ((1, 1), (3, 6))) for d, a, p, lay in _product(
        DTYPES, ACTS, [(2, 2, 0), (3, 2, 1)], ["nchw", "channels_last", "slice"])],
    CUDA: [(d, a, p, lay, ((1, 1), (2, 6), (3, 3))) for d, a, p, lay in _product(
        DTYPES, ACTS, [(2, 2, 0), (3, 2, 1)], ["nchw", "channels_last", "cl_slice"])],
    TRITON: [(d, a, p, "nchw", ((2, 6),)) for d, a, p in _product(DTYPES, ["elu", "relu"], [(2, 2, 0), (3, 2, 1)])],
})


@pytest.mark.parametrize("impl,dtype,act,pool,y_layout,blocks", PHILOX_CASES)
def test_noisy_unpool_diff_philox_matches_ref(impl, dtype, act, pool, y_layout, blocks):
    device = impl_device(impl)
    B, C, H, W = (2, 3, 9, 7) if impl == COMPILED else (3, 5, 11, 9)
    y, i, h0 = _switches((B, C, H, W), pool, act, dtype, seed=1)
    y = layout(y.to(device), y_layout)
    i, h0 = ((layout(t.to(device), y_layout) if impl == COMPILED else t.to(device)) for t in (i, h0))
    key, offset, iteration = (0x12345678, 0x9ABCDEF0), 5, 7
    for samples, copies in blocks:
        args = (y, 0.3, i, h0, act, (H, W), key, offset, iteration, samples, copies)
        out = _dh2_philox(impl, y, 0.3, i, h0, act, pool, (H, W), key, offset, iteration, samples, copies)
        assert out.shape == (copies * B, C, H, W) and out.dtype == dtype
        assert out.is_contiguous(memory_format=memory_format_of(y))
        ref = ops.noisy_unpool_diff_philox_ref(*args)
        assert ref.stride() == out.stride()
        if impl == TRITON:
            _check(impl, out, ref, act, dtype, what="dh2 in-kernel noise")
            continue
        # bit for bit: the compiled noisy_unpool_diff given the noise of the same generator
        eps = _eps_block(y.shape, key, offset, iteration, samples, copies, dtype)
        if impl == CUDA:  # drawn by the CUDA philox_normal_
            eps = torch.empty(copies, B, C, *y.shape[2:], device=device)
            for m in range(copies):
                ops.philox_normal_(eps[m], key, offset, iteration + m // samples, m % samples)
            eps = eps.flatten(0, 1).to(dtype)
        eps = eps.to(device).contiguous(memory_format=memory_format_of(y))
        assert_exact(out, ops.noisy_unpool_diff(y, eps, 0.3, i, h0, act, (H, W), impl="compiled"))
        # the pure-PyTorch reference: bit for bit but for ATen's CPU ELU remainder ulps (see the module doc)
        if impl == COMPILED:
            if act == "elu":
                torch.testing.assert_close(out, ref, equal_nan=True)  # an ulp: within torch's default tolerance
            else:
                assert_exact(out, ref)
        else:
            _close_libdevice(out, ref, act)
            cpu = ops.noisy_unpool_diff_philox(y.cpu(), 0.3, i.cpu(), h0.cpu(), act, (H, W), key, offset, iteration,
                                               samples, copies)
            _close_libdevice(out.cpu(), cpu, act)


def test_noisy_unpool_diff_philox_rows_are_global_samples(ext):
    """Row b of a call with offset o has the noise of row o + b of the whole batch."""
    B, C, H, W = 4, 2, 6, 6
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), "identity", torch.float32, seed=2)
    full = ops.noisy_unpool_diff_philox(y, 1.0, i, h0, "identity", (H, W), (1, 2), 0, 3, 2, 4)
    part = ops.noisy_unpool_diff_philox(y[2:], 1.0, i[2:], h0[2:], "identity", (H, W), (1, 2), 2, 3, 2, 4)
    assert_exact(part, full.view(4, B, C, H, W)[:, 2:].reshape(8, C, H, W))


def test_noisy_unpool_diff_philox_errors(ext):
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


@pytest.mark.triton
@pytest.mark.parametrize("pool_name", ["2x2/2", "3/2/1", "linear"])
def test_triton_dh2_in_kernel_noise_equals_the_torch_backend(pool_name):
    """dh2 with dy drawn in the kernel = the torch backend's dh2 on the materialised counter noise; both at the
    block's output (pooled) resolution, and placed at the clean switches they are h(y + dy; I0) - h(y; I0)."""
    device = impl_device(TRITON)
    torch.manual_seed(2)
    from dtp_fast.blocks import ACTIVATIONS, conv_block, linear_block
    from dtp_fast.feedback import TorchBackend
    from dtp_fast.feedback import TritonBackend
    from dtp_fast.noise import CounterNoise, NoiseBlock

    if pool_name == "linear":
        block = linear_block((6,), 5, act="elu")
    else:
        block = conv_block((2, 7, 9), 3, kernel_size=3, pool={"2x2/2": (2, 2, 0), "3/2/1": (3, 2, 1)}[pool_name])
    B, n, S = 2, 3, 2
    x = torch.randn(B, *block.in_shape)
    y, sw = block.f(x)
    h0 = block.h(y, sw)
    nb = NoiseBlock(CounterNoise(5), 7, 2, "y", 4, n, S, 3, tuple(y.shape))
    a0 = ACTIVATIONS[block.act](y)
    want = TorchBackend().dh2(block, y, nb, 0.2, a0)
    copies = n * S
    rep = None if sw is None else sw.repeat(copies, 1, 1, 1)
    noisy = y.repeat(copies, *[1] * (y.dim() - 1)) + 0.2 * nb.materialize(y.device, y.dtype)
    unpooled = (block.h(noisy, rep).unflatten(0, (copies, -1)) - h0).flatten(0, 1)
    assert_close_within(block.unpool(want, rep), unpooled, rtol=1e-6, atol=1e-6, what="dh2 unpooled")
    block.to(device)
    got = TritonBackend(tf32=False).dh2(block, y.to(device), nb, 0.2, a0.to(device))
    assert got.shape == want.shape
    assert_close_within(got.cpu(), want, what="dh2 in-kernel noise %s" % pool_name, **TRITON_TOL[torch.float32])


# --------------------------------------------------------------------------
# CUDA graphs, opcheck, dispatch, errors
# --------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_dh_ops_are_graph_capturable():
    """No host synchronisation: the fused ops can be captured in a CUDA graph (issue: graphs per batch)."""
    impl_device(CUDA)
    B, C, H, W = 2, 4, 8, 8
    y, i, h0 = (t.cuda() for t in _switches((B, C, H, W), (2, 2, 0), "elu", torch.float32, seed=11))
    z1 = torch.randn(3 * B, C, H, W, device="cuda")
    args = (y, 0.5, i, h0, "elu", (H, W), (3, 4), 0, 0, 1, 3)
    expect = (ops.noisy_unpool_diff_philox(*args), ops.pool_unpool_diff(z1, h0, "elu", 2, 2, 0, impl="compiled"))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        ops.noisy_unpool_diff_philox(*args)  # warm up on the side stream
        torch.cuda.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            got = (ops.noisy_unpool_diff_philox(*args),
                   ops.pool_unpool_diff(z1, h0, "elu", 2, 2, 0, impl="compiled"))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(got, expect):
        assert_exact(a, b)


@pytest.mark.parametrize("impl", impls(COMPILED, CUDA))
@pytest.mark.parametrize("layout_name", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ACTS)
def test_opcheck(impl, act, layout_name):
    device = impl_device(impl)
    code = ACT_CODES[act]
    M, B, C, H, W = 2, 2, 3, 7, 5
    z1 = layout(_values((M * B, C, H, W), torch.float64, seed=20).to(device), layout_name)
    h0 = layout(_values((B, C, H, W), torch.float64, seed=21).to(device), layout_name)
    torch.library.opcheck(torch.ops.dtp_fast.pool_unpool_diff.default, (z1, h0, code, [3, 3], [2, 2], [1, 1]))
    y, i, h = (t.to(device) for t in _switches((B, C, H, W), (3, 2, 1), act, torch.float64, seed=22))
    eps = layout(torch.randn((M * B,) + tuple(y.shape[1:]), generator=gen(23), dtype=torch.float64).to(device),
                 layout_name)
    torch.library.opcheck(torch.ops.dtp_fast.noisy_unpool_diff.default, (y, eps, 0.4, i, h, code, [H, W]))
    torch.library.opcheck(torch.ops.dtp_fast.noisy_unpool_diff_philox.default,
                          (layout(y, layout_name), 0.4, i, h, code, [H, W], 1, 2, 3, 4, 2, 4))


def test_auto_uses_compiled_on_cpu_float(ext, monkeypatch):
    z1 = torch.randn(4, 2, 6, 6, generator=gen(24))
    h0 = torch.randn(2, 2, 6, 6, generator=gen(25))
    y, i, h = _switches((2, 2, 6, 6), (2, 2, 0), "elu", torch.float32)
    eps = torch.randn(4, 2, 3, 3, generator=gen(26))

    def boom(*a, **k):
        raise AssertionError("reference called")

    monkeypatch.setattr(dh_ops, "pool_unpool_diff_ref", boom)
    monkeypatch.setattr(dh_ops, "noisy_unpool_diff_ref", boom)
    a = ops.pool_unpool_diff(z1, h0, "elu", 2)
    b = ops.noisy_unpool_diff(y, eps, 0.4, i, h, "elu", (6, 6))
    monkeypatch.undo()
    # other dtypes fall back to the reference
    ab = ops.pool_unpool_diff(z1.double(), h0.double(), "elu", 2)
    bb = ops.noisy_unpool_diff(y.double(), eps.double(), 0.4, i, h.double(), "elu", (6, 6))
    assert ab.dtype == bb.dtype == torch.float64
    ab = ops.pool_unpool_diff(z1.bfloat16(), h0.bfloat16(), "elu", 2)
    assert ab.dtype == torch.bfloat16 and ab.shape == a.shape
    bb = ops.noisy_unpool_diff(y.bfloat16(), eps.bfloat16(), 0.4, i, h.bfloat16(), "elu", (6, 6))
    assert bb.dtype == torch.bfloat16 and bb.shape == b.shape


def test_errors_compiled(ext):
    op1, op2 = torch.ops.dtp_fast.pool_unpool_diff, torch.ops.dtp_fast.noisy_unpool_diff
    z1, h0 = torch.randn(6, 3, 8, 8), torch.randn(2, 3, 8, 8)
    k = ([2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match=r"batch size of z1 \(6\) must be a multiple of the batch size of h0 \(4\)"):
        op1(z1, torch.randn(4, 3, 8, 8), 1, *k)
    with pytest.raises(RuntimeError, match="z1 must be 4-D"):
        op1(z1[0], h0, 1, *k)
    with pytest.raises(RuntimeError, match="h0 must be 4-D"):
        op1(z1, h0[0], 1, *k)
    with pytest.raises(RuntimeError, match="h0 must be .* with the C, H, W of z1"):
        op1(z1, h0[:, :2], 1, *k)
    with pytest.raises(RuntimeError, match="z1 and h0 must have the same dtype"):
        op1(z1, h0.double(), 1, *k)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op1(z1.half(), h0.half(), 1, *k)
    with pytest.raises(RuntimeError, match="act must be"):
        op1(z1, h0, 9, *k)
    with pytest.raises(RuntimeError, match="at most half"):
        op1(z1, h0, 1, [3, 3], [2, 2], [2, 2])

    y, i, h = _switches((2, 3, 8, 8), (2, 2, 0), "elu", torch.float32)
    eps = torch.randn(6, 3, 4, 4)
    with pytest.raises(RuntimeError, match=r"batch size of eps \(5\) must be a multiple of the batch size of y \(2\)"):
        op2(y, eps[:5], 0.4, i, h, 1, [8, 8])
    with pytest.raises(RuntimeError, match="eps must be 4-D"):
        op2(y, eps[0], 0.4, i, h, 1, [8, 8])
    with pytest.raises(RuntimeError, match="eps must be .* with the C, Hp, Wp of y"):
        op2(y, eps[..., :3], 0.4, i, h, 1, [8, 8])
    with pytest.raises(RuntimeError, match="y and eps must have the same dtype"):
        op2(y, eps.double(), 0.4, i, h, 1, [8, 8])
    with pytest.raises(RuntimeError, match="y and h0 must have the same dtype"):
        op2(y, eps, 0.4, i, h.double(), 1, [8, 8])
    with pytest.raises(RuntimeError, match="int64"):
        op2(y, eps, 0.4, i.int(), h, 1, [8, 8])
    with pytest.raises(RuntimeError, match="shape of y"):
        op2(y, eps, 0.4, i[:, :2], h, 1, [8, 8])
    with pytest.raises(RuntimeError, match=r"h0 must be \(B, C, H, W\)"):
        op2(y, eps, 0.4, i, h[..., :7], 1, [8, 8])
    for bad in (64, -1):
        j = i.clone()
        j[1, 2, 3, 3] = bad
        with pytest.raises(RuntimeError, match="invalid max index %d" % bad):
            op2(y, eps, 0.4, j, h, 1, [8, 8])


@pytest.mark.gpu
def test_cuda_op_argument_errors():
    impl_device(CUDA)
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


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_errors_python(impl):
    z1, h0 = torch.randn(6, 3, 8, 8), torch.randn(2, 3, 8, 8)
    err = (ValueError, RuntimeError)  # the reference: ValueError; compiled: RuntimeError
    with pytest.raises(err, match="must be a multiple of the batch size of h0"):
        ops.pool_unpool_diff(z1, torch.randn(4, 3, 8, 8), "elu", 2, impl=impl)
    with pytest.raises(err, match="z1 and h0 must have the same dtype"):
        ops.pool_unpool_diff(z1, h0.double(), "elu", 2, impl=impl)
    with pytest.raises(err, match="4-D"):
        ops.pool_unpool_diff(z1[0], h0, "elu", 2, impl=impl)
    with pytest.raises(ValueError, match="identity, elu, relu, tanh"):
        ops.pool_unpool_diff(z1, h0, "gelu", 2, impl=impl)
    y, i = F.max_pool2d(h0, 2, 2, return_indices=True)
    eps = torch.randn(6, 3, 4, 4)
    with pytest.raises(err, match="must be a multiple of the batch size of y"):
        ops.noisy_unpool_diff(y, eps[:5], 0.4, i, h0, "elu", (8, 8), impl=impl)
    with pytest.raises(err, match="y and eps must have the same dtype"):
        ops.noisy_unpool_diff(y, eps.double(), 0.4, i, h0, "elu", (8, 8), impl=impl)
    with pytest.raises(ValueError, match="output_size"):
        ops.noisy_unpool_diff(y, eps, 0.4, i, h0, "elu", (8, 8, 8), impl=impl)
    with pytest.raises(ValueError, match="unknown impl"):
        ops.noisy_unpool_diff(y, eps, 0.4, i, h0, "elu", (8, 8), impl="cuda")


def test_torch_impl_without_extension(monkeypatch):
    monkeypatch.setenv("DTP_FAST_DISABLE_EXT", "1")
    _ext._reset_cache()
    try:
        z1, h0 = torch.randn(4, 2, 6, 6, generator=gen(27)), torch.randn(2, 2, 6, 6, generator=gen(28))
        out = ops.pool_unpool_diff(z1, h0, "elu", 2)
        assert_exact(out, ops.pool_unpool_diff_ref(z1, h0, "elu", 2))
        y, i, h = _switches((2, 2, 6, 6), (2, 2, 0), "elu", torch.float32)
        eps = torch.randn(4, 2, 3, 3, generator=gen(29))
        out = ops.noisy_unpool_diff(y, eps, 0.4, i, h, "elu", (6, 6))
        assert_exact(out, ops.noisy_unpool_diff_ref(y, eps, 0.4, i, h, "elu", (6, 6)))
        with pytest.raises(RuntimeError, match="DTP_FAST_DISABLE_EXT"):
            ops.pool_unpool_diff(z1, h0, "elu", 2, impl="compiled")
        with pytest.raises(RuntimeError, match="DTP_FAST_DISABLE_EXT"):
            ops.noisy_unpool_diff_philox(y, 0.4, i, h, "elu", (6, 6), (1, 2), 0, 0, 1, 2)
    finally:
        monkeypatch.delenv("DTP_FAST_DISABLE_EXT")
        _ext._reset_cache()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape,fmt", [((3, 5, 7, 6), "nchw"), ((3, 5, 7, 6), "channels_last"),
                                       ((2, 20, 4, 4), "channels_last"), ((1, 33, 2, 2), "channels_last"),
                                       ((1, 4, 1, 3), "nchw"), ((32, 128, 1, 1), "channels_last"),
                                       ((2, 3, 5, 4), "slice"), ((2, 6, 3, 3), "cl_slice")])
def test_noisy_act_diff_philox_is_noisy_unpool_diff_philox_with_the_identity_as_switches(ext, dtype, act, shape, fmt):
    """The CPU kernel of dh2 at pooled resolution gives the bits of noisy_unpool_diff_philox with the identity as
    switches (the same noise, the same vectorised activation), in y's memory format, on odd shapes, batch 1,
    one pixel and strided views; several copies, iterations and noise samples, rows from an offset."""
    y = layout(torch.randn(shape, dtype=dtype, generator=gen(5)), fmt)
    a0 = activate(y, act)
    args = ((0x1234ABCD, 0x0BADF00D), 7, 3, 2, 6)
    got = ops.noisy_act_diff_philox(y, 0.37, a0, act, *args)
    ident = torch.arange(shape[2] * shape[3]).view(1, 1, *shape[2:]).expand(shape)
    want = ops.noisy_unpool_diff_philox(y.contiguous(memory_format=memory_format_of(got)), 0.37, ident, a0, act,
                                        shape[2:], *args)
    assert_exact(got, want)
    assert got.shape == (6 * shape[0], *shape[1:])
    if fmt == "channels_last" and shape[2] * shape[3] > 1:
        assert got.is_contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.dtp_fast.noisy_act_diff_philox.default,
                          (y, 0.37, a0, ACT_CODES[act], *args[0], *args[1:]))


def test_noisy_act_diff_philox_rejects_bad_input(ext):
    y = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="a0 = act\\(y\\) must have the shape of y"):
        ops.noisy_act_diff_philox(y, 0.4, y[:1], "elu", (1, 2), 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="dtype"):
        ops.noisy_act_diff_philox(y, 0.4, y.double(), "elu", (1, 2), 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="4-D"):
        ops.noisy_act_diff_philox(y[0], 0.4, y[0], "elu", (1, 2), 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="float32 and float64"):
        ops.noisy_act_diff_philox(y.half(), 0.4, y.half(), "elu", (1, 2), 0, 0, 1, 2)
    with pytest.raises(RuntimeError, match="key words"):
        ops.noisy_act_diff_philox(y, 0.4, y, "elu", (-1, 2), 0, 0, 1, 2)


@pytest.mark.parametrize("act", ["elu", "tanh", "relu"])
@pytest.mark.parametrize("fmt", ["nchw", "channels_last"])
def test_noisy_act_diff_philox_is_dh2_at_pooled_resolution(ext, act, fmt):
    """act(y + sigma * eps) - a0 with the noise drawn in the kernel (the identity as switches) equals the
    expression on the materialised counter noise (ATen's activation: within an ulp)."""
    from dtp_fast.noise import CounterNoise, NoiseBlock

    torch.manual_seed(3)
    y = torch.randn(3, 4, 5, 3, dtype=torch.float64)
    y = y.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else y
    a0 = activate(y, act)
    nb = NoiseBlock(CounterNoise(2), 4, 1, "y", 3, 2, 3, 5, tuple(y.shape))
    got = ops.noisy_act_diff_philox(y, 0.3, a0, act, nb.source.key(4, 1, "y"), 5, 3, 3, 6)
    want = (activate(y.repeat(6, 1, 1, 1) + 0.3 * nb.materialize("cpu", torch.float64), act)
            - a0.repeat(6, 1, 1, 1))
    assert_close_within(got, want, rtol=1e-14, atol=1e-15, what="dh2 pooled")
