"""The ``pool`` family: act_pool2d / unpool_act2d, compiled (CPU) against their PyTorch references,
opcheck, autograd, dispatch and errors.

Tests that need the compiled extension skip when it is not built, unless
DTP_FAST_REQUIRE_EXT=1 (set in CI), in which case they fail.
"""
import pytest
import torch
import torch.nn.functional as F

from dtp_fast import _ext, ops
from dtp_fast.ops import pool as pool_ops
from dtp_fast.ops._common import ACT_CODES, activate
from helpers import ACTS, DTYPES, POOLS, elu_saturating, gen, layout, pool_id, shape_id, with_nan_inf

SHAPES = [(1, 3, 7, 5), (2, 5, 11, 13), (2, 2, 32, 32)]


@pytest.fixture
def one_thread():
    """PyTorch's CPU max_unpool2d is only deterministic on duplicates with 1 thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _input(shape, dtype, kind, seed=0):
    g = gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if kind == "negative":
        x = elu_saturating(shape, seed)
    elif kind == "ties":
        x = torch.randint(-2, 3, shape, generator=g).to(torch.float64)  # many exact ties
    return x.to(dtype)


def _noncontig(shape, dtype, name, seed=0):
    if name == "transposed":
        N, C, H, W = shape
        z = torch.randn(N, C, W, H, generator=gen(seed), dtype=dtype).transpose(2, 3)
    else:
        z = layout(torch.randn(shape, generator=gen(seed), dtype=dtype), name)
    assert z.shape == shape and not z.is_contiguous()
    return z


def _check_pool(z, act, k, s, p):
    v, i = ops.act_pool2d(z, act, k, s, p, impl="compiled")
    vr, ir = ops.act_pool2d_ref(z, act, k, s, p)
    assert v.dtype == z.dtype and i.dtype == torch.int64
    torch.testing.assert_close(v, vr, equal_nan=True)  # torch's default float tolerance, as before the move
    assert torch.equal(i, ir), "indices differ at %d positions" % int((i != ir).sum())
    return v, i


# --------------------------------------------------------------------------
# act_pool2d
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["randn", "negative", "ties"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_pool2d_matches_ref(ext, dtype, act, pool, shape, kind):
    _check_pool(_input(shape, dtype, kind), act, *pool)


@pytest.mark.parametrize("kind", ["randn", "negative"])
@pytest.mark.parametrize("layout", ["slice", "transposed", "channels_last"])
@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_pool2d_noncontiguous(ext, dtype, act, pool, layout, kind):
    z = _noncontig((2, 3, 9, 7), dtype, layout)
    if kind == "negative":  # same layout, values as in _input(kind="negative")
        z.copy_(_input(z.shape, dtype, "negative", seed=1))
    _check_pool(z, act, *pool)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_act_pool2d_elu_saturation_ties(ext, dtype):
    # All of z distinct, all of ELU(z) == -1: the first window position wins.
    z = -60 - torch.rand(1, 2, 6, 6, generator=gen(1), dtype=torch.float64).to(dtype)
    v, i = _check_pool(z, "elu", 2, 2, 0)
    assert torch.all(v == -1)
    first = torch.tensor([[0, 2, 4], [12, 14, 16], [24, 26, 28]])
    assert torch.equal(i[0, 0], first) and torch.equal(i[0, 1], first)
    # without the activation the true maxima win instead
    _, i_id = _check_pool(z, "identity", 2, 2, 0)
    assert not torch.equal(i_id, i)


@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
def test_act_pool2d_nan_and_inf(ext, pool):
    z = with_nan_inf(torch.randn(2, 3, 8, 7, generator=gen(2)), inf_row=1)
    for act in ACTS:
        _check_pool(z, act, *pool)


def test_act_pool2d_stride_defaults_and_pairs(ext):
    z = torch.randn(2, 3, 12, 10, generator=gen(3))
    v, i = ops.act_pool2d(z, "elu", 2)
    vr, ir = F.max_pool2d(F.elu(z), 2, return_indices=True)
    torch.testing.assert_close(v, vr)
    assert torch.equal(i, ir)
    _check_pool(z, "relu", (3, 2), (2, 1), (1, 0))


def test_act_pool2d_empty_batch(ext):
    v, i = ops.act_pool2d(torch.randn(0, 3, 8, 8), "elu", 2, 2, 0, impl="compiled")
    assert v.shape == (0, 3, 4, 4) and i.shape == (0, 3, 4, 4)


# --------------------------------------------------------------------------
# unpool_act2d
# --------------------------------------------------------------------------

def _switches(shape, pool, seed=0):
    """Indices of a real pool, and a y of fresh values (so duplicates differ)."""
    z = _input(shape, torch.float64, "randn", seed)
    v, i = ops.act_pool2d_ref(z, "elu", *pool)
    return i, v.shape


def _check_unpool(y, i, act, size, aten=True):
    out = ops.unpool_act2d(y, i, act, size, impl="compiled")
    ref = ops.unpool_act2d_ref(y, i, act, size)
    assert out.shape == y.shape[:2] + tuple(size) and out.dtype == y.dtype
    torch.testing.assert_close(out, ref)
    if aten:  # the reference is PyTorch's (single-threaded) max_unpool2d
        torch.testing.assert_close(ref, activate(torch.ops.aten.max_unpool2d(y, i, list(size)), act))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("pool", POOLS, ids=pool_id)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unpool_act2d_matches_ref(ext, one_thread, dtype, act, pool, shape):
    i, pshape = _switches(shape, pool)
    y = torch.randn(pshape, generator=gen(7), dtype=dtype) * 2
    _check_unpool(y, i, act, shape[2:])


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unpool_act2d_duplicates_last_write_wins(ext, one_thread, dtype, act):
    # Overlapping windows: neighbouring pooled positions share an input index.
    shape = (2, 3, 11, 13)
    i, pshape = _switches(shape, (3, 2, 1), seed=5)
    flat = i.flatten(2)
    assert any(flat[n, c].unique().numel() < flat.shape[2] for n in range(2) for c in range(3))
    y = torch.randn(pshape, generator=gen(8), dtype=dtype)
    out = _check_unpool(y, i, act, shape[2:])
    # explicit: the last pooled position (row-major) holding an index wins
    yf = y.flatten(2)
    expect = torch.zeros(2, 3, 11 * 13, dtype=dtype)
    for n in range(2):
        for c in range(3):
            for p in range(flat.shape[2]):
                expect[n, c, flat[n, c, p]] = yf[n, c, p]
    torch.testing.assert_close(out, activate(expect.view(2, 3, 11, 13), act))
    # the smallest case
    y1 = torch.tensor([[[[1.0, 2.0, 3.0]]]], dtype=dtype)
    i1 = torch.zeros(1, 1, 1, 3, dtype=torch.int64)
    out1 = _check_unpool(y1, i1, act, (1, 3))
    torch.testing.assert_close(out1, activate(torch.tensor([[[[3.0, 0.0, 0.0]]]], dtype=dtype), act))


@pytest.mark.parametrize("act", ACTS)
def test_unpool_act2d_noncontiguous(ext, one_thread, act):
    shape = (2, 4, 11, 13)
    i, pshape = _switches(shape, (3, 2, 1), seed=3)
    N, C, Hp, Wp = pshape
    y = torch.randn(N, C, Wp, Hp, generator=gen(9)).transpose(2, 3)
    i_big = torch.zeros(N, C, Hp, 2 * Wp, dtype=torch.int64)
    i_big[..., ::2] = i
    i_nc = i_big[..., ::2]
    assert not y.is_contiguous() and not i_nc.is_contiguous()
    _check_unpool(y, i_nc, act, shape[2:])
    _check_unpool(y.contiguous(memory_format=torch.channels_last), i, act, shape[2:])


def test_unpool_act2d_output_size_forms(ext):
    i, pshape = _switches((1, 2, 8, 6), (2, 2, 0))
    y = torch.randn(pshape, generator=gen(4))
    a = ops.unpool_act2d(y, i, "elu", (8, 6))
    torch.testing.assert_close(a, ops.unpool_act2d(y, i, "elu", torch.Size([1, 2, 8, 6])))
    torch.testing.assert_close(a, ops.unpool_act2d(y, i, "elu", [8, 6], impl="torch"))


def test_pool_then_unpool_roundtrip(ext):
    z = torch.rand(2, 3, 16, 16, generator=gen(6)) + 0.1  # positive: zeros never win
    v, i = ops.act_pool2d(z, "identity", 2, 2, 0)
    back = ops.unpool_act2d(v, i, "identity", (16, 16))
    assert torch.equal(F.max_pool2d(back, 2, 2), v)


# --------------------------------------------------------------------------
# opcheck and autograd
# --------------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
def test_opcheck(ext, act):
    code = ACT_CODES[act]
    z = torch.randn(2, 3, 7, 5, generator=gen(10), dtype=torch.float64)
    v, i = torch.ops.dtp_fast.act_pool2d(z, code, [3, 3], [2, 2], [1, 1])
    y = torch.randn(v.shape, generator=gen(11), dtype=torch.float64)
    for rg in (False, True) if act == "elu" else (True,):
        torch.library.opcheck(
            torch.ops.dtp_fast.act_pool2d.default,
            (z.clone().requires_grad_(rg), code, [3, 3], [2, 2], [1, 1]),
        )
        torch.library.opcheck(
            torch.ops.dtp_fast.unpool_act2d.default, (y.clone().requires_grad_(rg), i, code, [7, 5])
        )


@pytest.mark.parametrize("act", ACTS)
def test_autograd(ext, act):
    z = torch.randn(2, 2, 7, 6, generator=gen(12), dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: ops.act_pool2d(t, act, 3, 2, 1, impl="compiled")[0], (z,))
    v, i = ops.act_pool2d(z.detach(), act, 3, 2, 1)
    y = torch.randn(v.shape, generator=gen(13), dtype=torch.float64, requires_grad=True)
    # duplicates in i: only the winning (last) position gets a gradient
    torch.autograd.gradcheck(lambda t: ops.unpool_act2d(t, i, act, (7, 6), impl="compiled"), (y,))
    gv = torch.randn(v.shape, generator=gen(14), dtype=torch.float64)
    gz = torch.randn(z.shape, generator=gen(15), dtype=torch.float64)
    for impl_grads in (
        [torch.autograd.grad(ops.act_pool2d(z, act, 3, 2, 1, impl=m)[0], z, gv)[0] for m in ("compiled", "torch")],
        [torch.autograd.grad(ops.unpool_act2d(y, i, act, (7, 6), impl=m), y, gz)[0] for m in ("compiled", "torch")],
    ):
        torch.testing.assert_close(*impl_grads)


# --------------------------------------------------------------------------
# dispatch and errors
# --------------------------------------------------------------------------

def test_auto_uses_compiled_on_cpu_float(ext, monkeypatch):
    z = torch.randn(1, 2, 6, 6, generator=gen(16))

    def boom(*a, **k):
        raise AssertionError("reference called")

    monkeypatch.setattr(pool_ops, "act_pool2d_ref", boom)
    v, i = ops.act_pool2d(z, "elu", 2, 2, 0)
    monkeypatch.setattr(pool_ops, "unpool_act2d_ref", boom)
    ops.unpool_act2d(v, i, "elu", (6, 6))
    monkeypatch.undo()
    # other dtypes fall back to the reference
    vb, ib = ops.act_pool2d(z.to(torch.bfloat16), "elu", 2, 2, 0)
    assert vb.dtype == torch.bfloat16 and torch.equal(ib, i)


def test_errors_compiled(ext):
    op_pool, op_unpool = torch.ops.dtp_fast.act_pool2d, torch.ops.dtp_fast.unpool_act2d
    z = torch.randn(2, 3, 8, 8)
    with pytest.raises(RuntimeError, match="must be 4-D"):
        op_pool(z[0], 1, [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="float32 and float64"):
        op_pool(z.to(torch.int32), 1, [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="at most half"):
        op_pool(z, 1, [3, 3], [2, 2], [2, 2])
    with pytest.raises(RuntimeError, match="stride must be positive"):
        op_pool(z, 1, [2, 2], [0, 2], [0, 0])
    with pytest.raises(RuntimeError, match="too small"):
        op_pool(z, 1, [9, 9], [1, 1], [0, 0])
    with pytest.raises(RuntimeError, match="act must be"):
        op_pool(z, 7, [2, 2], [2, 2], [0, 0])
    v, i = op_pool(z, 1, [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="must be 4-D"):
        op_unpool(v[0], i[0], 1, [8, 8])
    with pytest.raises(RuntimeError, match="int64"):
        op_unpool(v, i.int(), 1, [8, 8])
    with pytest.raises(RuntimeError, match="shape of y"):
        op_unpool(v, i[:, :2], 1, [8, 8])
    for bad in (64, -1):
        j = i.clone()
        j[1, 2, 3, 3] = bad
        with pytest.raises(RuntimeError, match="invalid max index %d" % bad):
            op_unpool(v, j, 1, [8, 8])
        with pytest.raises(RuntimeError, match="invalid max index %d" % bad):
            ops.unpool_act2d(v, j, "elu", (8, 8), impl="torch")
    with pytest.raises(RuntimeError, match="invalid max index"):
        op_unpool(v, i, 1, [4, 4])  # indices of an 8x8 plane, output 4x4


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_errors_python(impl):
    z = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="identity, elu, relu, tanh"):
        ops.act_pool2d(z, "gelu", 2, 2, 0, impl=impl)
    with pytest.raises(ValueError, match="identity, elu, relu, tanh"):
        ops.act_pool2d(z, 1, 2, 2, 0, impl=impl)
    v, i = ops.act_pool2d(z, "elu", 2, 2, 0, impl=impl)
    with pytest.raises(ValueError, match="identity, elu, relu, tanh"):
        ops.unpool_act2d(v, i, "ELU", (8, 8), impl=impl)
    with pytest.raises(ValueError, match="kernel_size"):
        ops.act_pool2d(z, "elu", (2, 2, 2), impl=impl)
    with pytest.raises(ValueError, match="output_size"):
        ops.unpool_act2d(v, i, "elu", (8, 8, 8), impl=impl)
    with pytest.raises(ValueError, match="unknown impl"):
        ops.act_pool2d(z, "elu", 2, impl="cuda")


def test_disable_env_uses_torch_path(monkeypatch):
    monkeypatch.setenv("DTP_FAST_DISABLE_EXT", "1")
    _ext._reset_cache()
    try:
        assert _ext.available() is False
        assert "DTP_FAST_DISABLE_EXT" in _ext.load_error()
        assert _ext.build_info() is None
        z = torch.randn(2, 3, 9, 7, generator=gen(17))
        for impl in ("torch", "auto"):
            v, i = ops.act_pool2d(z, "elu", 3, 2, 1, impl=impl)
            vr, ir = F.max_pool2d(F.elu(z), 3, 2, 1, return_indices=True)
            torch.testing.assert_close(v, vr)
            assert torch.equal(i, ir)
            out = ops.unpool_act2d(v, i, "elu", (9, 7), impl=impl)
            assert out.shape == z.shape
        with pytest.raises(RuntimeError, match="DTP_FAST_DISABLE_EXT"):
            ops.act_pool2d(z, "elu", 3, 2, 1, impl="compiled")
    finally:
        monkeypatch.delenv("DTP_FAST_DISABLE_EXT")
        _ext._reset_cache()
