"""Tests of dtp_fast.data: loading (digits, CIFAR-10 in three layouts), caching, errors, Loader, augmentation."""
from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dtp_fast import data
from dtp_fast.data import cifar10, images
from dtp_fast.data import (CIFAR10_CLASSES, Dataset, DatasetError, Loader, augment_batch, describe,
                           draw_augmentation, load_dataset)

REAL_TARBALL = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpeg.tar.gz"
N_TRAIN, N_TEST = 20, 10


# ---------------------------------------------------------------------- fixtures: fake CIFAR-10 on disk
@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test reads the user's data or cache settings."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "default-cache"))
    monkeypatch.delenv(data.WORKERS_ENV, raising=False)


def fake_arrays(seed: int = 0) -> dict:
    """20 train images (2 per class, sorted by class) + 10 test images (1 per class), random uint8."""
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (N_TRAIN, 3, 32, 32), dtype=np.uint8),
        "train_y": np.repeat(np.arange(10), N_TRAIN // 10).astype(np.int64),
        "test_x": rng.integers(0, 256, (N_TEST, 3, 32, 32), dtype=np.uint8),
        "test_y": np.arange(10, dtype=np.int64),
    }


def write_pickle_dir(folder: Path, arrays: dict) -> Path:
    """The cifar-10-batches-py layout: 5 train batches of 4, a test batch, batches.meta."""
    folder.mkdir(parents=True)
    per = N_TRAIN // 5
    for i in range(5):
        sl = slice(i * per, (i + 1) * per)
        batch = {b"batch_label": f"training batch {i + 1} of 5".encode(),
                 b"labels": arrays["train_y"][sl].tolist(),
                 b"data": arrays["train_x"][sl].reshape(per, -1),
                 b"filenames": [f"img{j}.png".encode() for j in range(per)]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": arrays["test_y"].tolist(),
            b"data": arrays["test_x"].reshape(N_TEST, -1)}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"num_cases_per_batch": per, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_image_tree(root: Path, arrays: dict, ext: str = "png", classes=CIFAR10_CLASSES) -> Path:
    """ROOT/{train,test}/<class>/NNNN.<ext>; file names sort in array order."""
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        for i, (img, label) in enumerate(zip(x, y)):
            d = root / split / classes[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:04d}.{ext}")
    return root


def make_tar(src: Path, out: Path, arcname: str | None = None, mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as tf:
        tf.add(src, arcname=arcname or src.name)
    return out


def assert_same(ds: Dataset, arrays: dict) -> None:
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(ds, k).numpy(), arrays[k], err_msg=k)


@pytest.fixture
def fake(tmp_path) -> dict:
    arrays = fake_arrays()
    pick = write_pickle_dir(tmp_path / "src" / "cifar-10-batches-py", arrays)
    tree = write_image_tree(tmp_path / "src" / "cifar10-png", arrays)
    tgz = make_tar(tree, tmp_path / "cifar10-png.tar.gz")
    return {"arrays": arrays, "pickle": pick, "tree": tree, "tgz": tgz, "cache": tmp_path / "cache"}


# ---------------------------------------------------------------------- digits
def test_digits():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.in_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train_x) == len(ds.train_y) == 1437 and len(ds.test_x) == len(ds.test_y) == 360
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert int(ds.train_x.max()) <= 16 and ds.scale == 16 and ds.augment is False
    assert sorted(ds.train_y.unique().tolist()) == list(range(10)) == sorted(ds.test_y.unique().tolist())
    assert load_dataset("DIGITS").test_y.tolist() == ds.test_y.tolist()       # fixed split
    x = torch.cat([xb for xb, _ in Loader(ds, "train", 500, shuffle=False)])
    assert x.dtype == torch.float32 and x.shape == (1437, 1, 8, 8)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-3
    info = describe(ds)
    assert info["train_size"] == 1437 and info["test_size"] == 360 and info["shape"] == [1, 8, 8]
    assert info["classes"] == [str(i) for i in range(10)]


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*cifar10.*digits"):
        load_dataset("mnist")


# ---------------------------------------------------------------------- cifar10 layouts
def test_cifar10_layouts_agree(fake, tmp_path):
    arrays, cache = fake["arrays"], fake["cache"]
    from_pickle = load_dataset("cifar10", fake["pickle"], cache_dir=cache)
    assert_same(from_pickle, arrays)
    assert from_pickle.classes == list(CIFAR10_CLASSES) and from_pickle.in_shape == (3, 32, 32)
    assert from_pickle.augment is True and from_pickle.scale == 255 and from_pickle.mean == data.CIFAR10_MEAN
    assert_same(load_dataset("cifar10", fake["tree"], cache_dir=cache), arrays)
    assert_same(load_dataset("cifar10", fake["tgz"], cache_dir=cache), arrays)
    # containers: a folder holding the pickled folder / the tree / an archive; plain .tar; str paths
    assert_same(load_dataset("cifar10", str(fake["pickle"].parent / "cifar-10-batches-py" / "data_batch_1"),
                             cache_dir=False), arrays)
    only_tree = tmp_path / "holder"
    write_image_tree(only_tree / "inner", arrays)
    assert_same(load_dataset("cifar10", only_tree, cache_dir=False), arrays)
    holder = tmp_path / "holder2"
    holder.mkdir()
    make_tar(fake["tree"], holder / "c.tar", mode="w")
    assert_same(load_dataset("cifar10", holder, cache_dir=False), arrays)
    # an archive of the pickled folder (the original cifar-10-python.tar.gz)
    assert_same(load_dataset("cifar10", make_tar(fake["pickle"], tmp_path / "py.tar.gz"), cache_dir=False), arrays)


def test_cifar10_label_order_is_sorted_class_names(tmp_path):
    arrays = fake_arrays(1)
    # class folder names whose sorted order differs from the order used to write them
    names = ("j", "i", "h", "g", "f", "e", "d", "c", "b", "a")
    write_image_tree(tmp_path / "t", arrays, classes=names)
    ds = load_dataset("cifar10", tmp_path / "t", cache_dir=False)
    assert ds.classes == sorted(names)
    # image written with label k lives in folder names[k], whose sorted index is 9 - k
    np.testing.assert_array_equal(ds.test_y.numpy(), np.arange(10))
    np.testing.assert_array_equal(ds.test_x.numpy(), arrays["test_x"][::-1])


def test_cifar10_jpeg_tree(tmp_path):
    arrays = fake_arrays(2)
    arrays["train_x"][:] = arrays["train_x"][:, :, :1, :1]      # flat images survive JPEG nearly intact
    arrays["test_x"][:] = arrays["test_x"][:, :, :1, :1]
    write_image_tree(tmp_path / "j", arrays, ext="jpg")
    ds = load_dataset("cifar10", tmp_path / "j", cache_dir=False)
    assert ds.train_x.shape == (N_TRAIN, 3, 32, 32) and ds.test_x.shape == (N_TEST, 3, 32, 32)
    diff = (ds.train_x.int() - torch.from_numpy(arrays["train_x"]).int()).abs().float().mean()
    assert diff < 8


def test_env_var_fallback(fake, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(fake["tgz"]))
    assert_same(load_dataset("cifar10", cache_dir=False), fake["arrays"])


def test_parallel_decoding_matches(fake, monkeypatch, tmp_path):
    monkeypatch.setattr(images, "_DECODE_CHUNK", 3)
    monkeypatch.setenv(data.WORKERS_ENV, "2")
    assert_same(load_dataset("cifar10", fake["tree"], cache_dir=False), fake["arrays"])
    assert_same(load_dataset("cifar10", fake["tgz"], cache_dir=False), fake["arrays"])
    bad = tmp_path / "badtree"
    write_image_tree(bad, fake["arrays"])
    (bad / "train" / "truck" / "0019.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"cannot decode image .*truck.0019\.png"):
        load_dataset("cifar10", bad, cache_dir=False)


# ---------------------------------------------------------------------- cache
def test_cache_hit_and_invalidation(fake, monkeypatch):
    cache, tgz = fake["cache"], fake["tgz"]
    load_dataset("cifar10", tgz, cache_dir=cache)
    files = list(cache.glob("cifar10-*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    real = cifar10._read_source

    def boom(src):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cifar10, "_read_source", boom)
    assert_same(load_dataset("cifar10", tgz, cache_dir=cache), fake["arrays"])        # from the cache
    # a changed source (new contents, size and mtime) is decoded again
    changed = fake_arrays(7)
    make_tar(write_image_tree(tgz.parent / "v2" / "cifar10-png", changed), tgz)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10", tgz, cache_dir=cache)
    monkeypatch.setattr(cifar10, "_read_source", real)
    assert_same(load_dataset("cifar10", tgz, cache_dir=cache), changed)
    assert len(list(cache.glob("cifar10-*.npz"))) == 1                                 # stale file removed
    # same for a folder: touching one image's mtime changes the key
    monkeypatch.setattr(cifar10, "_read_source", boom)
    with pytest.raises(AssertionError):
        load_dataset("cifar10", fake["tree"], cache_dir=cache)
    monkeypatch.setattr(cifar10, "_read_source", real)
    load_dataset("cifar10", fake["tree"], cache_dir=cache)
    img = fake["tree"] / "test" / "cat" / "0003.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(cifar10, "_read_source", boom)
    with pytest.raises(AssertionError):
        load_dataset("cifar10", fake["tree"], cache_dir=cache)


def test_default_cache_dir_from_env(fake, tmp_path):
    load_dataset("cifar10", fake["pickle"])
    assert len(list((tmp_path / "default-cache").glob("cifar10-*.npz"))) == 1


def test_corrupt_cache_is_ignored(fake):
    cache = fake["cache"]
    load_dataset("cifar10", fake["tgz"], cache_dir=cache)
    (file,) = cache.glob("cifar10-*.npz")
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="corrupt data cache"):
        assert_same(load_dataset("cifar10", fake["tgz"], cache_dir=cache), fake["arrays"])
    assert_same(Dataset("c", **{k: torch.from_numpy(v) for k, v in cifar10._read_cache(file).items()
                                if k != "classes"}, classes=list(CIFAR10_CLASSES), scale=255,
                        mean=(0, 0, 0), std=(1, 1, 1), augment=False), fake["arrays"])      # rewritten


def test_unwritable_cache_only_warns(fake, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the data cache"):
        assert_same(load_dataset("cifar10", fake["pickle"], cache_dir=blocker / "cache"), fake["arrays"])


# ---------------------------------------------------------------------- errors
def test_missing_path_and_no_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does-not-exist does not exist.*cifar-10-batches-py.*ImageFolder.*tar"):
        load_dataset("cifar10", tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match=r"--data PATH.*DTP_FAST_DATA"):
        load_dataset("cifar10")


def test_folder_without_layout(tmp_path):
    (tmp_path / "empty" / "stuff").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match=r"found no data set in .*empty.*cifar-10-batches-py.*ImageFolder"):
        load_dataset("cifar10", tmp_path / "empty")
    with pytest.raises(DatasetError, match=r"notes\.txt is a file but not a tar archive"):
        load_dataset("cifar10", tmp_path / "empty" / "notes.txt")


def test_truncated_pickle(fake):
    f = fake["pickle"] / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"data_batch_3: truncated or corrupt pickle") as info:
        load_dataset("cifar10", fake["pickle"], cache_dir=False)
    assert info.value.__cause__ is not None


def test_incomplete_pickle_folder(fake):
    (fake["pickle"] / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match=r"incomplete: missing data_batch_5"):
        load_dataset("cifar10", fake["pickle"], cache_dir=False)


def test_numpy1_style_pickle_loads():
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    x, y = cifar10._cifar_batch(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"), "old")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]


def test_pickle_with_foreign_code_is_refused(fake):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (fake["pickle"] / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DatasetError, match=r"test_batch.*refusing to load .*system"):
        load_dataset("cifar10", fake["pickle"], cache_dir=False)


def test_corrupt_image(fake):
    (fake["tree"] / "test" / "dog" / "0005.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"cannot decode image .*test.dog.0005\.png"):
        load_dataset("cifar10", fake["tree"], cache_dir=False)
    img = fake["tree"] / "test" / "dog" / "0005.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    img.write_bytes(img.read_bytes()[:60])                               # truncated PNG
    with pytest.raises(DatasetError, match=r"0005\.png"):
        load_dataset("cifar10", fake["tree"], cache_dir=False)


def test_image_of_another_size(fake):
    Image.fromarray(np.zeros((30, 32, 3), np.uint8)).save(fake["tree"] / "train" / "cat" / "0006.png")
    with pytest.raises(DatasetError, match=r"0006\.png is 32x30 pixels .* same size"):
        load_dataset("cifar10", fake["tree"], cache_dir=False)


def test_truncated_targz(fake, tmp_path):
    raw = fake["tgz"].read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"bad\.tar\.gz.*truncated or corrupt"):
        load_dataset("cifar10", bad, cache_dir=False)
    bad.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(DatasetError, match=r"bad\.tar\.gz.*truncated or corrupt"):
        load_dataset("cifar10", bad, cache_dir=False)


def test_wrong_class_count_and_mismatch(tmp_path):
    arrays = fake_arrays()
    for k in ("train", "test"):
        keep = arrays[f"{k}_y"] < 3
        arrays[f"{k}_x"], arrays[f"{k}_y"] = arrays[f"{k}_x"][keep], arrays[f"{k}_y"][keep]
    write_image_tree(tmp_path / "three", arrays)
    with pytest.raises(DatasetError, match=r"expected 10 classes, found 3 \(airplane, automobile, bird\)"):
        load_dataset("cifar10", tmp_path / "three", cache_dir=False)
    (tmp_path / "three" / "train" / "zebra").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "three" / "train" / "zebra" / "z.png")
    with pytest.raises(DatasetError, match=r"different classes \(only in train: zebra"):
        load_dataset("cifar10", tmp_path / "three", cache_dir=False)
    (tmp_path / "three" / "test" / "zebra").mkdir()
    with pytest.raises(DatasetError, match=r"test.zebra holds no images"):
        load_dataset("cifar10", tmp_path / "three", cache_dir=False)


def test_bad_labels_in_pickle(fake):
    f = fake["pickle"] / "test_batch"
    d = pickle.loads(f.read_bytes(), encoding="bytes")
    d[b"labels"][0] = 10
    f.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(DatasetError, match=r"test labels range over \[1, 10\] but there are 10 classes"):
        load_dataset("cifar10", fake["pickle"], cache_dir=False)


# ---------------------------------------------------------------------- Loader
def small_dataset(n_train: int = 50, n_test: int = 13, hw=(5, 7), augment=True) -> Dataset:
    """Pixel (0, 0, 0) of image i holds i % 256 and pixel (0, 0, 1) holds i // 256: samples are traceable."""
    g = torch.Generator().manual_seed(0)

    def images(n):
        x = torch.randint(0, 256, (n, 2, *hw), generator=g, dtype=torch.uint8)
        x[:, 0, 0, 0] = torch.arange(n) % 256
        x[:, 0, 0, 1] = torch.arange(n) // 256
        return x

    return Dataset("toy", images(n_train), torch.arange(n_train) % 3, images(n_test), torch.arange(n_test) % 3,
                   classes=["a", "b", "c"], scale=255, mean=(0.5, 0.25), std=(0.5, 0.2), augment=augment)


def ids(x: torch.Tensor, ds: Dataset) -> torch.Tensor:
    """Recover sample ids from normalised, unaugmented batches."""
    raw = torch.round((x[:, 0] * ds.std[0] + ds.mean[0]) * ds.scale).long()
    return raw[:, 0, 0] + 256 * raw[:, 0, 1]


def test_loader_shapes_len_and_normalisation():
    ds = small_dataset()
    ld = Loader(ds, "train", 16, augment=False)
    assert len(ld) == 4 and ld.shuffle and not ld.augment
    batches = list(ld)
    assert [len(x) for x, _ in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (16, 2, 5, 7) and y.dtype == torch.int64 and y.shape == (16,)
    order = ld.epoch_order()
    expect = (ds.train_x[order[:16]].double() / 255 - torch.tensor([0.5, 0.25]).view(1, 2, 1, 1).double()) \
        / torch.tensor([0.5, 0.2]).view(1, 2, 1, 1).double()
    torch.testing.assert_close(x.double(), expect, atol=1e-5, rtol=0)
    assert torch.equal(y, ds.train_y[order[:16]])
    assert len(Loader(ds, "train", 16, drop_last=True)) == 3
    assert len(list(Loader(ds, "train", 16, drop_last=True))) == 3
    assert len(Loader(ds, "train", 16, limit_batches=2)) == 2 == len(list(Loader(ds, "train", 16, limit_batches=2)))
    assert len(Loader(ds, "train", 16, limit_batches=10)) == 4
    assert len(Loader(ds, "train", 100)) == 1
    assert len(Loader(ds, "test", 5)) == 3
    x64, _ = next(iter(Loader(ds, "test", 5, dtype=torch.float64)))
    xbf, _ = next(iter(Loader(ds, "test", 5, dtype=torch.bfloat16)))
    assert x64.dtype == torch.float64 and xbf.dtype == torch.bfloat16
    torch.testing.assert_close(xbf.double(), x64, atol=0.02, rtol=0.01)
    with pytest.raises(ValueError, match="split"):
        Loader(ds, "val", 4)


def test_loader_deterministic_per_seed_and_epoch():
    ds = small_dataset()

    def run(epoch, seed=0, **kw):
        ld = Loader(ds, "train", 8, seed=seed, **kw)
        ld.set_epoch(epoch)
        return list(ld)

    def same(a, b):
        return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))

    assert same(run(3), run(3))
    assert not same(run(3), run(4))
    assert not same(run(3), run(3, seed=1))
    # a fresh loader at epoch 3 equals one that went through epochs 0..2 first (resume)
    ld = Loader(ds, "train", 8)
    for e in range(3):
        ld.set_epoch(e)
        list(ld)
    ld.set_epoch(3)
    assert same(list(ld), run(3))
    # limit_batches yields a prefix of the full epoch
    assert same(run(2, limit_batches=2), run(2)[:2])


def test_loader_every_sample_once_and_test_split_plain():
    ds = small_dataset(n_train=300)
    for epoch in (0, 1):
        ld = Loader(ds, "train", 32, augment=False)
        ld.set_epoch(epoch)
        seen = torch.cat([ids(x, ds) for x, _ in ld])
        assert sorted(seen.tolist()) == list(range(300)) and seen.tolist() != list(range(300))
        assert torch.equal(seen, ld.epoch_order())
    test = Loader(ds, "test", 4)
    assert not test.shuffle and not test.augment
    test.set_epoch(5)
    xs, ys = zip(*test)
    assert torch.equal(ids(torch.cat(xs), ds), torch.arange(13)) and torch.equal(torch.cat(ys), ds.test_y)
    # augmented train batches hold the same labels, in the same order, as unaugmented ones
    a, b = Loader(ds, "train", 32), Loader(ds, "train", 32, augment=False)
    assert a.augment
    assert all(torch.equal(ya, yb) for (_, ya), (_, yb) in zip(a, b))
    assert not all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))


def test_dataset_moved_to_device_once():
    ds = small_dataset()
    ld = Loader(ds, "train", 8)
    list(ld)
    (x1, _), = [v for k, v in ds._device_cache.items() if k[0] == "train"]
    list(Loader(ds, "train", 8))
    (x2, _), = [v for k, v in ds._device_cache.items() if k[0] == "train"]
    assert x1 is x2


# ---------------------------------------------------------------------- augmentation
def reference_augment(x, flip, dy, dx, pad=4):
    """Slow per-image loop: flip, replicate-pad, crop."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(len(x)):
        img = x[i:i + 1].double()
        if flip[i]:
            img = img.flip(-1)
        img = F.pad(img, (pad, pad, pad, pad), mode="replicate")
        out[i] = img[0, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w].to(x.dtype)
    return out


@pytest.mark.parametrize("shape,pad", [((9, 3, 7, 11), 4), ((5, 1, 3, 2), 4), ((6, 2, 13, 13), 2)])
def test_augment_batch_matches_reference(shape, pad):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    flip, dy, dx = draw_augmentation(shape[0], g, pad)
    assert flip.dtype == torch.bool and int(dy.min()) >= 0 and int(dx.max()) <= 2 * pad
    assert torch.equal(augment_batch(x, flip, dy, dx, pad=pad), reference_augment(x, flip, dy, dx, pad))
    xf = torch.randn(shape, generator=g)
    assert torch.equal(augment_batch(xf, flip, dy, dx, pad=pad), reference_augment(xf, flip, dy, dx, pad))


def test_augment_batch_identity_flip_and_edges():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    n = len(x)
    four = torch.full((n,), 4)
    assert torch.equal(augment_batch(x, torch.zeros(n, dtype=torch.bool), four, four), x)
    assert torch.equal(augment_batch(x, torch.ones(n, dtype=torch.bool), four, four), x.flip(-1))
    zero = torch.zeros(n, dtype=torch.long)
    out = augment_batch(x, torch.zeros(n, dtype=torch.bool), zero, zero)      # shift down-right by 4
    # the top-left 4x4 corner replicates pixel (0, 0); row 0 beyond it replicates row 0 of the image
    assert torch.equal(out[:, :, :4, :4], x[:, :, :1, :1].expand(-1, -1, 4, 4))
    assert torch.equal(out[:, :, 0, 4], x[:, :, 0, 0])
    assert torch.equal(out[:, :, 3, 4], x[:, :, 0, 0])
    eight = torch.full((n,), 8)
    out = augment_batch(x, torch.zeros(n, dtype=torch.bool), eight, eight)    # shift up-left by 4
    assert torch.equal(out[:, :, -1, -1], x[:, :, -1, -1]) and torch.equal(out[:, :, 0, 0], x[:, :, -1, -1])


# ---------------------------------------------------------------------- the real data set
@pytest.mark.slow
@pytest.mark.skipif(not REAL_TARBALL.exists(), reason=f"{REAL_TARBALL} not present")
def test_real_cifar10_tarball(tmp_path, capsys):
    t0 = time.perf_counter()
    ds = load_dataset("cifar10", REAL_TARBALL, cache_dir=tmp_path)
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = load_dataset("cifar10", REAL_TARBALL, cache_dir=tmp_path)
    cached_s = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n[cifar10-jpeg.tar.gz] decode {decode_s:.1f} s, from cache {cached_s:.2f} s")
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.test_x.shape == (10000, 3, 32, 32)
    assert ds.classes == list(CIFAR10_CLASSES)
    assert ds.train_y.bincount().tolist() == [5000] * 10 and ds.test_y.bincount().tolist() == [1000] * 10
    assert torch.equal(ds.train_x, again.train_x) and torch.equal(ds.test_y, again.test_y)
    mean = ds.train_x[::10].float().mean((0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor(data.CIFAR10_MEAN), atol=0.01, rtol=0)
