"""Helpers shared by the tests: comparisons, parameter lists, layouts, seeded generators, and the
implementations of an op (reference / cpu / cuda / triton) with what each needs to run."""
import os
import sys

import pytest
import torch

from dtp_fast import _ext
from dtp_fast.ops import ACTIVATIONS

ACTS = list(ACTIVATIONS)
DTYPES = [torch.float32, torch.float64]
POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1)]  # kernel, stride, padding
#: Layouts of a 4-D tensor (see :func:`layout`).
LAYOUTS = ["nchw", "channels_last", "slice", "cl_slice", "noncontiguous"]


def pool_id(pool) -> str:
    return "k%ds%dp%d" % tuple(pool)


def shape_id(shape) -> str:
    return "x".join(map(str, shape))


def gen(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def elu_saturating(shape, seed: int = 0) -> torch.Tensor:
    """float64 normals around -30, where ELU saturates to exactly -1 (ties the input does not have); a
    quarter near the float32 rounding edge (-17) and a quarter at -45 (where float64 saturates too)."""
    x = torch.randn(shape, generator=gen(seed), dtype=torch.float64) - 30
    flat = x.view(-1)
    n = flat.numel()
    flat[: n // 4] += 13
    flat[n // 4 : n // 2] -= 15
    return x


def with_nan_inf(x: torch.Tensor, inf_row: int) -> torch.Tensor:
    """x (N >= 2, C >= 3, H >= 5, W >= 6) with a NaN, a block of NaNs, -inf blocks and planes, and a +inf
    (in row ``inf_row``), in place."""
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 2:5, 2:6] = float("nan")
    x[1, 0, :4, :4] = float("-inf")
    x[1, 2] = float("-inf")
    x[inf_row, 1, 3, 3] = float("inf")
    return x


# ---------------------------------------------------------------------------- comparisons
def assert_exact(actual, expected):
    """The same shape, dtype and bits (NaN equal to NaN)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        "%s %s != %s %s" % (tuple(actual.shape), actual.dtype, tuple(expected.shape), expected.dtype))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def assert_close_within(actual, expected, *, rtol, atol, what=""):
    """Elementwise within ``atol + rtol * |expected|`` (NaN equal to NaN); tolerances always explicit."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                               msg=(lambda m: "%s: %s" % (what, m)) if what else None)


# ---------------------------------------------------------------------------- layouts
def layout(x: torch.Tensor, name: str) -> torch.Tensor:
    """x (any device) with the same values in the layout ``name``: ``nchw`` (contiguous),
    ``channels_last``, ``slice`` (an NCHW-like view with gaps), ``cl_slice`` (a channels_last-like
    view with a channel step of 2) or ``noncontiguous`` (every other element of the last dimension;
    any number of dimensions)."""
    if name == "nchw":
        return x.contiguous()
    if name == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if name == "noncontiguous":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        view = big[..., ::2]
    elif name == "slice":
        N, C, H, W = x.shape
        view = torch.zeros(N, C + 1, 2 * H, W + 3, dtype=x.dtype, device=x.device)[:, 1:, ::2, 2:W + 2]
    elif name == "cl_slice":
        N, C, H, W = x.shape
        big = torch.zeros(N, 2 * C, H + 1, W, dtype=x.dtype, device=x.device)
        view = big.contiguous(memory_format=torch.channels_last)[:, ::2, 1:, :]
    else:
        raise ValueError("unknown layout %r" % name)
    view.copy_(x)
    return view


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    from torch._prims_common import suggest_memory_format

    return suggest_memory_format(x)


# ---------------------------------------------------------------------------- what may skip
def _required() -> bool:
    return os.environ.get("DTP_FAST_REQUIRE_EXT", "") == "1"


def skip_or_fail(reason: str, required: bool) -> None:
    """Skip, or fail when ``required`` (DTP_FAST_REQUIRE_EXT=1 and the thing could run here)."""
    if required:
        pytest.fail(reason + " (DTP_FAST_REQUIRE_EXT=1)")
    pytest.skip(reason)


def require_ext() -> None:
    """Skip when the compiled module is unavailable, or fail if DTP_FAST_REQUIRE_EXT=1 (CI builds it)."""
    if not _ext.available():
        skip_or_fail("compiled dtp_fast._C unavailable: %s" % _ext.load_error(), _required())


def require_cuda_ops() -> None:
    """The compiled ops with their CUDA kernels, on a CUDA device (tests marked gpu)."""
    require_ext()
    from dtp_fast.feedback.backends.cuda import cuda_kernels_problem

    problem = cuda_kernels_problem()
    if problem is not None:
        skip_or_fail("CUDA kernels not usable here: %s" % problem, _required())


def triton_device() -> str:
    """Where Triton kernels run: "cpu" under the interpreter (TRITON_INTERPRET=1, set by conftest.py
    without a GPU), else "cuda". Skips without triton, or fails if DTP_FAST_REQUIRE_EXT=1 where the
    triton wheel exists (Linux)."""
    from dtp_fast.ops import triton as kernels

    if not kernels.available():
        skip_or_fail("triton unavailable: %s" % kernels.load_error(), _required() and sys.platform == "linux")
    if kernels.interpreting():
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("no GPU and TRITON_INTERPRET is not set: Triton kernels cannot run")
    return "cuda"


# ---------------------------------------------------------------------------- implementations of an op
#: The implementations an op may have besides its reference: the compiled CPU and CUDA kernels of
#: dtp_fast._C, and a Triton kernel (the interpreter on a CPU, compiled on a GPU).
COMPILED, CUDA, TRITON = "cpu", "cuda", "triton"


_MARKS = {CUDA: [pytest.mark.gpu], TRITON: [pytest.mark.triton]}


def impls(*names):
    """pytest parameters over implementation names; the CUDA one carries the ``gpu`` marker, the Triton one the
    ``triton`` marker (which conftest.py makes ``gpu`` too on a GPU, where the kernels run compiled)."""
    return [pytest.param(n, marks=_MARKS.get(n, [])) for n in names]


def impl_cases(per_impl: dict) -> list:
    """pytest parameters ``(impl, *case)`` from ``{impl: [case, ...]}``: each implementation keeps its own
    cases (an interpreted Triton kernel cannot afford the compiled kernels' grids); marked as in :func:`impls`."""
    def id_of(c):
        return pool_id(c) if c in POOLS + [(2, 1, 1)] else str(c).replace(" ", "")

    return [pytest.param(impl, *case, marks=_MARKS.get(impl, []),
                         id="-".join([impl] + [id_of(c) for c in case]))
            for impl, cases in per_impl.items() for case in cases]


def impl_device(impl: str) -> str:
    """Make sure ``impl`` can run here (skip or fail otherwise) and return its device."""
    if impl == COMPILED:
        require_ext()
        return "cpu"
    if impl == CUDA:
        require_cuda_ops()
        return "cuda"
    if impl == TRITON:
        return triton_device()
    raise ValueError(impl)


# ---------------------------------------------------------------------------- backends against reference
#: Tolerances of a fast backend's feedback weights, momentum and losses against ``reference`` after a few
#: iterations (float64 rounding; float32: different summation orders in the convolutions).
BACKEND_TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-6)}


def tiny_net(kernel=3, pool=(2, 2, 0), act=torch.nn.ELU, hw=(9, 7), channels=(3, 4, 5), hidden=6, classes=3):
    """conv_0 (untrained), conv_1 (the case under test), fc_0 (MLP block: Linear -> act), fc_1 (Linear)."""
    import dtp_fast

    nn = torch.nn
    c0, c1, c2 = channels
    k, s, p = pool
    h, w = hw[0] // 2, hw[1] // 2
    h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    seq = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1), nn.ELU(), nn.MaxPool2d(2, 2),
                        nn.Conv2d(c1, c2, kernel, padding=kernel // 2), act(), nn.MaxPool2d(k, s, p),
                        nn.Flatten(), nn.Linear(c2 * h * w, hidden), act(), nn.Linear(hidden, classes))
    return dtp_fast.from_sequential(seq, (c0, *hw))


def feedback_run(net, x, cfg, backend, budget="default", *, steps=1, noise=None, noncontig=False, reduce=None,
                 report="all"):
    """A copy of ``net`` after ``steps`` feedback phases (steps 5, 6, ...) on ``x`` (or on ``x[s]`` at step s, a
    list): ``(net, state, stats per step)``, without TF32. ``noncontig``: the activations (and switches) as non-contiguous views, or
    ``"channels_last"``: the 4-D activations in channels_last. ``backend``: a name (through ``train_feedback``) or a backend object (its ``train`` called
    directly, without the availability check: the triton backend on CPU tensors under the interpreter)."""
    import copy

    from dtp_fast.feedback import FeedbackState, train_feedback
    from dtp_fast.feedback.gpu import full_float32
    from dtp_fast.noise import CounterNoise

    net = copy.deepcopy(net)
    state, out = FeedbackState(), []
    noise = CounterNoise(3) if noise is None else noise
    with full_float32():   # on a GPU: the activations and every backend in IEEE float32 (no TF32)
        for s in range(steps):
            acts, sw = net.activations(x[s] if isinstance(x, (list, tuple)) else x)
            acts = [a.detach() for a in acts]
            if noncontig == "channels_last":
                acts = [layout(a, "channels_last") if a.dim() == 4 else a for a in acts]
            elif noncontig:
                acts = [a if a.dim() < 2 else layout(a, "noncontiguous") for a in acts]
                sw = [None if i is None else layout(i, "noncontiguous") for i in sw]
            if isinstance(backend, str):
                out.append(train_feedback(net, acts, sw, cfg, state, noise, 5 + s, backend=backend, report=report,
                                          memory_budget=budget, reduce=reduce))
            else:
                out.append(backend.train(net, acts, sw, cfg.resolve(net.feedback_names), state, noise, 5 + s,
                                         report, memory_budget=budget, reduce=reduce))
    return net, state, out


def assert_same_feedback(ref, fast, dtype):
    """Two :func:`feedback_run` results agree within :data:`BACKEND_TOL`: feedback weights, their momentum
    buffers, the reported losses (10x rtol: a loss is a difference of two large sums) and the feedback biases
    (their L-DRL gradient is exactly 0: only weight decay moves them, in every backend)."""
    tol = BACKEND_TOL[dtype]
    (n_ref, st_ref, l_ref), (n_fast, st_fast, l_fast) = ref, fast
    for name in n_ref.feedback_names:
        a, b = n_ref.blocks[name].g_op, n_fast.blocks[name].g_op
        assert_close_within(b.weight.detach().cpu(), a.weight.detach().cpu(), **tol, what=f"{name} weight")
        assert_close_within(b.bias.detach().cpu(), a.bias.detach().cpu(), **tol, what=f"{name} bias")
        assert_close_within(st_fast.buffers[f"{name}.weight"].cpu(), st_ref.buffers[f"{name}.weight"].cpu(), **tol,
                            what=f"{name} momentum")
    assert len(l_ref) == len(l_fast)
    for a, b in zip(l_ref, l_fast):
        assert a.keys() == b.keys()
        for name in a:
            if a[name]["loss"] is None:
                assert b[name]["loss"] is None, name
            else:
                assert b[name]["loss"] == pytest.approx(a[name]["loss"], rel=tol["rtol"] * 10, abs=1e-6), name


def assert_same_budget_state(a: dict, b: dict, rtol: float = 0.0):
    """Two adaptive feedback budget states (``AdaptiveBudget.state_dict()``) alike: bit for bit, or to
    ``rtol`` (the forward weights they hold and the drifts)."""
    assert a.keys() == b.keys() and a["prev"].keys() == b["prev"].keys() and a["batches"] == b["batches"]
    for k in a["prev"]:
        torch.testing.assert_close(b["prev"][k], a["prev"][k], rtol=rtol, atol=0.0)
    for key in ("drift", "ref"):
        assert b[key] == pytest.approx(a[key], rel=rtol, abs=0.0)
