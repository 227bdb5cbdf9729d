"""A prepared dataset: images in WebDataset-layout tar shards, read by index through a memory-mapped array.

``byol prepare SRC --out DIR`` (``byol.prepare``) writes::

    DIR/manifest.json               source, settings, classes, per split: counts, bytes, each shard's SHA-256
    DIR/unreadable.tsv              the source files left out, and why (only when there were any)
    DIR/<split>/shard-000000.tar    WebDataset layout: <key>.jpg, <key>.cls (the class index; labelled sets),
                                    <key>.json (source path, original size, class name)
    DIR/<split>/index.npy           one row per image (:data:`ROW`): shard, byte offset and size of the JPEG in it,
                                    label, stored width and height, key

Reading needs no tar parsing and no per-image Python object: the index is a numpy array mapped from its file
(opening a million-image index reads its header only; pages are shared by every DataLoader worker), and an image
is one ``os.pread`` of its bytes from an open shard. Random access by index is what lets a prepared set take the
same (seed, epoch, index) crops as the folder it came from, and a resumed run the same batches.

Images are stored upright (EXIF orientation applied) with the long side at most the prepared size, so the crop
boxes, drawn as fractions of the image, cover the same part of each photo as the folder path's.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byol.data.folder import IMAGENET_MEAN, IMAGENET_STD, SPLITS
from byol.errors import DataError, quoted

FORMAT = "byol-shards/1"
MANIFEST = "manifest.json"
INDEX = "index.npy"
SHARD = "shard-{:06d}.tar"
ROW = np.dtype([
    ("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"),
    ("width", "<u2"), ("height", "<u2"), ("key", "<u4"),
])  # fmt: skip
OPEN_SHARDS = 64  # open files a process keeps (least recently used closed first)


def key_name(key: int) -> str:
    """The WebDataset key of an image (its members are <key>.jpg, <key>.cls, <key>.json)."""
    return f"{key:09d}"


def read_manifest(data_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a prepared folder; None when ``data_dir`` is not one."""
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


class _Files:
    """The shard files this process has open, by path; a forked worker opens its own."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.open: collections.OrderedDict[str, int] = collections.OrderedDict()

    def fd(self, path: str) -> int:
        if self.pid != os.getpid():  # inherited over fork: the descriptors are the parent's, leave them
            self.pid, self.open = os.getpid(), collections.OrderedDict()
        fd = self.open.get(path)
        if fd is None:
            fd = self.open[path] = os.open(path, os.O_RDONLY)
            if len(self.open) > OPEN_SHARDS:
                os.close(self.open.popitem(last=False)[1])
        self.open.move_to_end(path)
        return fd


_FILES = _Files()


@dataclass(frozen=True, eq=False)
class ShardSet:
    """One split of a prepared folder: ``index`` (:data:`ROW`, memory-mapped), the shard files it points into,
    labels (−1 where unlabelled) and class names (empty for an unlabelled set). Reads like an image folder."""

    name: str
    root: Path  # the split's folder
    shards: tuple[str, ...]
    index: np.ndarray
    labels: Tensor
    classes: tuple[str, ...]
    split_note: str = ""
    layout: str = "prepared"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> io.BytesIO:
        """The stored JPEG of image ``index``, as a file Pillow opens."""
        row = self.index[index]
        size = int(row["size"])
        data = os.pread(_FILES.fd(os.fspath(self.root / self.shards[row["shard"]])), size, int(row["offset"]))
        if len(data) != size:  # a shard shorter than its index says: damaged, or still being copied
            raise OSError(f"shard {self.shards[row['shard']]} ends {size - len(data)} bytes early")
        return io.BytesIO(data)

    def describe(self, index: int) -> str:
        """Image ``index`` in messages: its shard and member."""
        row = self.index[index]
        return f"{self.root / self.shards[row['shard']]}:{key_name(int(row['key']))}.jpg"

    def subset(self, indices: Tensor) -> ShardSet:
        chosen = indices.numpy()
        return dataclasses.replace(self, index=np.asarray(self.index[chosen]), labels=self.labels[indices])

    @classmethod
    def open(cls, data_dir: str, split: str, manifest: dict[str, Any] | None = None) -> ShardSet:
        """The images of ``split`` of the prepared folder ``data_dir`` (``manifest``: its manifest, when already
        read). An evaluation split the folder lacks is its other evaluation split (val for test, or the reverse);
        an unlabelled folder trains and embeds on its one split."""
        manifest = manifest if manifest is not None else read_manifest(data_dir)
        if manifest is None:
            raise DataError(f"{quoted(data_dir)} is not a folder `byol prepare` wrote (no {MANIFEST} in it)")
        if split not in SPLITS:
            raise DataError(f"prepared folder: unknown split {quoted(split)}; valid splits are {', '.join(SPLITS)}")
        splits: dict[str, Any] = manifest["splits"]
        classes = tuple(manifest.get("classes", ()))
        others = [name for name in splits if name != "train"]
        chosen = split if split in splits else (others[0] if split != "train" and others else None)
        if chosen is None and not classes:
            chosen = "train"
        if chosen is None:
            raise DataError(
                f"prepared folder {quoted(data_dir)} has no {split} split (it has {', '.join(splits)}); "
                "prepare a source folder with that split"
            )
        entry, root = splits[chosen], Path(data_dir) / chosen
        try:
            index = np.load(root / INDEX, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataError(f"prepared folder: cannot read {quoted(root / INDEX)} ({e}); prepare it again") from None
        shards = tuple(shard["name"] for shard in entry["shards"])
        if index.dtype != ROW or index.ndim != 1 or len(index) != entry["images"]:
            raise DataError(
                f"prepared folder: {quoted(root / INDEX)} does not match {MANIFEST} ({len(index)} rows of "
                f"{index.dtype}, expected {entry['images']} of {ROW}); prepare it again"
            )
        labels = torch.from_numpy(np.array(index["label"], dtype=np.int64))
        if len(index) and (int(index["shard"].max()) >= len(shards) or int(labels.max()) >= max(len(classes), 1)):
            raise DataError(f"prepared folder: {quoted(root / INDEX)} points past its shards or classes")
        note = entry["note"] if chosen == split else f"{chosen} (the prepared folder has no {split} split)"
        return cls(
            name="imagefolder", root=root, shards=shards, index=index, labels=labels, classes=classes,
            split_note=f"{note}; prepared in {root}", layout=f"prepared, {manifest['layout']}",
        )  # fmt: skip
