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
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byol.data import remote
from byol.data.cache import Entry, ShardCache
from byol.data.folder import IMAGENET_MEAN, IMAGENET_STD, SPLITS
from byol.errors import DataError, quoted
from byol.files import atomic_write, user_cache_dir, write_json

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
    """The manifest of a prepared folder; None when ``data_dir`` is not one (no ``manifest.json``, or one of
    another tool in a folder of images). A manifest of a prepared folder that is cut, edited or incomplete is
    refused in one line naming it: a folder with a split's ``index.npy`` is a prepared folder. A URL
    (``s3://…``) is a prepared set in object storage: its manifest must be there."""
    if isinstance(data_dir, str) and remote.is_url(data_dir):
        return _remote_manifest(remote.Store(remote.parse(data_dir)))
    path = Path(data_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if not any(Path(data_dir, split, INDEX).is_file() for split in SPLITS):
            return None
        raise DataError(f"prepared folder: {quoted(path)} cannot be read ({e}); prepare the folder again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return None
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"prepared folder: {quoted(path)} is incomplete or edited ({problem}); prepare it again")
    return manifest


def _remote_manifest(store: remote.Store) -> dict[str, Any]:
    url = store.location.url(MANIFEST)
    try:
        manifest = json.loads(store.get(MANIFEST))
    except ValueError as e:
        raise DataError(f"prepared set: {url} cannot be read ({e}); prepare the set again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{url} is not the manifest of a set `byol prepare` wrote")
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"prepared set: {url} is incomplete or edited ({problem}); prepare it again")
    return manifest


@dataclass(frozen=True)
class CacheSettings:
    """Where shards read from object storage are kept (``""``: ``~/.cache/byol/shards``) and how many bytes
    they may take (0: the whole prepared set plus one shard, or 80% of the free disk if that is less)."""

    folder: str = ""
    budget: int = 0


_settings = CacheSettings()
_caches: dict[Path, ShardCache] = {}


def use_cache(folder: str, budget: int) -> None:
    """The cache settings of this process's commands (``data.cache_dir``, ``data.cache_bytes``)."""
    global _settings
    _settings = CacheSettings(folder, budget)


def shard_cache(manifest: dict[str, Any]) -> ShardCache:
    """This process's cache at the configured folder (one object per folder: its plan and position are shared
    by every split read from it)."""
    root = Path(_settings.folder or user_cache_dir() / "shards").expanduser().resolve()
    if root not in _caches:
        root.mkdir(parents=True, exist_ok=True)
        budget = _settings.budget
        if not budget:
            largest = max(shard["bytes"] for entry in manifest["splits"].values() for shard in entry["shards"])
            whole = sum(entry["bytes"] for entry in manifest["splits"].values()) + largest
            free = shutil.disk_usage(root).free
            budget = min(whole, ShardCache(root, 0).usage() + int(0.8 * free))
        _caches[root] = ShardCache(root, budget)
    return _caches[root]


@dataclass(frozen=True, eq=False)
class RemoteShards:
    """A split's shards in object storage: where they are, the cache they are read through, and for each shard
    (by number) its :class:`~byol.data.cache.Entry`."""

    store: remote.Store
    cache: ShardCache
    entries: tuple[Entry, ...]


def _manifest_problem(manifest: dict[str, Any]) -> str:
    """What a manifest lacks that the reader needs ("" when nothing): its splits, each with its image count and
    its shards' names, sizes and SHA-256 digests."""
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits or not set(splits) <= set(SPLITS):
        return f"no 'splits' of {', '.join(SPLITS)}"
    if not isinstance(manifest.get("classes"), list) or not isinstance(manifest.get("layout"), str):
        return "no 'classes' list or 'layout'"
    for name, entry in splits.items():
        shards = entry.get("shards") if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not shards or not isinstance(entry.get("images"), int):
            return f"split {name!r} lists no shards or no image count"
        for shard in shards:
            fields = shard if isinstance(shard, dict) else {}
            if not (isinstance(fields.get("name"), str) and isinstance(fields.get("bytes"), int)
                    and isinstance(fields.get("sha256"), str)):  # fmt: skip
                return f"a shard of split {name!r} has no name, size or sha256"
    return ""


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_split(root: Path, entry: dict[str, Any]) -> None:
    """Every shard of a split as the manifest recorded it: there, of its size, and of its SHA-256; the first that
    is not is named in one line. A shard is hashed once for a given (path, size, inode, mtime, ctime): the
    verification is remembered in the user's cache directory (``~/.cache/byol/verified``), so a later command
    only stats it. (Bytes that rot on disk without any change to the file's times are caught by a fresh cache:
    ``rm -r ~/.cache/byol/verified``.)"""
    stamps_path = user_cache_dir() / "verified" / f"{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()}.json"
    try:
        stamps = json.loads(stamps_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    stamps = stamps if isinstance(stamps, dict) else {}
    fresh = {}
    for shard in entry["shards"]:
        path = root / shard["name"]
        try:
            info = path.stat()
        except OSError as e:
            raise DataError(
                f"prepared folder: shard {quoted(path)} is missing ({e.strerror}); prepare it again"
            ) from None
        if info.st_size != shard["bytes"]:
            raise DataError(
                f"prepared folder: shard {quoted(path)} is {info.st_size} bytes, not the {shard['bytes']} it was "
                "prepared with (cut short or changed); prepare it again"
            )
        stamp = [info.st_size, info.st_ino, info.st_mtime_ns, info.st_ctime_ns, shard["sha256"]]
        if stamps.get(shard["name"]) != stamp and file_digest(path) != shard["sha256"]:
            raise DataError(
                f"prepared folder: shard {quoted(path)} does not match its SHA-256 in {MANIFEST} (its bytes "
                "changed since it was prepared); prepare it again"
            )
        fresh[shard["name"]] = stamp
    if fresh != stamps:
        with contextlib.suppress(OSError):  # no cache to keep (read-only, or not a folder): hashed again next time
            stamps_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(stamps_path, fresh)


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
    remote: RemoteShards | None = None  # shards in object storage, read through a local cache
    where: str = ""  # the split's folder or URL, as messages name it

    def __len__(self) -> int:
        return len(self.index)

    def read(self, index: int) -> io.BytesIO:
        """The stored JPEG of image ``index``, as a file Pillow opens. The tar header in front of it is read with
        it (512 bytes more) and must name this image's member and size: an index that does not belong to these
        shards (another split's, an edited one) is refused by name rather than decoded from wrong offsets."""
        row = self.index[index]
        size, offset = int(row["size"]), int(row["offset"])
        folder = self.where or self.root  # a set in object storage is named by its URL, read through the cache
        shard = f"{folder}/{self.shards[row['shard']]}"
        start = max(0, offset - tarfile.BLOCKSIZE)
        if self.remote is None:
            data = os.pread(_FILES.fd(shard), size + offset - start, start)
        else:  # from the node's cache, fetched first if it is not there
            with self.remote.cache.opened(self.remote.entries[row["shard"]]) as fd:
                data = os.pread(fd, size + offset - start, start)
        if len(data) != size + offset - start:  # a shard shorter than its index says: damaged, or being copied
            raise OSError(f"shard {self.shards[row['shard']]} ends {size + offset - start - len(data)} bytes early")
        header = data[: offset - start]
        member = f"{key_name(int(row['key']))}.jpg".encode()
        if header[:100].rstrip(b"\0") != member or header[124:136].rstrip(b"\0 ").lstrip(b"0") != b"%o" % size:
            raise DataError(
                f"prepared folder: row {index} of {quoted(f'{folder}/{INDEX}')} does not point at its image "
                f"{member.decode()} in {quoted(shard)} (the index does not belong to these shards); prepare it again"
            )
        return io.BytesIO(data[offset - start :])

    def describe(self, index: int) -> str:
        """Image ``index`` in messages: its shard and member."""
        row = self.index[index]
        return f"{self.where or self.root}/{self.shards[row['shard']]}:{key_name(int(row['key']))}.jpg"

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
        chosen = _choose_split(manifest, data_dir, split)
        entry, shards = (
            manifest["splits"][chosen],
            tuple(shard["name"] for shard in manifest["splits"][chosen]["shards"]),
        )
        store, cache, where = None, None, ""
        if remote.is_url(data_dir):
            store, cache = remote.Store(remote.parse(data_dir)), shard_cache(manifest)
            where, root = store.location.url(chosen), cache.root / "index"
            index = _remote_index(store, chosen, entry, root)
            remote.check_objects(store, {f"{chosen}/{shard['name']}": shard["bytes"] for shard in entry["shards"]})
        else:
            root = Path(data_dir) / chosen
            try:
                index = np.load(root / INDEX, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(
                    f"prepared folder: cannot read {quoted(root / INDEX)} ({e}); prepare it again"
                ) from None
            if "index_sha256" in entry and file_digest(root / INDEX) != entry["index_sha256"]:
                raise DataError(
                    f"prepared folder: {quoted(root / INDEX)} is not the index {MANIFEST} was written with (edited, "
                    "or another split's); prepare it again"
                )
            verify_split(root, entry)
        if index.dtype != ROW or index.ndim != 1 or len(index) != entry["images"]:
            raise DataError(
                f"prepared folder: {quoted(where or root / INDEX)} does not match {MANIFEST} ({len(index)} rows of "
                f"{index.dtype}, expected {entry['images']} of {ROW}); prepare it again"
            )
        classes = tuple(manifest.get("classes", ()))
        labels = torch.from_numpy(np.array(index["label"], dtype=np.int64))
        if len(index) and (int(index["shard"].max()) >= len(shards) or int(labels.max()) >= max(len(classes), 1)):
            raise DataError(f"prepared folder: {quoted(where or root / INDEX)} points past its shards or classes")
        note = entry["note"] if chosen == split else f"{chosen} (the prepared folder has no {split} split)"
        shared = None
        if store is not None and cache is not None:
            shared = RemoteShards(store, cache, tuple(
                Entry(shard["sha256"], shard["bytes"], functools.partial(store.fetch, f"{chosen}/{shard['name']}",
                                                                         shard["bytes"]))
                for shard in entry["shards"]
            ))  # fmt: skip
        return cls(
            name="imagefolder", root=root, shards=shards, index=index, labels=labels, classes=classes,
            split_note=f"{note}; prepared in {where or root}", layout=f"prepared, {manifest['layout']}",
            remote=shared, where=where,
        )  # fmt: skip


def _choose_split(manifest: dict[str, Any], data_dir: str, split: str) -> str:
    """The split of a prepared set that plays ``split``: itself; an evaluation split the set lacks is its other
    evaluation split (val for test, or the reverse); an unlabelled set trains and embeds on its one split."""
    if split not in SPLITS:
        raise DataError(f"prepared folder: unknown split {quoted(split)}; valid splits are {', '.join(SPLITS)}")
    splits: dict[str, Any] = manifest["splits"]
    others = [name for name in splits if name != "train"]
    chosen = split if split in splits else (others[0] if split != "train" and others else None)
    if chosen is None and not manifest.get("classes"):
        chosen = "train"
    if chosen is None:
        raise DataError(
            f"prepared folder {quoted(data_dir)} has no {split} split (it has {', '.join(splits)}); "
            "prepare a source folder with that split"
        )
    return chosen


def _remote_index(store: remote.Store, split: str, entry: dict[str, Any], folder: Path) -> np.ndarray:
    """A split's index from object storage, kept in the cache's index folder under its SHA-256 (fetched once,
    checked against the manifest before use), memory-mapped."""
    digest = entry.get("index_sha256")
    if not isinstance(digest, str):
        raise DataError(f"prepared set {store.location.url()} has no index digest in its manifest; prepare it again")
    path = folder / f"{digest}.npy"
    if not path.is_file():
        data = store.get(f"{split}/{INDEX}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise DataError(
                f"{store.location.url(f'{split}/{INDEX}')} does not match the SHA-256 in {MANIFEST} (replaced or "
                "cut short); prepare the set again"
            )
        atomic_write(path, lambda f: f.write(data))
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"prepared set: cannot read {quoted(path)} ({e}); remove it and run again") from None
