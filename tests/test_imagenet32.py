"""Tests of the imagenet32 data set (downsampled ImageNet 32x32) and of the Loader's streamed (large-data) path."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dtp_fast import data
from dtp_fast.data import imagenet32
from dtp_fast.data import IMAGENET_MEAN, IMAGENET_STD, Dataset, DatasetError, Loader, load_dataset

PER_BATCH, N_VAL = 7, 5
N_TRAIN = 10 * PER_BATCH
TRAIN_FILES = [f"train_data_batch_{i}.npz" for i in range(1, 11)]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "default-cache"))


def special_image() -> np.ndarray:
    """One (3072,) row with distinct, recognisable R, G and B planes."""
    r = (np.arange(1024) % 251).reshape(32, 32)
    g = np.broadcast_to(np.arange(32)[:, None] * 7 % 256, (32, 32))      # depends on the row
    b = np.broadcast_to(np.arange(32)[None, :] * 5 + 40, (32, 32))      # depends on the column
    return np.concatenate([r.ravel(), g.ravel(), b.ravel()]).astype(np.uint8)


def fake_arrays(seed: int = 0) -> dict:
    """70 train images (10 batches of 7) + 5 validation images, labels 1-based spanning 1..1000."""
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, (N_TRAIN, 3072), dtype=np.uint8)
    train[3] = special_image()
    labels = rng.integers(1, 1001, N_TRAIN)
    labels[0], labels[-1] = 1, 1000
    val = rng.integers(0, 256, (N_VAL, 3072), dtype=np.uint8)
    val_labels = np.array([1000, 1, 500, 2, 999])
    return {"train": train, "train_labels": labels, "val": val, "val_labels": val_labels}


def write_npz(folder: Path, arrays: dict, val_folder: Path | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(10):
        sl = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        np.savez(folder / TRAIN_FILES[i], data=arrays["train"][sl], labels=arrays["train_labels"][sl],
                 mean=np.zeros(3072))
    val_folder = val_folder or folder
    val_folder.mkdir(parents=True, exist_ok=True)
    np.savez(val_folder / "val_data.npz", data=arrays["val"], labels=arrays["val_labels"])
    return folder


def write_pickles(folder: Path, arrays: dict) -> Path:
    """The pickled release: the same names without .npz, each a pickled dict."""
    folder.mkdir(parents=True)
    for i in range(10):
        sl = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        d = {"data": arrays["train"][sl], "labels": arrays["train_labels"][sl].tolist(), "mean": np.zeros(3072)}
        (folder / f"train_data_batch_{i + 1}").write_bytes(pickle.dumps(d, protocol=4))
    d = {"data": arrays["val"], "labels": arrays["val_labels"].tolist()}
    (folder / "val_data").write_bytes(pickle.dumps(d, protocol=4))
    return folder


def assert_same(ds: Dataset, arrays: dict) -> None:
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.train_y.numpy(), arrays["train_labels"] - 1)
    np.testing.assert_array_equal(ds.test_x.numpy(), arrays["val"].reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["val_labels"] - 1)


@pytest.fixture
def fake(tmp_path) -> dict:
    arrays = fake_arrays()
    return {"arrays": arrays, "dir": write_npz(tmp_path / "Imagenet32_npz", arrays), "cache": tmp_path / "cache"}


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


# ---------------------------------------------------------------------- loading
def test_shapes_labels_and_pixel_layout(fake):
    ds = load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert ds.name == "imagenet32" and ds.in_shape == (3, 32, 32) and ds.num_classes == 1000
    assert ds.classes == [str(i) for i in range(1000)]
    assert ds.train_x.shape == (N_TRAIN, 3, 32, 32) and ds.test_x.shape == (N_VAL, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64 and ds.test_y.dtype == torch.int64
    assert int(ds.train_y.min()) == 0 and int(ds.train_y.max()) == 999            # 1-based -> 0-based
    assert ds.mean == IMAGENET_MEAN and ds.std == IMAGENET_STD and ds.scale == 255.0 and ds.augment
    assert_same(ds, fake["arrays"])
    row = special_image()
    img = ds.train_x[3].numpy()
    np.testing.assert_array_equal(img[0], row[:1024].reshape(32, 32))              # R plane
    np.testing.assert_array_equal(img[1], row[1024:2048].reshape(32, 32))          # G plane
    np.testing.assert_array_equal(img[2], row[2048:].reshape(32, 32))              # B plane
    assert (img[1, 5] == 35).all() and (img[2][:, 2] == 50).all()                   # rows / columns not swapped


def test_layouts_env_var_and_pickles(fake, tmp_path, monkeypatch):
    arrays = fake["arrays"]
    # a folder that contains the folder; a file inside it
    assert_same(load_dataset("imagenet32", fake["dir"].parent, cache_dir=fake["cache"]), arrays)
    assert_same(load_dataset("imagenet32", fake["dir"] / "val_data.npz", cache_dir=fake["cache"]), arrays)
    # train and val unpacked into sibling folders, as the two zips of the release do
    root = tmp_path / "split-layout"
    write_npz(root / "Imagenet32_train_npz", arrays, val_folder=root / "Imagenet32_val_npz")
    ds = load_dataset("imagenet32", root, cache_dir=fake["cache"])
    assert_same(ds, arrays)
    assert ds.memory_mapped
    # the environment variable
    monkeypatch.setenv(data.DATA_ENV, str(fake["dir"]))
    assert_same(load_dataset("imagenet32", cache_dir=fake["cache"]), arrays)
    # the pickled release
    assert_same(load_dataset("imagenet32", write_pickles(tmp_path / "pickled", arrays), cache_dir=False), arrays)
    # no cache: in memory
    ds = load_dataset("imagenet32", fake["dir"], cache_dir=False)
    assert_same(ds, arrays)
    assert not ds.memory_mapped


def test_class_names_from_map_clsloc(fake):
    lines = [f"n{i:08d} {i + 1} class_{i % 999}" for i in range(1000)]      # class_0 appears twice
    (fake["dir"] / "map_clsloc.txt").write_text("\n".join(reversed(lines)) + "\n")
    ds = load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert ds.classes[1] == "class_1" and ds.classes[998] == "class_998"
    assert ds.classes[0] == "class_0 (n00000000)" and ds.classes[999] == "class_0 (n00000999)"
    (fake["dir"] / "map_clsloc.txt").write_text("n0001 1 a\n")
    with pytest.warns(UserWarning, match="map_clsloc.txt"):
        assert load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"]).classes[5] == "5"


def test_cache_written_once_reused_and_invalidated(fake, monkeypatch):
    cache = fake["cache"]
    load_dataset("imagenet32", fake["dir"], cache_dir=cache)
    names = cache_files(cache)
    assert len(names) == 4 and all(n.startswith("imagenet32-") and n.endswith(".npy") for n in names)
    assert {n.split("-", 3)[-1] for n in names} == {"train.npy", "train-labels.npy", "test.npy", "test-labels.npy"}
    x = np.load(cache / next(n for n in names if n.endswith("-train.npy")), mmap_mode="r")
    assert x.dtype == np.uint8 and x.shape == (N_TRAIN, 3, 32, 32)
    real_read, real_check = imagenet32._read_imagenet32_batch, imagenet32._check_imagenet32_file

    def boom(f):
        raise AssertionError(f"read {f.path} again")

    monkeypatch.setattr(imagenet32, "_read_imagenet32_batch", boom)
    monkeypatch.setattr(imagenet32, "_check_imagenet32_file", boom)
    assert_same(load_dataset("imagenet32", fake["dir"], cache_dir=cache), fake["arrays"])    # from the cache
    assert cache_files(cache) == names
    # a changed source file (new contents, mtime) is converted again, and the old cache removed
    changed = fake_arrays(5)
    write_npz(fake["dir"], changed)
    with pytest.raises(AssertionError, match="again"):
        load_dataset("imagenet32", fake["dir"], cache_dir=cache)
    monkeypatch.setattr(imagenet32, "_read_imagenet32_batch", real_read)
    monkeypatch.setattr(imagenet32, "_check_imagenet32_file", real_check)
    assert_same(load_dataset("imagenet32", fake["dir"], cache_dir=cache), changed)
    assert len(cache_files(cache)) == 4 and cache_files(cache) != names


def test_corrupt_cache_is_rebuilt_and_unwritable_cache_warns(fake, tmp_path):
    cache = fake["cache"]
    load_dataset("imagenet32", fake["dir"], cache_dir=cache)
    (xfile,) = cache.glob("*-train.npy")
    xfile.write_bytes(xfile.read_bytes()[:5000])
    with pytest.warns(UserWarning, match="corrupt data cache"):
        assert_same(load_dataset("imagenet32", fake["dir"], cache_dir=cache), fake["arrays"])
    assert xfile.stat().st_size == 128 + N_TRAIN * 3072
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot write the data cache"):
        ds = load_dataset("imagenet32", fake["dir"], cache_dir=blocker / "cache")
    assert_same(ds, fake["arrays"])
    assert not ds.memory_mapped


def test_tensors_are_memory_mapped(fake):
    ds = load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert ds.memory_mapped
    (xfile,) = fake["cache"].glob("*-train.npy")
    maps = Path("/proc/self/maps")
    if maps.exists():
        ptr = ds.train_x.data_ptr()
        spans = [line.split()[0].split("-") for line in maps.read_text().splitlines() if str(xfile) in line]
        assert any(int(lo, 16) <= ptr < int(hi, 16) for lo, hi in spans), "train_x is not a map of the cache"
    # copy-on-write: writing to the tensor does not change the cache
    before = int(ds.train_x[0, 0, 0, 0])
    ds.train_x[0, 0, 0, 0] = (before + 1) % 256
    assert int(np.load(xfile, mmap_mode="r")[0, 0, 0, 0]) == before


# ---------------------------------------------------------------------- loader: streamed path
def batches(loader) -> list:
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


@pytest.mark.parametrize("augment", [False, True])
def test_streamed_batches_equal_in_memory_batches(fake, augment):
    mapped = load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    plain = Dataset("plain", mapped.train_x.clone(), mapped.train_y.clone(), mapped.test_x.clone(),
                    mapped.test_y.clone(), mapped.classes, 255, IMAGENET_MEAN, IMAGENET_STD, True)
    for epoch in (0, 3):
        kw = dict(augment=augment, seed=11)
        ref = Loader(plain, "train", 16, **kw)
        ref.set_epoch(epoch)
        assert not ref.streaming
        expect = batches(ref)
        assert [len(y) for _, y in expect] == [16, 16, 16, 16, 6]
        for ds, extra in ((plain, dict(stream_threshold=1)), (mapped, {}), (plain, dict(stream=True))):
            ld = Loader(ds, "train", 16, **kw, **extra)
            ld.set_epoch(epoch)
            assert ld.streaming
            assert same(batches(ld), expect)
        fast = Loader(mapped, "train", 16, stream=False, **kw)
        fast.set_epoch(epoch)
        assert not fast.streaming and same(batches(fast), expect)
    # the order is the shuffle's, labels line up with images
    ld = Loader(mapped, "train", 16, augment=False, seed=11)
    order = ld.epoch_order()
    ys = torch.cat([y for _, y in ld])
    assert torch.equal(ys, mapped.train_y[order]) and not torch.equal(order, torch.arange(N_TRAIN))
    # the unshuffled test split, drop_last and limit_batches, and stopping half-way
    assert same(batches(Loader(mapped, "test", 2)), batches(Loader(plain, "test", 2)))
    assert same(batches(Loader(mapped, "train", 16, drop_last=True)), batches(Loader(plain, "train", 16,
                                                                                      drop_last=True)))
    assert same(batches(Loader(mapped, "train", 16, limit_batches=2)), batches(Loader(plain, "train", 16))[:2])
    it = iter(Loader(mapped, "train", 8))
    next(it)
    it.close()
    assert "streamed" in repr(Loader(mapped, "train", 8))


def test_streamed_dtype_and_normalisation(fake):
    ds = load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    x, y = next(iter(Loader(ds, "test", 5, dtype=torch.float64)))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(x, (ds.test_x.double() / 255 - mean) / std)
    assert torch.equal(y, ds.test_y)
    xb, _ = next(iter(Loader(ds, "test", 5, dtype=torch.bfloat16)))
    assert xb.dtype == torch.bfloat16


# ---------------------------------------------------------------------- errors
def assert_no_temp_files(cache: Path) -> None:
    assert not cache.exists() or not list(cache.glob(".*.tmp"))


def test_missing_files(fake, tmp_path):
    (fake["dir"] / "train_data_batch_3.npz").unlink()
    (fake["dir"] / "val_data.npz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    msg = str(err.value)
    assert "train_data_batch_3.npz" in msg and "val_data.npz" in msg and "train_data_batch_2.npz" not in msg
    assert str(fake["dir"]) in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="found no Imagenet32 files"):
        load_dataset("imagenet32", empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("imagenet32", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="DTP_FAST_DATA"):
        load_dataset("imagenet32")


@pytest.mark.parametrize("data_shape,labels_shape,match", [
    ((PER_BATCH, 3, 32, 32), (PER_BATCH,), r"'data' must have shape \(N, 3072\)"),
    ((PER_BATCH, 12288), (PER_BATCH,), "64x64"),
    ((PER_BATCH, 3072), (PER_BATCH, 1), r"'labels' must have shape \(N,\)"),
    ((PER_BATCH, 3072), (PER_BATCH - 1,), "7 images but 'labels' holds 6"),
])
def test_wrong_shapes(fake, data_shape, labels_shape, match):
    bad = fake["dir"] / "train_data_batch_4.npz"
    np.savez(bad, data=np.zeros(data_shape, np.uint8), labels=np.ones(labels_shape, np.int64))
    with pytest.raises(DatasetError, match=match) as err:
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert "train_data_batch_4.npz" in str(err.value)
    assert_no_temp_files(fake["cache"])


def test_dtypes(fake):
    bad = fake["dir"] / "val_data.npz"
    np.savez(bad, data=np.zeros((N_VAL, 3072), np.float32), labels=np.ones(N_VAL, np.int64))
    with pytest.raises(DatasetError, match="float32.*cannot be cast") as err:
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert "val_data.npz" in str(err.value)
    np.savez(bad, data=np.full((N_VAL, 3072), 300, np.int16), labels=np.ones(N_VAL, np.int64))
    with pytest.raises(DatasetError, match=r"values in \[300, 300\]"):
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    # integers that fit are cast; float labels with integral values are accepted
    a = fake["arrays"]
    np.savez(bad, data=a["val"].astype(np.int16), labels=a["val_labels"].astype(np.float64))
    assert_same(load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"]), a)


@pytest.mark.parametrize("label,found", [(0, "min 0"), (1001, "max 1001")])
def test_labels_out_of_range(fake, label, found):
    a = fake["arrays"]
    labels = a["train_labels"][6 * PER_BATCH:7 * PER_BATCH].copy()
    labels[2] = label
    np.savez(fake["dir"] / "train_data_batch_7.npz", data=a["train"][6 * PER_BATCH:7 * PER_BATCH], labels=labels)
    with pytest.raises(DatasetError, match=found) as err:
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert "train_data_batch_7.npz" in str(err.value) and "1..1000" in str(err.value)
    assert_no_temp_files(fake["cache"])
    assert not list(fake["cache"].glob("*-train.npy"))


def test_truncated_and_corrupt_files(fake, tmp_path):
    f = fake["dir"] / "train_data_batch_9.npz"
    full = f.read_bytes()
    f.write_bytes(full[: len(full) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert "train_data_batch_9.npz" in str(err.value)
    # damaged pixel bytes with an intact zip directory: found while converting (CRC)
    damaged = bytearray(full)
    i = full.index(b"NUMPY", full.index(b"data.npy")) + 200
    damaged[i:i + 50] = bytes(50)
    f.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="train_data_batch_9.npz"):
        load_dataset("imagenet32", fake["dir"], cache_dir=fake["cache"])
    assert_no_temp_files(fake["cache"])
    # a pickled file that is cut short
    pick = write_pickles(tmp_path / "pickled", fake["arrays"])
    (pick / "val_data").write_bytes((pick / "val_data").read_bytes()[:100])
    with pytest.raises(DatasetError, match="val_data"):
        load_dataset("imagenet32", pick, cache_dir=fake["cache"])
