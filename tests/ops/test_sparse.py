"""The ``sparse`` family: switch_lists, pooled_conv_t and pooled_wgrad (the chain of a pooled conv feedback layer
from dh2 at pooled resolution) against pooled_chain_ref (unpool, then the engine's dense ops); the CPU kernels
(with pooled_chain_) and, at the end, the Triton kernels (dtp_fast.ops.triton.sparse: pools whose windows tile the
plane; the interpreter on a CPU).

Tolerances: float64 within rtol 1e-10 / atol 1e-12 of the reference, float32 within rtol 1e-4 / atol 1e-4 on
values of size about 1 to 100 (the sums run in the order of the lists, not in the dense kernels' order).
Cases: 2x2 and overlapping (3/2/1, (3, 2)/(2, 2)/(1, 0)) pools, odd planes, batch 1, several noise copies,
3x3 and 5x5 (more taps than one register block) kernels, padding 0 to 2, dilation 2, output channel counts
that are not a multiple of the vector width, more pooled windows than one span of the weight gradient, every
input in other layouts.
"""
import pytest
import torch
import torch.nn.functional as F

from dtp_fast import ops
from helpers import COMPILED, DTYPES, TRITON, assert_close_within, assert_exact, gen, impl_device, layout

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-4)}

# (B, C, Cx, (H, W), pool, kernel, padding, dilation, copies)
CASES = {
    "2x2-3x3": (2, 3, 5, (7, 9), ((2, 2), (2, 2), (0, 0)), (3, 3), (1, 1), (1, 1), 1),
    "lenet-3/2/1-5x5": (1, 4, 17, (8, 8), ((3, 3), (2, 2), (1, 1)), (5, 5), (2, 2), (1, 1), 2),
    "dilated-3x1": (3, 6, 33, (6, 10), ((2, 2), (2, 2), (0, 0)), (3, 1), (2, 0), (2, 1), 1),
    "rect-pool-no-pad": (2, 5, 9, (11, 7), ((3, 2), (2, 2), (1, 0)), (3, 3), (0, 0), (1, 1), 1),
    "batch1-1x1-plane": (1, 7, 16, (2, 2), ((2, 2), (2, 2), (0, 0)), (3, 3), (1, 1), (1, 1), 3),
    "wide": (2, 16, 40, (8, 8), ((2, 2), (2, 2), (0, 0)), (3, 3), (1, 1), (1, 1), 1),
    "very-wide": (2, 5, 130, (6, 6), ((2, 2), (2, 2), (0, 0)), (3, 3), (1, 1), (1, 1), 1),  # 8 vectors of co at once
    # more (row, window) pairs than the weight gradient's spans of 64, which end inside rows
    "many-spans": (3, 4, 7, (14, 18), ((2, 2), (2, 2), (0, 0)), (3, 3), (1, 1), (1, 1), 2),
    "many-spans-3/2/1": (2, 3, 5, (19, 17), ((3, 3), (2, 2), (1, 1)), (3, 3), (1, 1), (1, 1), 2),
}


def _case(name, dtype, seed=3):
    B, C, Cx, (H, W), pool, kernel, padding, dilation, copies = CASES[name]
    g = gen(seed)
    z = torch.randn(B, C, H, W, generator=g, dtype=dtype)
    _, indices = F.max_pool2d(z, *pool, return_indices=True)
    values = torch.randn(copies * B, *indices.shape[1:], generator=g, dtype=dtype)
    weight = torch.randn(C, Cx, *kernel, generator=g, dtype=dtype)
    return values, indices, pool, (H, W), weight, padding, dilation, copies


def _lists(indices, hw, weight, padding, dilation, copies, out_hw):
    return ops.switch_lists(indices, hw, weight.shape, padding, dilation, out_hw, copies, weight.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
def test_pooled_chain_equals_reference(name, dtype):
    impl_device(COMPILED)
    values, indices, pool, hw, weight, padding, dilation, copies = _case(name, dtype)
    want_dr, want_grad = ops.pooled_chain_ref(values, indices, pool, hw, weight, padding, dilation)
    lists = _lists(indices, hw, weight, padding, dilation, copies, want_dr.shape[2:])
    dr_pad = ops.pooled_conv_t(values, lists, weight)
    assert_close_within(ops.interior(dr_pad, lists), want_dr, what=f"dr_y {name}", **TOL[dtype])
    # the buffer is zero outside dr_y (pooled_wgrad reads the taps that fall there)
    outside = dr_pad.clone()
    (ph, pw), (Hx, Wx) = lists.padding, lists.output_size
    outside[:, ph:ph + Hx, pw:pw + Wx, :lists.channels_out] = 0
    assert not outside.any()
    grad = ops.pooled_wgrad(values, lists, dr_pad)
    assert grad.shape == weight.shape
    assert_close_within(grad, want_grad, what=f"wgrad {name}", **TOL[dtype])


@pytest.mark.parametrize("which", ["values", "weight", "indices"])
@pytest.mark.parametrize("name", ["2x2-3x3", "lenet-3/2/1-5x5"])
def test_other_layouts_give_the_same_results(name, which):
    impl_device(COMPILED)
    values, indices, pool, hw, weight, padding, dilation, copies = _case(name, torch.float64)
    want_dr, want_grad = ops.pooled_chain_ref(values, indices, pool, hw, weight, padding, dilation)
    for fmt in ("channels_last", "slice", "noncontiguous"):
        v, w, i = values, weight, indices
        if which == "values":
            v = layout(values, fmt)
        elif which == "weight":
            w = layout(weight, fmt)
        else:
            i = layout(indices, fmt)
        lists = _lists(i, hw, w, padding, dilation, copies, want_dr.shape[2:])
        dr_pad = ops.pooled_conv_t(v, lists, w)
        assert_close_within(ops.interior(dr_pad, lists), want_dr, what=f"dr_y {fmt} {which}", **TOL[torch.float64])
        assert_close_within(ops.pooled_wgrad(v, lists, dr_pad), want_grad, what=f"wgrad {fmt} {which}",
                            **TOL[torch.float64])


def test_overlapping_pools_count_a_shared_switch_once():
    """Two windows of a 3/2/1 pool with the same switch: unpooling keeps the last window's value, so the lists
    hold it once (a list that kept both would add both values at that pixel)."""
    impl_device(COMPILED)
    z = torch.rand(1, 1, 5, 5, generator=gen(1), dtype=torch.float64)
    z[0, 0, 1, 1] = 5.0                                       # the maximum of the 4 windows that cover it
    _, indices = F.max_pool2d(z, 3, 2, 1, return_indices=True)
    assert (indices == 6).sum() == 4
    values = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)
    weight = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    want_dr, want_grad = ops.pooled_chain_ref(values, indices, ((3, 3), (2, 2), (1, 1)), (5, 5), weight, 1, 1)
    lists = _lists(indices, (5, 5), weight, (1, 1), (1, 1), 1, (5, 5))
    assert lists.ch_ent.shape[0] == indices.unique().numel() < values.numel()   # one entry per switch
    dr_pad = ops.pooled_conv_t(values, lists, weight)
    assert_close_within(ops.interior(dr_pad, lists), want_dr, **TOL[torch.float64])
    assert_close_within(ops.pooled_wgrad(values, lists, dr_pad), want_grad, **TOL[torch.float64])


def test_bad_inputs_are_refused_with_the_reason():
    impl_device(COMPILED)
    values, indices, pool, hw, weight, padding, dilation, copies = _case("2x2-3x3", torch.float32)
    bad = indices.clone()
    bad[0, 0, 0, 0] = 63
    with pytest.raises(RuntimeError, match="switch 63 out of range for a 7x9 input plane"):
        _lists(bad, hw, weight, padding, dilation, copies, hw)
    with pytest.raises(ValueError, match="indices must be"):
        _lists(indices[:, :2], hw, weight, padding, dilation, copies, hw)
    lists = _lists(indices, hw, weight, padding, dilation, copies, hw)
    with pytest.raises(ValueError, match="values must be"):
        ops.pooled_conv_t(values[:1], lists, weight)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ops.pooled_conv_t(values.half(), lists, weight.half())
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.pooled_conv_t(values.double(), lists, weight)


def test_opcheck():
    impl_device(COMPILED)
    values, indices, pool, hw, weight, padding, dilation, copies = _case("2x2-3x3", torch.float32)
    lists = _lists(indices, hw, weight, padding, dilation, copies, hw)
    w = weight.permute(0, 2, 3, 1).contiguous()
    w = F.pad(w, (0, lists.channels_padded - w.shape[3]))
    args = (values.reshape(-1), lists.pix_ptr, lists.pix_ent, w, lists.rows, list(hw), list(lists.padded_size),
            list(padding))
    torch.library.opcheck(torch.ops.dtp_fast.pooled_conv_t.default, args)
    dr_pad = torch.ops.dtp_fast.pooled_conv_t(*args)
    torch.library.opcheck(torch.ops.dtp_fast.pooled_wgrad.default,
                          (values.reshape(-1), lists.ch_ptr, lists.ch_ent, dr_pad, [3, 3], [1, 1]))
    torch.library.opcheck(torch.ops.dtp_fast.switch_lists.default,
                          (indices, list(hw), [3, 3], list(padding), list(dilation), list(hw), copies, 16))



def _chunk(name, dtype, n, seed=5):
    """A chunk of n iterations of case ``name``: values (n, rows, C, Hp, Wp), A (n, *V), V and its momentum
    buffer in the engine's channels_last layout, the lists and the plane."""
    values, indices, pool, hw, weight, padding, dilation, copies = _case(name, dtype, seed)
    g = gen(seed + 1)
    chunk = torch.randn(n, *values.shape, generator=g, dtype=dtype)
    A = torch.randn(n, *weight.shape, generator=g, dtype=dtype)
    V = (0.1 * weight).contiguous(memory_format=torch.channels_last)
    buf = (0.01 * torch.randn(weight.shape, generator=g, dtype=dtype)).contiguous(memory_format=torch.channels_last)
    out_hw = ops.pooled_chain_ref(values, indices, pool, hw, weight, padding, dilation)[0].shape[2:]
    return chunk, A, V, buf, _lists(indices, hw, weight, padding, dilation, copies, out_hw)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("wd,loss_from", [(0.0, 0), (1e-3, 2), (0.0, 4)])
def test_pooled_chain_runs_a_chunk_as_the_engine_runs_its_iterations(name, dtype, wd, loss_from):
    """pooled_chain_ (the cpp backend's whole chunk in one call) against the ops iteration by iteration with the
    engine's gradient, loss and momentum step: the weight and its buffer in place (layout kept), the losses of
    iterations loss_from.. (4: none); A and the chunk non-contiguous for one case."""
    impl_device(COMPILED)
    n, scale, lr, mom = 4, 0.25, 0.05, 0.9
    chunk, A, V, buf, lists = _chunk(name, dtype, n)
    want_V, want_buf, want_loss = V.clone(memory_format=torch.channels_last), buf.clone(
        memory_format=torch.channels_last), []
    for j in range(n):
        dr_pad = ops.pooled_conv_t(chunk[j], lists, want_V)
        if j >= loss_from:
            dr_y = ops.interior(dr_pad, lists)
            want_loss.append(scale * (dr_y.pow(2).sum() - 2 * (A[j] * want_V).sum()))
        grad = ops.pooled_wgrad(chunk[j], lists, dr_pad).sub(A[j]).mul(2 * scale)
        if wd:
            grad = grad.add(want_V, alpha=wd)
        want_buf.mul_(mom).add_(grad)
        want_V.add_(want_buf, alpha=-lr)
    if name == "wide":   # other layouts of the inputs: the same results
        chunk = chunk.transpose(3, 4).contiguous().transpose(3, 4)
        A = A.contiguous(memory_format=torch.channels_last_3d) if A.dim() == 5 else A
    got = ops.pooled_chain_(chunk, lists, A, V, buf, scale, lr, mom, wd, loss_from)
    assert V.is_contiguous(memory_format=torch.channels_last)
    assert_close_within(V, want_V, what=f"V {name}", **TOL[dtype])
    assert_close_within(buf, want_buf, what=f"buffer {name}", **TOL[dtype])
    assert got.shape == (n - loss_from,) and got.dtype == dtype
    if want_loss:
        assert_close_within(got, torch.stack(want_loss), what=f"losses {name}", **TOL[dtype])


def test_pooled_chain_refuses_bad_input_and_passes_opcheck():
    impl_device(COMPILED)
    chunk, A, V, buf, lists = _chunk("2x2-3x3", torch.float32, 3)
    with pytest.raises(ValueError, match="values must be"):
        ops.pooled_chain_(chunk[0], lists, A, V, buf, 0.5, 0.1, 0.9, 0.0, 0)
    with pytest.raises(RuntimeError, match="A must be"):
        ops.pooled_chain_(chunk, lists, A[:2], V, buf, 0.5, 0.1, 0.9, 0.0, 0)
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.pooled_chain_(chunk, lists, A.double(), V, buf, 0.5, 0.1, 0.9, 0.0, 0)
    with pytest.raises(RuntimeError, match="one shape"):
        ops.pooled_chain_(chunk, lists, A, V, buf[:1], 0.5, 0.1, 0.9, 0.0, 0)
    args = (chunk, lists.pix_ptr, lists.pix_ent, lists.ch_ptr, lists.ch_ent, A, V, buf, list(lists.output_size),
            list(lists.padded_size), list(lists.padding), list(lists.dilation), 0.5, 0.1, 0.9, 1e-4, 1)
    torch.library.opcheck(torch.ops.dtp_fast.pooled_chain_.default, args)


# ---------------------------------------------------------------------------- the Triton kernels
#: the cases whose pool tiles the plane (what the Triton kernels take)
TILING = [name for name, case in CASES.items() if case[4][0] == case[4][1] and case[4][2] == (0, 0)]


@pytest.mark.triton
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", TILING)
def test_triton_pooled_chain_equals_reference(name, dtype):
    """dr_y and the weight gradient of the Triton kernels (dh2 expanded from d2 and the switches inside the
    matrix products; switches of one batch shared by its noise copies) against the reference; dr_y in
    channels_last, the gradient in the weight's channels_last strides; a non-contiguous weight and dr_y give
    the same; a fixed number of parts gives the same bits twice."""
    from dtp_fast.ops.triton.sparse import pooled_conv_t, pooled_wgrad

    device = impl_device(TRITON)
    values, indices, pool, hw, weight, padding, dilation, copies = _case(name, dtype)
    want_dr, want_grad = ops.pooled_chain_ref(values, indices, pool, hw, weight, padding, dilation)
    values, indices, weight = values.to(device), indices.to(device), weight.to(device)
    for w in (weight, layout(weight, "noncontiguous")):
        dr = pooled_conv_t(values, indices, w, pool[0], hw, padding, dilation, want_dr.shape[2:])
        assert dr.is_contiguous(memory_format=torch.channels_last)
        assert_close_within(dr.cpu(), want_dr, what=f"dr_y {name}", **TOL[dtype])
    for d in (dr, layout(dr, "noncontiguous")):
        grad = pooled_wgrad(values, indices, d, pool[0], hw, weight.shape[2:], padding, dilation, parts=3)
        assert grad.shape == weight.shape and grad.is_contiguous(memory_format=torch.channels_last)
        assert_close_within(grad.cpu(), want_grad, what=f"wgrad {name}", **TOL[dtype])
    assert_exact(grad, pooled_wgrad(values, indices, d, pool[0], hw, weight.shape[2:], padding, dilation, parts=3))
    auto = pooled_wgrad(values, indices, dr, pool[0], hw, weight.shape[2:], padding, dilation)
    assert_close_within(auto.cpu(), want_grad, what=f"wgrad {name} (parts chosen)", **TOL[dtype])


@pytest.mark.triton
def test_triton_pooled_chain_refuses_bad_input():
    from dtp_fast.ops.triton.sparse import pooled_conv_t, pooled_wgrad

    device = impl_device(TRITON)
    values, indices, pool, hw, weight, padding, dilation, copies = (
        t.to(device) if isinstance(t, torch.Tensor) else t for t in _case("2x2-3x3", torch.float32))
    with pytest.raises(ValueError, match="d2 must be"):
        pooled_conv_t(values.half(), indices, weight, 2, hw, padding, dilation, hw)
    with pytest.raises(ValueError, match="switches must be int64"):
        pooled_conv_t(values, indices.int(), weight, 2, hw, padding, dilation, hw)
    with pytest.raises(ValueError, match="Ns dividing"):
        pooled_conv_t(values, torch.cat([indices] * 3), weight, 2, hw, padding, dilation, hw)
    with pytest.raises(ValueError, match="do not fit a 5x9 plane"):
        pooled_conv_t(values, indices, weight, 2, (5, 9), padding, dilation, hw)
    with pytest.raises(ValueError, match="weight must be"):
        pooled_conv_t(values, indices, weight.double(), 2, hw, padding, dilation, hw)
    dr = pooled_conv_t(values, indices, weight, 2, hw, padding, dilation, hw)
    with pytest.raises(ValueError, match=r"d2 must be a float32/float64 \(N, C, Hp, Wp\)"):
        pooled_wgrad(values[0], indices, dr, 2, hw, 3, padding, dilation)
    with pytest.raises(ValueError, match="dr_y must be"):
        pooled_wgrad(values, indices, dr[:1], 2, hw, 3, padding, dilation)
