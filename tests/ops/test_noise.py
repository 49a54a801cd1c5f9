"""The ``noise`` family: Philox known answers, and every implementation of philox_normal_ against its
PyTorch mirror ``philox_normal`` (the reference).

Implementations (tests/helpers.py): ``cpu`` (the compiled CPU kernel) and ``triton``
(dtp_fast.ops.triton.noise) give the mirror's bits (rtol=0, atol=0); ``cuda`` (the compiled CUDA
kernel, marked gpu) is within one float32 ulp of the CPU kernel and the mirror (rtol = float32 eps,
atol 0), and has the same bits for at least 99.9% of the values.
"""
import math

import pytest
import torch

from dtp_fast import ops
from dtp_fast.noise import CounterNoise, NoiseBlock
from helpers import COMPILED, CUDA, TRITON, assert_exact, impl_cases, impl_device, layout

# Random123's known-answer vectors for Philox4x32-10: (counter, key, output).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = ops.philox4x32(*(torch.tensor([c], dtype=torch.int64) for c in counter), *key)
    assert [int(o) for o in out] == list(expected)


def _normal(impl, device, shape, key, offset, iteration, sample, dtype):
    """philox_normal_ of ``impl`` into a new (shape) tensor of dtype on device."""
    if impl == TRITON:
        from dtp_fast.ops.triton import noise as knoise

        return knoise.philox_normal(shape, key, offset, iteration, sample, device=device).to(dtype)
    return ops.philox_normal_(torch.empty(shape, dtype=dtype, device=device), key, offset, iteration, sample)


# (dtype, shape, key, offset, iteration, sample)
CASES = impl_cases({
    COMPILED: [(d, s, (0x12345678, 0x9ABCDEF0), 5, 7, 1) for d in (torch.float32, torch.float64)
               for s in [(1, 1), (3, 5), (2, 3, 7, 5), (1, 4), (6, 2, 2, 3), (64, 1030), (0, 3),
                         (2, 63), (2, 64), (3, 260)]],   # rows of 16-block groups (AVX-512) and tails
    CUDA: [(d, s, (0xDEADBEEF, 0x01234567), 11, 3, 2) for d in (torch.float32, torch.float64)
           for s in [(1, 1), (1, 3), (3, 5), (2, 3, 7, 5), (5, 1024), (2, 4099)]],
    TRITON: [(torch.float32, s, CounterNoise(3).key(5, 2, "y"), o, it, sa)
             for s, o, it, sa in [((3, 37), 7, 11, 0), ((2, 5, 3, 3), 0, 4, 2), ((1, 1), 2**32 - 1, 2**32 - 1, 0)]],
})


@pytest.mark.parametrize("impl,dtype,shape,key,offset,iteration,sample", CASES)
def test_philox_normal_matches_the_pytorch_mirror(impl, dtype, shape, key, offset, iteration, sample):
    device = impl_device(impl)
    ref = ops.philox_normal(shape, key, offset, iteration, sample)
    out = _normal(impl, device, shape, key, offset, iteration, sample, dtype).cpu()
    if impl != CUDA:  # bit for bit (Triton: correctly rounded div/sqrt, no FMA contraction)
        assert_exact(out, ref.to(dtype))
        return
    f32 = torch.float32
    cpu = _normal(COMPILED, "cpu", shape, key, offset, iteration, sample, dtype)
    torch.testing.assert_close(out.to(f32), cpu.to(f32), rtol=torch.finfo(f32).eps, atol=0)  # one ulp
    assert (out == cpu).float().mean() > 0.999  # and in practice the same bits
    mirror = ops.philox_normal(shape, key, offset, iteration, sample, device="cuda").cpu()
    torch.testing.assert_close(out.to(f32), mirror, rtol=torch.finfo(f32).eps, atol=0)


def test_bad_counter_words_rejected_by_the_kernel(ext):
    with pytest.raises(RuntimeError, match="2\\^32"):
        torch.ops.dtp_fast.philox_normal_(torch.empty(2, 3), 2**32, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.dtp_fast.philox_normal_(torch.empty(3, 2).t(), 0, 0, 0, 0, 0)
    out = ops.philox_normal_(torch.empty(1, 3), (0, 0), 2**32 - 1, 0, 0)
    assert math.isfinite(float(out.sum()))


@pytest.mark.gpu
def test_philox_normal_cuda_slices_and_errors():
    """Row by row into slices of a buffer: 16-byte aligned rows take the float4 stores, shifted ones not."""
    impl_device(CUDA)
    base = torch.empty(1 + 6 * 8, device="cuda")
    expect = ops.philox_normal((6, 8), (1, 2), 0, 0, 0)
    for shift in (0, 1):
        out = base[shift:shift + 48].view(6, 8)
        for m in range(6):  # row m of the batch: sample index m
            torch.ops.dtp_fast.philox_normal_(out[m:m + 1], 1, 2, m, 0, 0)
        torch.testing.assert_close(out.cpu(), expect, rtol=torch.finfo(torch.float32).eps, atol=0)  # one ulp
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.dtp_fast.philox_normal_(out.t(), 1, 2, 0, 0, 0)
    with pytest.raises(RuntimeError, match="2\\^32"):
        torch.ops.dtp_fast.philox_normal_(out, 1, 2, 2**32, 0, 0)


@pytest.mark.parametrize("impl", [COMPILED, pytest.param(CUDA, marks=pytest.mark.gpu)])
def test_opcheck(impl):
    device = impl_device(impl)
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.dtp_fast.philox_normal_.default,
                              (torch.empty(3, 2, 5, dtype=dtype, device=device), 1, 2, 3, 4, 5))


# ---------------------------------------------------------------------------- the Triton kernel's blocks
@pytest.mark.triton
def test_triton_noise_fill_blocks_rows_and_channels_last_layout():
    device = impl_device(TRITON)
    from dtp_fast.ops.triton import noise as knoise

    key = CounterNoise(0).key(1, 3, "x")
    B, n, S = 3, 2, 2
    out = torch.empty(n * S * B, 5, 3, 2, device=device).contiguous(memory_format=torch.channels_last)
    knoise.noise_fill_(out, key, 1.0, batch=B, offset=4, iteration=6, samples=S)
    want = torch.cat([ops.philox_normal((B, 5, 3, 2), key, 4, 6 + m // S, m % S) for m in range(n * S)])
    assert torch.equal(out.cpu(), want)
    # float64: the float32 normals cast, times sigma in float64
    out64 = knoise.noise_fill_(torch.empty(n * S * B, 7, dtype=torch.float64, device=device), key, 0.3, batch=B,
                               offset=4, iteration=6, samples=S)
    want64 = torch.cat([ops.philox_normal((B, 7), key, 4, 6 + m // S, m % S) for m in range(n * S)]).double() * 0.3
    assert torch.equal(out64.cpu(), want64)


@pytest.mark.triton
def test_triton_noise_statistics_across_iterations_samples_and_rows():
    device = impl_device(TRITON)
    from dtp_fast.ops.triton import noise as knoise

    key = CounterNoise(11).key(0, 1, "y")
    rows, feat, n, S = 16, 1024, 2, 2
    z = knoise.noise_fill_(torch.empty(n * S * rows, feat, device=device), key, 1.0, batch=rows, iteration=0,
                           samples=S).cpu().double()
    N = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(N)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / N)
    assert abs((z ** 4).mean().item() - 3) < 0.1            # Gaussian kurtosis
    assert abs((z.abs() < 1).double().mean().item() - 0.6827) < 0.01
    blocks = z.reshape(n * S, rows * feat)                  # (iteration, sample) blocks
    corr = torch.corrcoef(blocks)
    off = corr[~torch.eye(n * S, dtype=torch.bool)]
    assert off.abs().max().item() < 5 / math.sqrt(rows * feat)  # independent across iterations and samples
    per_row = z.reshape(n * S * rows, feat)
    rc = torch.corrcoef(per_row[:rows])                     # and across data rows
    assert rc[~torch.eye(rows, dtype=torch.bool)].abs().max().item() < 6 / math.sqrt(feat)
    lag = torch.corrcoef(torch.stack([z.flatten()[:-1], z.flatten()[1:]]))[0, 1].item()
    assert abs(lag) < 5 / math.sqrt(N)                      # and between neighbouring elements


@pytest.mark.triton
def test_triton_noisy_input_equals_the_torch_backend():
    device = impl_device(TRITON)
    from dtp_fast.feedback import TorchBackend
    from dtp_fast.feedback import TritonBackend

    x = torch.randn(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    nb = NoiseBlock(CounterNoise(1), 2, 1, "x", 3, 2, 2, 5, tuple(x.shape))
    want = TorchBackend().noisy_input(nb, 0.4, x, torch.channels_last)
    got = TritonBackend(tf32=False).noisy_input(nb, 0.4, x.to(device), torch.channels_last)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape,fmt", [((3, 5, 7, 6), "channels_last"), ((2, 20, 4, 4), "channels_last"),
                                       ((1, 33, 2, 2), "channels_last"), ((3, 5, 7, 6), "nchw"), ((1, 4, 1, 3), "nchw"),
                                       ((2, 9), "nchw"), ((3, 5, 7, 6), "slice")])
def test_philox_noisy_input_equals_its_reference_bit_for_bit(ext, dtype, shape, fmt):
    """dx = sigma * eps and x + dx with eps drawn in the kernel: the bits of philox_normal scaled and added, for
    several iterations and noise samples, rows from an offset; the outputs in x's memory format (channels_last
    stays channels_last; other layouts give contiguous outputs)."""
    x = torch.randn(shape, dtype=dtype)
    x = layout(x, fmt) if x.dim() == 4 else x
    key = (0x1234ABCD, 0x0BADF00D)
    dx, xn = ops.philox_noisy_input(x, 0.37, key, 11, 4, 2, 6)
    want_dx, want_xn = ops.philox_noisy_input_ref(x.contiguous(), 0.37, key, 11, 4, 2, 6)
    assert_exact(dx, want_dx)
    assert_exact(xn, want_xn)
    if fmt == "channels_last":
        assert dx.is_contiguous(memory_format=torch.channels_last) and xn.is_contiguous(memory_format=torch.channels_last)
    # copy m = 3 is iteration 4 + 1, sample 1, rows 11 .. 13
    assert_exact(dx[3 * shape[0]:4 * shape[0]].contiguous(),
                 (ops.philox_normal(shape, key, 11, 5, 1).to(dtype) * 0.37))
    torch.library.opcheck(torch.ops.dtp_fast.philox_noisy_input.default, (x, 0.37, *key, 11, 4, 2, 6))
