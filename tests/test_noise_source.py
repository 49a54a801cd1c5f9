"""The noise sources: CounterNoise the same with and without the extension, keyed by global sample index,
normal, independent values; ExplicitNoise. The generator itself (philox_normal_ and its PyTorch mirror):
tests/ops/test_noise.py."""
import pytest
import torch

from dtp_fast.noise import CounterNoise, ExplicitNoise


def test_counter_noise_with_and_without_the_extension_agree(ext, monkeypatch):
    n = CounterNoise(4)
    kw = dict(step=3, layer=2, iteration=9, sample=1, which="y", shape=(5, 3, 4, 4), device="cpu", offset=11)
    compiled = n.normal(**kw, dtype=torch.float32)
    monkeypatch.setenv("DTP_FAST_DISABLE_EXT", "1")
    assert torch.equal(n.normal(**kw, dtype=torch.float32), compiled)
    assert torch.equal(n.normal(**kw, dtype=torch.float64), compiled.double())


def test_rows_are_keyed_by_global_sample_index():
    """Any split of a batch (chunks, ranks) sees the same noise for the same sample."""
    n = CounterNoise(1)
    kw = dict(step=0, layer=1, iteration=2, sample=0, which="x", device="cpu", dtype=torch.float32)
    whole = n.normal(shape=(8, 3, 5), **kw)
    parts = [n.normal(shape=(3, 3, 5), offset=0, **kw), n.normal(shape=(1, 3, 5), offset=3, **kw),
             n.normal(shape=(4, 3, 5), offset=4, **kw)]
    assert torch.equal(torch.cat(parts), whole)
    buf = torch.empty(4, 3, 5)
    n.fill_(buf, offset=4, **{k: v for k, v in kw.items() if k not in ("device", "dtype")})
    assert torch.equal(buf, whole[4:])


def test_values_are_standard_normal_and_independent():
    n = CounterNoise(0)
    kw = dict(step=0, layer=1, sample=0, which="x", shape=(2000, 100), device="cpu", dtype=torch.float64)
    a = n.normal(iteration=0, **kw)
    b = n.normal(iteration=1, **kw)
    c = n.normal(iteration=0, **{**kw, "sample": 1})
    z = a.flatten()
    assert abs(z.mean()) < 0.005 and abs(z.var() - 1) < 0.01  # 200k values: se 0.0022 / 0.0032
    assert abs((z.abs() < 1).double().mean() - 0.682689) < 0.004
    assert abs((z.abs() < 2).double().mean() - 0.954500) < 0.002
    assert abs((z > 3).double().mean() - 0.0013499) < 0.0004
    assert abs(((z - z.mean()) ** 3).mean()) < 0.03 and abs((z ** 4).mean() - 3) < 0.06
    for other in (b, c, a.roll(1, 0), a.roll(1, 1)):  # across iterations, samples, rows, positions
        assert abs(torch.corrcoef(torch.stack([z, other.flatten()]))[0, 1]) < 0.01
    for lane in range(4):  # the four lanes of a Philox block are alike
        assert abs(a[:, lane::4].var() - 1) < 0.02
    assert a.abs().max() < 6  # Box-Muller with 24-bit uniforms: |z| <= 5.77


def test_counter_noise_checks_its_counters():
    n = CounterNoise()
    with pytest.raises(ValueError, match="2\\^32"):
        n.normal(step=0, layer=1, iteration=-1, sample=0, which="x", shape=(2, 3), device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="batch dimension"):
        n.normal(step=0, layer=1, iteration=0, sample=0, which="x", shape=(), device="cpu", dtype=torch.float32)


def test_explicit_noise_serves_rows_of_the_global_batch():
    t = torch.randn(6, 2)
    n = ExplicitNoise({(0, 1, 0, 0, "x"): t})
    got = n.normal(step=0, layer=1, iteration=0, sample=0, which="x", shape=(2, 2), device="cpu",
                   dtype=torch.float32, offset=3)
    assert torch.equal(got, t[3:5])
    with pytest.raises(ValueError, match="rows 5..6"):
        n.normal(step=0, layer=1, iteration=0, sample=0, which="x", shape=(2, 2), device="cpu",
                 dtype=torch.float32, offset=5)
