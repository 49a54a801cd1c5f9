"""The data layer: whole data sets held in memory, batched on the training device.

* :class:`Dataset` holds a data set as uint8 image tensors (N, C, H, W) plus
  int64 labels, with what is needed to normalise it (``scale``, ``mean``,
  ``std``) and whether the paper's augmentation applies by default.
* :func:`load_dataset` reads a data set by name (``"digits"``, ``"cifar10"``,
  ``"imagenet32"``; more can be added with :func:`register_dataset`).  CIFAR-10
  is read from the pickled ``cifar-10-batches-py`` folder, an ImageFolder tree
  (``ROOT/train/<class>/*.jpg``, ``ROOT/test/<class>/...``) or a tar archive of
  either.  Decoded arrays are cached as an uncompressed ``.npz``.  ImageNet
  32x32 is read from its ``train_data_batch_1..10.npz`` + ``val_data.npz``
  files and converted once, batch by batch, into one raw ``.npy`` per split
  that is memory-mapped (the 3.9 GB of images are never all in memory).
* :class:`Loader` yields normalised float batches on the device.  The shuffle
  order and the augmentation of an epoch depend only on ``(seed, epoch)``
  (drawn on the CPU), so a resumed run sees exactly the batches an
  uninterrupted one would, on any device.  Small splits are moved to the
  device once; large (or memory-mapped) ones are gathered batch by batch on
  the CPU, one batch ahead in a background thread, and copied over.
* :func:`augment_batch` is the paper's augmentation (random horizontal flip,
  then a random crop of the original size from the image padded by 4 pixels
  with edge replication), batched on the device.

Modules: :mod:`.registry` (Dataset, registry, load_dataset), :mod:`.digits`,
:mod:`.cifar10` (with :mod:`.images`, image decoding, and :mod:`.pickles`,
pickled batches), :mod:`.imagenet32`, :mod:`.cache` (cache locations, names
and safe writes), :mod:`.augment` and :mod:`.loader`.  Importing this package
registers the three data sets.
"""
from . import cifar10, digits, imagenet32  # noqa: F401 - importing a loader module registers its data set
from .augment import augment_batch, draw_augmentation, random_augment
from .cache import CACHE_ENV, default_cache_dir
from .cifar10 import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from .images import WORKERS_ENV
from .imagenet32 import IMAGENET_MEAN, IMAGENET_STD
from .loader import Loader, epoch_seed
from .registry import DATA_ENV, Dataset, DatasetError, available_datasets, describe, load_dataset, register_dataset

__all__ = [
    "DATA_ENV", "CACHE_ENV", "DatasetError", "Dataset", "load_dataset", "register_dataset",
    "available_datasets", "default_cache_dir", "Loader", "augment_batch", "draw_augmentation",
    "random_augment", "epoch_seed", "describe", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
