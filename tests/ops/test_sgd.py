"""The ``sgd`` family: momentum SGD of many tensors in one call, every implementation against the reference
``momentum_sgd_ref`` (``torch.optim.SGD``'s rule, dampening 0, no Nesterov).

Implementations (tests/helpers.py) and their tolerances against the reference, three steps:

- ``cpu`` (the compiled op): within 4 machine epsilons (rtol = atol = 4 eps of the dtype);
- ``cuda`` (the compiled op, marked gpu): bit for bit with the CPU kernel (the same roundings, no FMA on
  either side), within 4 epsilons of the reference run on the GPU (ATen may fuse a * alpha + b);
- ``triton`` (dtp_fast.ops.triton.sgd, four tensors per launch): rtol 1e-4 / atol 1e-6 in float32,
  rtol 1e-9 / atol 1e-12 in float64.
"""
import pytest
import torch

from dtp_fast import ops
from helpers import COMPILED, CUDA, DTYPES, TRITON, assert_close_within, assert_exact, gen, impl_device, impls

TRITON_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def _sgd_case(device, dtype, count=30):
    """count tensors of varied shapes and layouts, with per-tensor hyperparameters."""
    g = gen(4)
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


def _step(impl, params, grads, bufs, lr, mom, wd):
    if impl == TRITON:
        from dtp_fast.ops.triton import sgd

        table = sgd.layer_scalars([(a, b, c, 1.0, 1.0) for a, b, c in zip(lr, mom, wd)], params[0])
        sgd.momentum_step_(params, bufs, grads, table, block=256)
    else:
        ops.momentum_sgd_(params, grads, bufs, lr, mom, wd)


@pytest.mark.parametrize("impl", impls(COMPILED, CUDA, TRITON))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_momentum_sgd_matches_ref(impl, dtype):
    device = impl_device(impl)
    params, grads, bufs, lr, mom, wd = _sgd_case(device, dtype)
    p2, g2, b2 = ([t.clone() for t in ts] for ts in (params, grads, bufs))
    if impl == CUDA:  # the CPU kernel's results
        p3, g3, b3 = ([t.cpu() for t in ts] for ts in (params, grads, bufs))
    grads_before = [g.clone() for g in grads]
    for _ in range(3):
        _step(impl, params, grads, bufs, lr, mom, wd)  # 30 tensors: several launches
        for k in range(len(p2)):
            ops.momentum_sgd_ref([p2[k]], [g2[k]], [b2[k]], lr[k], mom[k], wd[k])
        if impl == CUDA:
            ops.momentum_sgd_(p3, g3, b3, lr, mom, wd)
    for a, b in zip(params + bufs, p2 + b2):
        if impl == TRITON:
            assert_close_within(a, b, **TRITON_TOL[dtype])
        else:
            assert_close_within(a, b, rtol=4 * torch.finfo(dtype).eps, atol=4 * torch.finfo(dtype).eps)
    if impl == CUDA:
        for a, b in zip(params + bufs, p3 + b3):
            assert_exact(a.cpu(), b)
    for a, b in zip(grads, grads_before):
        assert_exact(a, b)  # grads are inputs only


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_momentum_sgd_ref_is_torch_sgd(dtype):
    """The reference is torch.optim.SGD's step (dampening 0, no Nesterov; a zero initial buffer)."""
    torch.manual_seed(4)
    params = [torch.randn(3, 4, 3, 3, dtype=dtype).contiguous(memory_format=torch.channels_last),
              torch.randn(17, dtype=dtype), torch.randn(5, 5, dtype=dtype), torch.randn(1, dtype=dtype)]
    cfg = [(0.1, 0.9, 0.0), (0.05, 0.5, 1e-2), (0.2, 0.0, 0.0), (0.01, 0.9, 0.1)]
    refs = [p.clone().requires_grad_() for p in params]
    opts = [torch.optim.SGD([r], lr=lr, momentum=m, weight_decay=wd) for r, (lr, m, wd) in zip(refs, cfg)]
    mine = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in mine]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for r, o, g in zip(refs, opts, grads):
            r.grad = g.clone()
            o.step()
        for k, (lr, m, wd) in enumerate(cfg):
            ops.momentum_sgd_ref([mine[k]], [grads[k]], [bufs[k]], lr, m, wd)
    for r, m, b, o in zip(refs, mine, bufs, opts):
        assert_exact(m, r.detach())  # the same operations in the same order
        if o.param_groups[0]["momentum"]:  # torch keeps no buffer without momentum
            assert_exact(b, o.state[r]["momentum_buffer"])


def test_momentum_sgd_errors(ext):
    params, grads, bufs, *_ = _sgd_case("cpu", torch.float32, count=2)
    with pytest.raises(RuntimeError, match="one value per tensor"):
        torch.ops.dtp_fast.momentum_sgd_(params[:2], grads[:2], bufs[:2], [0.1], [0.9, 0.9], [0.0, 0.0])
    with pytest.raises(RuntimeError, match="buf must have its strides"):
        p = torch.zeros(2, 3, 4, 5)
        ops.momentum_sgd_([p], [p.clone()], [p.contiguous(memory_format=torch.channels_last)], 0.1, 0.9, 0.0)


@pytest.mark.triton
def test_triton_momentum_with_the_ldrl_gradient():
    """g = gs * (quad - A) + wd * V, as the torch engine's gradient() and apply()."""
    device = impl_device(TRITON)
    from dtp_fast.ops.triton import sgd

    torch.manual_seed(5)
    V, buf, Q, A = (torch.randn(4, 3, 3, 3) for _ in range(4))
    lr, mom, wd, gs = 0.05, 0.9, 1e-3, 2 / 8
    want_buf = buf * mom + ((Q - A) * gs + wd * V)
    want_V = V - lr * want_buf
    Vd, bd = V.to(device), buf.to(device)
    sgd.momentum_step_([Vd], [bd], [Q.to(device)], sgd.layer_scalars([(lr, mom, wd, gs, 0)], Vd),
                       subtract=[A.to(device)])
    assert_close_within(Vd.cpu(), want_V, what="V", **TRITON_TOL[torch.float32])
    assert_close_within(bd.cpu(), want_buf, what="buf", **TRITON_TOL[torch.float32])


@pytest.mark.parametrize("impl", impls(COMPILED, CUDA))
def test_opcheck(impl):
    device = impl_device(impl)
    for dtype in DTYPES:
        params, grads, bufs, lr, mom, wd = _sgd_case(device, dtype, count=5)
        torch.library.opcheck(torch.ops.dtp_fast.momentum_sgd_.default, (params, grads, bufs, lr, mom, wd))
