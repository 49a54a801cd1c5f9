"""The L-DRL engine ops pool_unpool_diff / noisy_unpool_diff against their references.

Compiled results are compared bit for bit (assert_close with rtol=0, atol=0,
NaN equal to NaN) with the references, with one exception that ATen makes:
its CPU ELU computes the scalar remainder of each thread's chunk (the last
n % (2 * vector width) elements) with std::expm1 instead of the vectorised
Sleef expm1 of all other elements, and the two differ by one ulp on some
negative inputs. The kernels use the vectorised ELU for every element. So the
compiled ops are compared bit for bit with an oracle (the reference with the
activation after the unpooling applied through ATen's vectorised path for
every element), and with the literal reference everywhere except where the
reference itself differs from that oracle (then by at most an ulp).

Tests that need the compiled extension skip when it is not built, unless
DTP_FAST_REQUIRE_EXT=1, in which case they fail.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from dtp_fast import _ext, ops

DTYPES = [torch.float32, torch.float64]
ACTS = list(ops.ACTIVATIONS)
POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1)]  # kernel, stride, padding
SHAPES = [(1, 3, 7, 5), (2, 5, 11, 13)]  # B, C, H, W
# mixed: z1 / eps channels_last, the others NCHW; slice: NCHW-like views with
# gaps; cl_slice: channels_last-like views with a channel step of 2.
LAYOUTS = ["nchw", "channels_last", "mixed", "slice", "cl_slice"]
_pool_id = lambda p: "k%ds%dp%d" % p  # noqa: E731
_shape_id = lambda s: "x".join(map(str, s))  # noqa: E731


def _require_ext():
    if _ext.available() and ops._has_compiled_op("pool_unpool_diff"):
        return
    reason = "compiled dtp_fast._C unavailable: %s" % (_ext.load_error() or "it predates the L-DRL ops")
    if os.environ.get("DTP_FAST_REQUIRE_EXT", "") == "1":
        pytest.fail(reason + " (DTP_FAST_REQUIRE_EXT=1)")
    pytest.skip(reason)


@pytest.fixture
def ext():
    _require_ext()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _values(shape, dtype, kind="randn", seed=0):
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "saturated":
        # ELU saturates to exactly -1 around -30 (ties that z1 does not have);
        # a quarter near the float32 rounding edge (-17), a quarter at -45
        # (where float64 saturates too), a few positives.
        x = x - 30
        flat = x.view(-1)
        n = flat.numel()
        flat[: n // 4] += 13
        flat[n // 4 : n // 2] -= 15
        flat[::17] += 31
    else:
        x = 2 * x
    return x.to(dtype)


def _layout(x, layout, which):
    """x in the layout asked for; `which` tells the tensors of one call apart
    ("main": z1 / eps, "other": h0, y, indices)."""
    if layout == "channels_last" or (layout == "mixed" and which == "main"):
        out = x.contiguous(memory_format=torch.channels_last)
        if x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
            assert not out.is_contiguous()
        return out
    if layout == "cl_slice":
        N, C, H, W = x.shape
        big = torch.zeros(N, 2 * C, H + 1, W, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
        view = big[:, ::2, 1:, :]
        view.copy_(x)
        assert view.stride(1) == 2 and not view.is_contiguous(memory_format=torch.channels_last)
        return view
    if layout == "slice":
        N, C, H, W = x.shape
        big = torch.zeros(N, C + 1, 2 * H, W + 3, dtype=x.dtype)
        view = big[:, 1:, ::2, 2 : W + 2]
        view.copy_(x)
        assert not view.is_contiguous()
        return view
    return x.contiguous()


def _assert_same(actual, expected):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _act_vectorised(x, act):
    """ATen's activation with its vectorised kernel for every element: pieces
    of at most 8192 elements (serial in ATen), zero-padded to a multiple of 64."""
    flat = x.reshape(-1)
    n = flat.numel()
    flat = torch.cat([flat, flat.new_zeros((-n) % 64)])
    pieces = [ops._activate(flat[i : i + 8192].clone(), act) for i in range(0, flat.numel(), 8192)]
    return torch.cat(pieces)[:n].view(x.shape)


def _oracle_pool(z1, h0, act, pool):
    M = z1.shape[0] // h0.shape[0]
    y1, i1 = ops.act_pool2d_ref(z1, act, *pool)  # F.elu(z1) as the kernel
    u = ops.unpool2d_last_wins(y1, i1, z1.shape[2:])
    return _act_vectorised(u, act) - h0.repeat(M, 1, 1, 1)


def _oracle_noisy(y, eps, sigma, indices, h0, act, size):
    M = eps.shape[0] // y.shape[0]
    noisy = y.repeat(M, 1, 1, 1) + sigma * eps
    u = ops.unpool2d_last_wins(noisy, indices.repeat(M, 1, 1, 1), size)
    return _act_vectorised(u, act) - h0.repeat(M, 1, 1, 1)


def _check_against(out, ref, oracle, act):
    """out == oracle bit for bit; out == ref except where ATen's ELU of the
    reference took its scalar remainder path (then within an ulp)."""
    _assert_same(out, oracle)
    differ = ~((out == ref) | (out.isnan() & ref.isnan()))
    if act != "elu":
        assert not differ.any(), "%d positions differ from the reference" % int(differ.sum())
        return
    ref_own = ~((ref == oracle) | (ref.isnan() & oracle.isnan()))
    assert not (differ & ~ref_own).any(), "differences outside ATen's ELU remainder positions"
    assert int(differ.sum()) <= 64
    torch.testing.assert_close(out, ref, equal_nan=True)


def _run_pool(z1, h0, act, pool, expect_format):
    out = ops.pool_unpool_diff(z1, h0, act, *pool, impl="compiled")
    ref = ops.pool_unpool_diff_ref(z1, h0, act, *pool)
    _check_against(out, ref, _oracle_pool(z1, h0, act, pool), act)
    assert out.is_contiguous(memory_format=expect_format)
    assert ref.stride() == out.stride()
    return out


def _switches(shape, pool, act, dtype, seed=0):
    """Clean pooled values y, switches I0 and h0 = unpool_act2d(y, I0)."""
    z = _values(shape, dtype, "randn", seed)
    y, i = ops.act_pool2d_ref(z, act, *pool)
    return y, i, ops.unpool_act2d_ref(y, i, act, shape[2:])


def _run_noisy(y, eps, sigma, i, h0, act, size, expect_format):
    out = ops.noisy_unpool_diff(y, eps, sigma, i, h0, act, size, impl="compiled")
    ref = ops.noisy_unpool_diff_ref(y, eps, sigma, i, h0, act, size)
    _check_against(out, ref, _oracle_noisy(y, eps, sigma, i, h0, act, size), act)
    assert out.is_contiguous(memory_format=expect_format)
    assert ref.stride() == out.stride()
    return out


def _format(layout):
    cl = ("channels_last", "mixed", "cl_slice")
    return torch.channels_last if layout in cl else torch.contiguous_format


# --------------------------------------------------------------------------
# pool_unpool_diff
# --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_unpool_diff_matches_ref(ext, dtype, act, pool, shape, M, layout):
    B, C, H, W = shape
    z1 = _layout(_values((M * B, C, H, W), dtype, seed=1), layout, "main")
    h0 = _layout(_values(shape, dtype, seed=2), layout, "other")
    _run_pool(z1, h0, act, pool, _format(layout))


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "slice"])
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_unpool_diff_saturated_elu_ties(ext, dtype, pool, layout):
    M, B, C, H, W = 3, 2, 5, 11, 13
    z1 = _layout(_values((M * B, C, H, W), dtype, "saturated", seed=3), layout, "main")
    h0 = _layout(_values((B, C, H, W), dtype, seed=4), layout, "other")
    for act in ACTS:
        _run_pool(z1, h0, act, pool, _format(layout))
    # all of z1 distinct, all of ELU(z1) == -1: the first window position wins
    z = -60 - torch.rand(2, 2, 6, 6, generator=_gen(5), dtype=torch.float64).to(dtype)
    h = torch.zeros(1, 2, 6, 6, dtype=dtype)
    out = _run_pool(_layout(z, layout, "main"), _layout(h, layout, "other"), "elu", (2, 2, 0), _format(layout))
    elu_m1 = _act_vectorised(torch.full((1,), -1.0, dtype=dtype), "elu")
    expect = torch.zeros(2, 2, 6, 6, dtype=dtype)
    expect[..., ::2, ::2] = elu_m1
    _assert_same(out, expect)


@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
def test_pool_unpool_diff_nan_inf(ext, pool):
    z1 = torch.randn(4, 3, 8, 7, generator=_gen(6))
    z1[0, 0, 1, 1] = float("nan")
    z1[0, 1, 2:5, 2:6] = float("nan")
    z1[1, 0, :4, :4] = float("-inf")
    z1[1, 2] = float("-inf")
    z1[3, 1, 3, 3] = float("inf")
    h0 = torch.randn(2, 3, 8, 7, generator=_gen(7))
    for layout in ("nchw", "channels_last"):
        for act in ACTS:
            _run_pool(_layout(z1, layout, "main"), _layout(h0, layout, "other"), act, pool, _format(layout))


@pytest.mark.parametrize("act", ACTS)
def test_pool_unpool_diff_many_samples(ext, act):
    # Several parallel tasks and sample groups; ATen activation calls of more
    # than one chunk (mostly negative values).
    M, B, C, H, W = 9, 4, 16, 16, 16
    for layout in ("nchw", "channels_last"):
        z1 = _layout(_values((M * B, C, H, W), torch.float32, seed=8) - 3, layout, "main")
        h0 = _layout(_values((B, C, H, W), torch.float32, seed=9), layout, "other")
        for pool in ((2, 2, 0), (3, 2, 1)):
            _run_pool(z1, h0, act, pool, _format(layout))


def test_pool_unpool_diff_definition(ext):
    # Directly from the formula of ALGORITHM.md: h(y1; I1) - h(y; I0).
    M, B, C, H, W = 2, 3, 4, 8, 6
    z = torch.randn(B, C, H, W, generator=_gen(10), dtype=torch.float64)
    z1 = z.repeat(M, 1, 1, 1) + 0.3 * torch.randn(M * B, C, H, W, generator=_gen(11), dtype=torch.float64)
    y, i0 = F.max_pool2d(F.elu(z), 2, 2, return_indices=True)
    h0 = F.elu(F.max_unpool2d(y, i0, 2, 2, output_size=(H, W)))
    y1, i1 = F.max_pool2d(F.elu(z1), 2, 2, return_indices=True)
    dh1 = F.elu(F.max_unpool2d(y1, i1, 2, 2, output_size=(H, W))) - h0.repeat(M, 1, 1, 1)
    out = ops.pool_unpool_diff(z1, h0, "elu", 2)
    torch.testing.assert_close(out, dh1, rtol=0, atol=1e-15)
    # uncovered border (7 rows for a kernel of 2) and stride defaults
    out = ops.pool_unpool_diff(z1[..., :7, :], h0[..., :7, :], "elu", 2, impl="compiled")
    torch.testing.assert_close(out, ops.pool_unpool_diff_ref(z1[..., :7, :], h0[..., :7, :], "elu", 2))
    assert torch.equal(out[..., 6, :], -h0[..., 6, :].repeat(M, 1, 1))


def test_pool_unpool_diff_empty(ext):
    out = ops.pool_unpool_diff(torch.randn(0, 3, 8, 8), torch.randn(2, 3, 8, 8), "elu", 2, impl="compiled")
    assert out.shape == (0, 3, 8, 8)


# --------------------------------------------------------------------------
# noisy_unpool_diff
# --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
@pytest.mark.parametrize("pool", POOLS, ids=_pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_matches_ref(ext, dtype, act, pool, shape, M, layout):
    B, C, H, W = shape
    y, i, h0 = _switches(shape, pool, act, dtype, seed=12)
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=_gen(13), dtype=dtype)
    y, i, h0 = (_layout(t, layout, "other") for t in (y, i, h0))
    eps = _layout(eps, layout, "main")
    # 0.4 and 0.1 are not float32 numbers: sigma is rounded as PyTorch does
    for sigma in (0.4, 0.1):
        _run_noisy(y, eps, sigma, i, h0, act, (H, W), _format(layout))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_noisy_unpool_diff_duplicates_last_write_wins(ext, dtype, act):
    # Overlapping windows: neighbouring pooled positions share a switch, and
    # the noise gives them different values.
    M, B, C, H, W = 3, 2, 3, 11, 13
    y, i, h0 = _switches((B, C, H, W), (3, 2, 1), act, dtype, seed=14)
    flat = i.flatten(2)
    assert any(flat[b, c].unique().numel() < flat.shape[2] for b in range(B) for c in range(C))
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=_gen(15), dtype=dtype)
    for layout in ("nchw", "channels_last"):
        out = _run_noisy(_layout(y, layout, "other"), _layout(eps, layout, "main"), 0.5,
                         _layout(i, layout, "other"), _layout(h0, layout, "other"), act, (H, W), _format(layout))
        # explicit: the last pooled position (row-major) holding an index wins
        noisy = (y.repeat(M, 1, 1, 1) + 0.5 * eps).flatten(2)
        expect = torch.zeros(M * B, C, H * W, dtype=dtype)
        for n in range(M * B):
            for c in range(C):
                for p in range(flat.shape[2]):
                    expect[n, c, flat[n % B, c, p]] = noisy[n, c, p]
        expect = _act_vectorised(expect.view(M * B, C, H, W), act) - h0.repeat(M, 1, 1, 1)
        _assert_same(out, expect)
    # the smallest case: three positions, one switch
    y1 = torch.tensor([[[[1.0, -2.0, 3.0]]]], dtype=dtype)
    e1 = torch.tensor([[[[0.5, 0.5, -9.0]]], [[[1.0, 1.0, 1.0]]]], dtype=dtype)
    i1 = torch.zeros(1, 1, 1, 3, dtype=torch.int64)
    h1 = torch.zeros(1, 1, 1, 3, dtype=dtype)
    out = ops.noisy_unpool_diff(y1, e1, 1.0, i1, h1, act, (1, 3), impl="compiled")
    expect = ops._activate(torch.tensor([[[[-6.0, 0, 0]]], [[[4.0, 0, 0]]]], dtype=dtype), act)
    _assert_same(out, expect)


@pytest.mark.parametrize("act", ACTS)
def test_noisy_unpool_diff_many_samples(ext, act):
    M, B, C, H, W = 9, 4, 16, 16, 16
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), act, torch.float32, seed=16)
    eps = torch.randn((M * B,) + tuple(y.shape[1:]), generator=_gen(17))
    for layout in ("nchw", "channels_last"):
        _run_noisy(_layout(y, layout, "other"), _layout(eps, layout, "main"), 3.0,
                   _layout(i, layout, "other"), _layout(h0, layout, "other"), act, (H, W), _format(layout))


def test_noisy_unpool_diff_definition(ext):
    # h(y + dy; I0) - h(y; I0) with F.max_unpool2d (no duplicates with (2, 2)).
    M, B, C, H, W = 2, 3, 4, 8, 6
    y, i, h0 = _switches((B, C, H, W), (2, 2, 0), "elu", torch.float64, seed=18)
    eps = torch.randn(M * B, C, H // 2, W // 2, generator=_gen(19), dtype=torch.float64)
    dh2 = F.elu(F.max_unpool2d(y.repeat(M, 1, 1, 1) + 0.2 * eps, i.repeat(M, 1, 1, 1), 2, 2,
                               output_size=(H, W))) - h0.repeat(M, 1, 1, 1)
    out = ops.noisy_unpool_diff(y, eps, 0.2, i, h0, "elu", (H, W))
    torch.testing.assert_close(out, dh2, rtol=0, atol=1e-15)
    # output_size as a full shape
    torch.testing.assert_close(out, ops.noisy_unpool_diff(y, eps, 0.2, i, h0, "elu", torch.Size([B, C, H, W])))


def test_noisy_unpool_diff_empty(ext):
    y, i, h0 = _switches((2, 3, 8, 8), (2, 2, 0), "elu", torch.float32)
    out = ops.noisy_unpool_diff(y, torch.randn(0, 3, 4, 4), 0.4, i, h0, "elu", (8, 8), impl="compiled")
    assert out.shape == (0, 3, 8, 8)


# --------------------------------------------------------------------------
# opcheck, dispatch, errors
# --------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", ACTS)
def test_opcheck(ext, act, layout):
    code = ops._ACT_CODES[act]
    M, B, C, H, W = 2, 2, 3, 7, 5
    z1 = _layout(_values((M * B, C, H, W), torch.float64, seed=20), layout, "main")
    h0 = _layout(_values((B, C, H, W), torch.float64, seed=21), layout, "other")
    torch.library.opcheck(torch.ops.dtp_fast.pool_unpool_diff.default, (z1, h0, code, [3, 3], [2, 2], [1, 1]))
    y, i, h = _switches((B, C, H, W), (3, 2, 1), act, torch.float64, seed=22)
    eps = _layout(torch.randn((M * B,) + tuple(y.shape[1:]), generator=_gen(23), dtype=torch.float64), layout, "main")
    torch.library.opcheck(torch.ops.dtp_fast.noisy_unpool_diff.default, (y, eps, 0.4, i, h, code, [H, W]))


def test_auto_uses_compiled_on_cpu_float(ext, monkeypatch):
    z1 = torch.randn(4, 2, 6, 6, generator=_gen(24))
    h0 = torch.randn(2, 2, 6, 6, generator=_gen(25))
    y, i, h = _switches((2, 2, 6, 6), (2, 2, 0), "elu", torch.float32)
    eps = torch.randn(4, 2, 3, 3, generator=_gen(26))

    def boom(*a, **k):
        raise AssertionError("reference called")

    monkeypatch.setattr(ops, "pool_unpool_diff_ref", boom)
    monkeypatch.setattr(ops, "noisy_unpool_diff_ref", boom)
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
        z1, h0 = torch.randn(4, 2, 6, 6, generator=_gen(27)), torch.randn(2, 2, 6, 6, generator=_gen(28))
        out = ops.pool_unpool_diff(z1, h0, "elu", 2)
        _assert_same(out, ops.pool_unpool_diff_ref(z1, h0, "elu", 2))
        y, i, h = _switches((2, 2, 6, 6), (2, 2, 0), "elu", torch.float32)
        eps = torch.randn(4, 2, 3, 3, generator=_gen(29))
        out = ops.noisy_unpool_diff(y, eps, 0.4, i, h, "elu", (6, 6))
        _assert_same(out, ops.noisy_unpool_diff_ref(y, eps, 0.4, i, h, "elu", (6, 6)))
        with pytest.raises(RuntimeError, match="DTP_FAST_DISABLE_EXT"):
            ops.pool_unpool_diff(z1, h0, "elu", 2, impl="compiled")
    finally:
        monkeypatch.delenv("DTP_FAST_DISABLE_EXT")
        _ext._reset_cache()
