"""The Trainer on standard torch.utils.data sources (issue 13): a map-style Dataset trains the weights of
the same data as a dtp_fast data set, a user's DataLoader is used as it is, an image-file data set decodes
through the user's own transform, and bad items are named."""
import copy
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dtp_fast
from dtp_fast import TrainConfig, Trainer
from dtp_fast.api import make_run

RUN = dict(algo="ldrl", dtype="float64", batch_size=16, limit_batches=4, epochs=2, progress=False, diagnostics=True,
           feedback_iters=[3, 2, 4], augment=False, device="cpu")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def _digits_tensors(data, split):
    """A split as float64 tensors normalised as dtp_fast's loader does."""
    n = len(data.split(split)[1])
    return next(iter(dtp_fast.Loader(data, split, n, shuffle=False, augment=False, dtype=torch.float64)))


def test_a_map_style_dataset_trains_what_the_dtp_fast_data_set_does():
    """The same images as a TensorDataset: the same shuffle (drawn from (seed, epoch)), batches, weights."""
    ours = make_run("lenet", "digits", **RUN)
    data = ours.dataset
    theirs = Trainer(copy.deepcopy(ours.net), TensorDataset(*_digits_tensors(data, "train")),
                     copy.deepcopy(ours.config), test=TensorDataset(*_digits_tensors(data, "test")))
    a, b = ours.fit(), theirs.fit()
    for k, v in ours.net.state_dict().items():
        torch.testing.assert_close(theirs.net.state_dict()[k], v, rtol=1e-9, atol=1e-12)
    assert b["test_accuracy"] == a["test_accuracy"] and b["dataset"] == "TensorDataset"
    assert theirs.history[-1]["feedback_iterations"] == ours.history[-1]["feedback_iterations"]


def test_a_users_dataloader_is_used_as_it_is():
    data = dtp_fast.load_dataset("digits")
    x, y = _digits_tensors(data, "train")
    loader = DataLoader(TensorDataset(x[:50], y[:50]), batch_size=20, shuffle=True,
                        generator=torch.Generator().manual_seed(0))            # 20, 20, 10
    net = dtp_fast.lenet(data.in_shape, data.num_classes, channels=(4, 8), hidden=16).double()
    trainer = Trainer(net, loader, TrainConfig(**{**RUN, "limit_batches": None, "epochs": 1}),
                      test=DataLoader(TensorDataset(*_digits_tensors(data, "test")), batch_size=100))
    summary = trainer.fit()
    assert trainer.step == 3 and trainer.totals["images"] == 50
    assert summary["test_accuracy"] is not None and summary["alignment"]


class JpegFolder(Dataset):
    """An ImageFolder-like data set over the shared CIFAR-10 JPEG archive (a few images), decoded with
    Pillow and turned into normalised tensors by a transform, as a torchvision user's would be."""

    def __init__(self, split, per_class=4, transform=None):
        from PIL import Image

        self.items, self.transform = [], transform
        with tarfile.open(SHARED) as tar:
            counts: dict = {}
            for m in tar:
                parts = m.name.split("/")
                if len(parts) == 4 and parts[1] == split and m.isfile() and counts.get(parts[2], 0) < per_class:
                    counts[parts[2]] = counts.get(parts[2], 0) + 1
                    img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
                    self.items.append((img, parts[2]))
        self.classes = sorted({c for _, c in self.items})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, cls = self.items[i]
        return (self.transform(img) if self.transform else img), self.classes.index(cls)


def _to_tensor(img):
    return (torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255 - 0.5) / 0.25


@pytest.mark.skipif(not SHARED.exists(), reason=f"the shared CIFAR-10 copy is not at {SHARED}")
def test_an_image_folder_data_set_trains_through_its_transform():
    train, test = JpegFolder("train", transform=_to_tensor), JpegFolder("test", 2, transform=_to_tensor)
    net = dtp_fast.simple_vgg((3, 32, 32), 10, channels=(8, 8, 16, 16, 32))
    trainer = Trainer(net, train, TrainConfig(algo="ldrl", batch_size=8, epochs=1, progress=False,
                                              feedback_iters=2, device="cpu"), test=test)
    summary = trainer.fit()
    assert trainer.step == 5 and summary["dataset"] == "JpegFolder" and 0 <= summary["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="transforms.ToTensor"):
        Trainer(copy.deepcopy(net), JpegFolder("train", 1), TrainConfig(epochs=1, progress=False),
                test=test).fit()


@pytest.mark.parametrize("items, match", [
    ([("not an image", 0)] * 4, "not tensors"),
    ([(object(), 0)] * 4, "cannot be batched"),
    ([(torch.zeros(1, 8, 8, dtype=torch.uint8), 0)] * 4, "convert them to float"),
    ([(torch.zeros(1, 9, 9), 0)] * 4, r"images of shape \(1, 9, 9\), but the network expects \(1, 8, 8\)"),
    ([(torch.zeros(1, 8, 8), 12)] * 4, "labels from 12 to 12, but the network has 10 outputs"),
    ([(torch.zeros(1, 8, 8), 0.5)] * 4, "integer class indices"),
    ([(torch.zeros(1, 8, 8), 0, "extra")] * 4, r"an \(images, labels\) pair"),
])
def test_bad_items_are_named(items, match):
    net = dtp_fast.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16)
    trainer = Trainer(net, items_dataset(items), TrainConfig(batch_size=2, epochs=1, progress=False),
                      test=items_dataset(items))
    with pytest.raises(ValueError, match=match):
        trainer.fit()


class items_dataset(Dataset):  # noqa: N801 - a tiny list-backed map-style data set
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_torch_sources_need_a_test_split_and_one_process():
    net = dtp_fast.lenet((1, 8, 8), 10, channels=(4, 8), hidden=16)
    data = items_dataset([(torch.zeros(1, 8, 8), 0)] * 4)
    with pytest.raises(ValueError, match="needs test="):
        Trainer(net, data, TrainConfig(progress=False))
    with pytest.raises(ValueError, match="test= goes with a torch.utils.data"):
        Trainer(net, dtp_fast.load_dataset("digits"), TrainConfig(progress=False), test=data)
    with pytest.raises(TypeError, match="IterableDataset"):
        Trainer(net, torch.utils.data.IterableDataset(), TrainConfig(progress=False), test=data)
