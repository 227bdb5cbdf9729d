"""Datasets, all read from local files (none downloaded), and the batches the training loop consumes."""

from __future__ import annotations

from collections.abc import Callable

from byol.data.arrays import ArrayDataset, cifar10, cifar100, fashion_mnist, stl10, synthetic
from byol.data.folder import ImageFolder
from byol.data.loaders import Batch, Dataset, Files, TrainBatches, epoch_permutation, eval_batches
from byol.data.shards import ShardSet, read_manifest, use_cache
from byol.errors import ConfigError


def image_folder(data_dir: str, split: str, labels: str) -> ImageFolder | ShardSet:
    """A folder of image files, or a folder `byol prepare` wrote from one (read through its shards)."""
    manifest = read_manifest(data_dir) if data_dir else None
    return ShardSet.open(data_dir, split, manifest) if manifest else ImageFolder.scan(data_dir, split, labels)


# name -> reader(split, data_dir, image_size, labels); labels (auto, folders, none) matters to image folders only
# (a prepared folder keeps the labels it was prepared with).
DATASETS: dict[str, Callable[[str, str, int, str], Dataset]] = {
    "synthetic": lambda split, data_dir, size, labels: synthetic(split, image_size=size),
    "fashion-mnist": lambda split, data_dir, size, labels: fashion_mnist(split, data_dir),
    "cifar10": lambda split, data_dir, size, labels: cifar10(split, data_dir),
    "cifar100": lambda split, data_dir, size, labels: cifar100(split, data_dir),
    "stl10": lambda split, data_dir, size, labels: stl10(split, data_dir),
    "imagefolder": lambda split, data_dir, size, labels: image_folder(data_dir, split, labels),
}
# What each dataset pretrains on by default (STL-10: its 100k unlabelled images plus the labelled train set).
PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}
# The split evaluations test on (ImageNet-style folders: the validation set is the public test set).
TEST_SPLIT = {"imagefolder": "val"}


def load_dataset(name: str, split: str, data_dir: str = "", image_size: int = 32, labels: str = "auto") -> Dataset:
    """A split of a dataset by name; ``image_size`` only matters for the synthetic one, ``labels`` for image
    folders (``byol.data.folder``)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets are: {', '.join(DATASETS)}")
    return DATASETS[name](split, data_dir, image_size, labels)


def labelled(dataset: Dataset) -> bool:
    """Whether a dataset has classes and at least one image with a label: what a kNN bank, a probe or a
    classifier needs."""
    return bool(dataset.classes) and bool((dataset.labels >= 0).any())


def split_name(name: str, role: str) -> str:
    """The split of dataset ``name`` that plays ``role``: pretrain, train (evaluation training) or test."""
    if role == "pretrain":
        return PRETRAIN_SPLIT.get(name, "train")
    return TEST_SPLIT.get(name, "test") if role == "test" else role


def load_split(name: str, role: str, data_dir: str = "", image_size: int = 32, labels: str = "auto") -> Dataset:
    """:func:`load_dataset` of the split that plays ``role`` (see :func:`split_name`)."""
    return load_dataset(name, split_name(name, role), data_dir, image_size, labels)


__all__ = [
    "DATASETS",
    "PRETRAIN_SPLIT",
    "TEST_SPLIT",
    "ArrayDataset",
    "Batch",
    "Dataset",
    "Files",
    "ImageFolder",
    "ShardSet",
    "TrainBatches",
    "epoch_permutation",
    "eval_batches",
    "labelled",
    "load_dataset",
    "load_split",
    "split_name",
    "use_cache",
]
