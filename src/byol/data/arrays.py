"""In-memory datasets (uint8 image tensors) and their readers: synthetic, Fashion-MNIST, CIFAR, STL-10.

Every reader reads local files in the dataset's standard layout; nothing is downloaded. A missing file or a
file of the wrong format raises :class:`~byol.errors.DataError` naming what was expected where.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import pickle
import struct
import typing
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byol.errors import DataError, first_line


@dataclass(frozen=True, kw_only=True)
class ArrayDataset:
    """Images as uint8 (N, C, H, W), labels as int64 (N,) (−1 where unlabelled), normalisation statistics."""

    name: str
    images: Tensor
    labels: Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def subset(self, indices: Tensor) -> ArrayDataset:
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def checked(
    name: str, where: Path, *, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], **stats: Any
) -> ArrayDataset:
    """An :class:`ArrayDataset` from what a reader found in ``where``, or :class:`DataError` naming what does not
    fit: images (N, C, H, W) of bytes, one integer label per image in [0, classes) (−1: unlabelled)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"{name} in {where}: expected images of shape (N, C, H, W) with N > 0, found {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{name} in {where}: {images.shape[0]} images but labels of shape {labels.shape}")
    if not classes:
        raise DataError(f"{name} in {where}: no class names")
    if labels.size and (labels.min() < -1 or labels.max() >= len(classes)):
        raise DataError(
            f"{name} in {where}: labels range over [{labels.min()}, {labels.max()}], "
            f"but there are {len(classes)} classes (valid labels 0..{len(classes) - 1}, -1 for unlabelled)"
        )
    return ArrayDataset(
        name=name, images=torch.from_numpy(np.array(images, dtype=np.uint8)),  # a copy: readers' arrays are read-only
        labels=torch.from_numpy(labels.astype(np.int64)), classes=classes, mean=stats["mean"], std=stats["std"],
    )  # fmt: skip


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what}: expected the file {path}, which does not exist")
    return path


# ---------------------------------------------------------------- synthetic
def synthetic(split: str, image_size: int = 32, channels: int = 3, num_classes: int = 10) -> ArrayDataset:
    """Procedural images with classes: oriented sinusoidal gratings, one orientation per class.

    Phase, frequency jitter, colour, a random blob and noise vary per image, so crops and colour changes
    keep the class (orientation) while changing everything else. Deterministic per split.
    """
    sizes = {"train": 512, "test": 256, "val": 256}
    if split not in sizes:
        raise DataError(f"synthetic has splits {sorted(sizes)}, not {split!r}")
    n = sizes[split]
    g = torch.Generator().manual_seed({"train": 0, "test": 1, "val": 2}[split])
    labels = torch.arange(n) % num_classes
    angle = labels.float() * math.pi / num_classes + (torch.rand(n, generator=g) - 0.5) * 0.1
    freq = 2 * math.pi * (3.0 + torch.rand(n, generator=g) * 1.5) / image_size
    phase = torch.rand(n, generator=g) * 2 * math.pi
    coords = torch.arange(image_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
    grating = 0.5 + 0.5 * torch.sin(proj * freq[:, None, None] + phase[:, None, None])  # (N, S, S)
    colour = 0.4 + 0.6 * torch.rand(n, channels, 1, 1, generator=g)
    centre = torch.rand(n, 2, generator=g) * image_size
    blob = torch.exp(
        -((yy[None] - centre[:, 0, None, None]) ** 2 + (xx[None] - centre[:, 1, None, None]) ** 2)
        / (2 * (image_size / 6) ** 2)
    )
    images = grating[:, None] * colour + 0.3 * blob[:, None] + 0.05 * torch.randn(n, channels, 1, 1, generator=g)
    images = images + 0.05 * torch.randn(n, channels, image_size, image_size, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    classes = tuple(f"angle{i}" for i in range(num_classes))
    return ArrayDataset(
        name="synthetic", images=images, labels=labels, classes=classes, mean=(0.5,) * channels, std=(0.25,) * channels
    )


# ---------------------------------------------------------------- Fashion-MNIST (idx.gz)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x0000 08 D, then D big-endian int32 sizes, then uint8 data."""
    raw = _require(path, "IDX file").read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: not a valid gzip file, or cut short ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (expected magic 0x000008nn)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: cut short in its header ({len(raw)} bytes, {header} expected at least)")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    if min(shape) < 0:
        raise DataError(f"{path}: negative size in its header {shape}")
    count = int(np.prod(shape))
    if len(raw) - header != count:
        raise DataError(f"{path}: header says {shape} = {count} bytes, file holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def fashion_mnist(split: str, data_dir: str = "") -> ArrayDataset:
    """The idx.gz files of Fashion-MNIST (Debian package ``dataset-fashion-mnist``); 60k train, 10k test."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"fashion-mnist has splits train and test, not {split!r}")
    root = Path(data_dir or FASHION_MNIST_DIR)
    if not root.is_dir():
        raise DataError(
            f"fashion-mnist: directory {root} does not exist. Install it with "
            "`apt-get install dataset-fashion-mnist` or pass --data-dir holding "
            f"{prefix}-images-idx3-ubyte.gz and {prefix}-labels-idx1-ubyte.gz"
        )
    images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3:
        raise DataError(f"fashion-mnist in {root}: expected images of shape (N, H, W), found {images.shape}")
    return checked(
        "fashion-mnist", root, images=images[:, None], labels=labels.astype(np.int64), classes=FASHION_MNIST_CLASSES,
        mean=(0.2860,), std=(0.3530,),
    )  # fmt: skip


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"expected {root / stem}.gz (or uncompressed {stem}), which does not exist")


# ---------------------------------------------------------------- CIFAR (python pickle layout)
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only, so a tampered batch file cannot run code."""

    _ALLOWED: typing.ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict[Any, Any]:
    try:
        data = _ArrayUnpickler(io.BytesIO(_require(path, "CIFAR batch").read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DataError(f"{path}: not a CIFAR python-pickle batch ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(data).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in data.items()}


def _cifar(root: Path, files: Sequence[str], *, label_key: str, meta: str, names_key: str, name: str) -> ArrayDataset:
    if not root.is_dir():
        raise DataError(f"{name}: directory {root} does not exist (expected the extracted python version)")
    images, labels = [], []
    for file in files:
        batch = _load_pickle(root / file)
        try:
            data, batch_labels = np.asarray(batch["data"]), np.asarray(batch[label_key])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
            if batch_labels.ndim != 1 or batch_labels.shape[0] != data.shape[0] or batch_labels.dtype.kind not in "iu":
                raise ValueError(
                    f"{data.shape[0]} images but {label_key!r} is {batch_labels.dtype} {batch_labels.shape}"
                )
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{root / file}: not a CIFAR batch ({first_line(e)})") from None
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    names = _load_pickle(root / meta).get(names_key)
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataError(f"{root / meta}: expected {names_key!r}, a list of class names")
    classes = tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)
    mean, std = {
        "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    }[name]
    return checked(
        name, root, images=np.concatenate(images), labels=np.concatenate(labels), classes=classes, mean=mean, std=std
    )


def cifar10(split: str, data_dir: str) -> ArrayDataset:
    """``cifar-10-batches-py``: data_batch_1..5 (train), test_batch, batches.meta."""
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}.get(split)
    if files is None:
        raise DataError(f"cifar10 has splits train and test, not {split!r}")
    root = _subdir(Path(data_dir), "cifar-10-batches-py")
    return _cifar(root, files, label_key="labels", meta="batches.meta", names_key="label_names", name="cifar10")


def cifar100(split: str, data_dir: str) -> ArrayDataset:
    """``cifar-100-python``: train, test, meta; the 100 fine labels."""
    if split not in ("train", "test"):
        raise DataError(f"cifar100 has splits train and test, not {split!r}")
    root = _subdir(Path(data_dir), "cifar-100-python")
    return _cifar(root, [split], label_key="fine_labels", meta="meta", names_key="fine_label_names", name="cifar100")


def _subdir(root: Path, name: str) -> Path:
    return root / name if (root / name).is_dir() else root


# ---------------------------------------------------------------- STL-10 (binary layout)
STL10_SIZE = 96


def stl10(split: str, data_dir: str) -> ArrayDataset:
    """``stl10_binary``: {train,test,unlabeled}_X.bin (column-major 3x96x96 uint8), *_y.bin (labels 1..10).

    Splits: ``train`` (5k), ``test`` (8k), ``unlabeled`` (100k, labels −1) and ``train+unlabeled`` for
    pretraining.
    """
    if split == "train+unlabeled":
        train, unlabeled = stl10("train", data_dir), stl10("unlabeled", data_dir)
        return dataclasses.replace(
            train,
            images=torch.cat((train.images, unlabeled.images)),
            labels=torch.cat((train.labels, unlabeled.labels)),
        )
    if split not in ("train", "test", "unlabeled"):
        raise DataError(f"stl10 has splits train, test, unlabeled and train+unlabeled, not {split!r}")
    root = _subdir(Path(data_dir), "stl10_binary")
    raw = np.fromfile(_require(root / f"{split}_X.bin", "STL-10 images"), dtype=np.uint8)
    pixels = 3 * STL10_SIZE * STL10_SIZE
    if raw.size == 0 or raw.size % pixels:
        raise DataError(f"{root / f'{split}_X.bin'}: size {raw.size} is not a multiple of 3x96x96")
    images = raw.reshape(-1, 3, STL10_SIZE, STL10_SIZE).transpose(0, 1, 3, 2)  # stored column-major
    if split == "unlabeled":
        labels = np.full(images.shape[0], -1, dtype=np.int64)
    else:
        labels = np.fromfile(_require(root / f"{split}_y.bin", "STL-10 labels"), dtype=np.uint8).astype(np.int64) - 1
        if labels.shape[0] != images.shape[0]:
            raise DataError(f"STL-10 {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    names = root / "class_names.txt"
    classes = tuple(names.read_bytes().decode("utf-8", "replace").split()) if names.is_file() else ()
    return checked(
        "stl10", root, images=images, labels=labels, classes=classes or tuple(str(i) for i in range(10)),
        mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
    )  # fmt: skip
