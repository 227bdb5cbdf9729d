"""Folders of image files: flat, nested to any depth, or one folder per class (the ImageNet layout).

What a folder holds is decided from its files, walked once (``os.scandir``, symlinked folders followed once
each, so a loop ends):

- **by class**: the folder holds no image itself and at least two sub-folders that do; an image's class is the
  first folder of its path below the split (``dog/2019/x.jpg`` is a dog), as torchvision's ImageFolder reads it;
- **flat** (every image directly in the folder) or **nested** (anything else): unlabelled. Pretraining needs no
  label; what needs labels (the online probe, the kNN monitor, the evaluations) asks for a labelled set or says
  it is skipped.

``data.labels`` overrides the guess: ``folders`` insists on class folders, ``none`` reads any folder as
unlabelled (a tree by year or by trip is not a set of classes). Names starting with a dot (``.DS_Store``, macOS's
``._x.jpg``, ``.ipynb_checkpoints/``) and ``__MACOSX/`` are never images or classes. Class names are compared
in Unicode NFC form, so a class folder written by macOS (NFD) matches the same name typed elsewhere.

Splits: ``<dir>/train``, ``<dir>/val`` and ``<dir>/test`` where they exist. Without an evaluation folder a
labelled folder gives evaluations a stable tenth of its images (by a hash of the path) and trains on the
rest; an unlabelled one trains on every image.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from byol.choices import LABELS
from byol.errors import DataError, quoted

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
UNREAD_EXTENSIONS = (".heic", ".heif", ".avif", ".dng", ".cr2", ".nef", ".arw")  # named when a folder has only these
SPLITS = ("train", "val", "test")
HOLDOUT_BUCKETS = 10  # without a val/ or test/ folder, 1 image in 10 is held out of training for evaluation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def hidden(name: str) -> bool:
    """A file or folder that is never an image or a class: dot-files (``.DS_Store``, AppleDouble ``._x.jpg``,
    ``.ipynb_checkpoints``) and the ``__MACOSX`` folder of zip archives made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"


def walk_images(root: Path, skip: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """The image files below ``root`` as sorted relative POSIX paths, and how many files of formats this reader
    does not decode (:data:`UNREAD_EXTENSIONS`) it passed. Hidden names, and the folders of ``root`` named in
    ``skip``, are skipped; a symlinked folder is followed the first time its target is met, never again (a link
    loop ends)."""
    images: list[str] = []
    unread = 0
    seen: set[tuple[int, int]] = set()
    stack = [("", os.fspath(root))]
    while stack:
        prefix, folder = stack.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(folder))
        except OSError as e:  # a folder that cannot be read is named once and left out
            log.warning("imagefolder: cannot read %s (%s); left out", quoted(folder), e.strerror or e)
            continue
        for entry in entries:
            if hidden(entry.name) or (not prefix and entry.name in skip):
                continue
            try:
                mode = entry.stat().st_mode  # follows symlinks: a broken link raises and is left out
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                stack.append((f"{prefix}{entry.name}/", entry.path))
            elif stat.S_ISREG(mode):
                suffix = os.path.splitext(entry.name)[1].lower()
                if suffix in IMAGE_EXTENSIONS:
                    images.append(prefix + entry.name)
                elif suffix in UNREAD_EXTENSIONS:
                    unread += 1
    return sorted(images), unread


def class_name(folder: str) -> str:
    return unicodedata.normalize("NFC", folder)


@dataclass(frozen=True)
class ImageFolder:
    """The image files of one split of a folder, their labels (−1 where unlabelled) and the class names (empty
    for an unlabelled folder). ``layout``: by class, flat or nested."""

    name: str
    root: Path
    paths: tuple[str, ...]
    labels: Tensor
    classes: tuple[str, ...]
    split_note: str = ""  # which images the split holds, for results: "val (<dir>/val)", "val: held out, ..."
    layout: str = "by class"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, index: int) -> str:
        """What Pillow opens for image ``index``: its path."""
        return self.paths[index]

    def describe(self, index: int) -> str:
        """Image ``index`` in messages: its path."""
        return self.paths[index]

    def subset(self, indices: Tensor) -> ImageFolder:
        chosen = indices.tolist()
        return dataclasses.replace(self, paths=tuple(self.paths[i] for i in chosen), labels=self.labels[indices])

    @classmethod
    def scan(cls, data_dir: str, split: str, labels: str = "auto") -> ImageFolder:
        """The images of ``split`` (train, val or test). A folder without that split's own folder never falls
        back to the training images: evaluation splits are held out of them, one image in
        :data:`HOLDOUT_BUCKETS` chosen by a hash of its path, and the train split then leaves those out."""
        base = Path(data_dir)
        if not data_dir or not base.is_dir():
            raise DataError(f"imagefolder: --data-dir {quoted(data_dir)} is not a directory of images")
        if split not in SPLITS:
            raise DataError(f"imagefolder: unknown split {quoted(split)}; valid splits are {', '.join(SPLITS)}")
        if labels not in LABELS:
            raise DataError(f"imagefolder: data.labels must be one of {', '.join(LABELS)}, not {quoted(labels)}")
        present = [name for name in SPLITS if (base / name).is_dir()]
        held_out = [name for name in present if name != "train"]  # val/ and test/ folders
        train_root = base / "train" if "train" in present else base
        train_files = _images(train_root, skip=SPLITS if train_root == base else ())  # <dir>/val: no class
        layout = _layout(train_files, labels, train_root)
        classes = _classes(train_files) if layout == "by class" else ()
        keep: int | None = None  # None: every image of root; 0: the held-out bucket only; -1: all the others
        if split in present and (split != "train" or held_out):
            root, note = base / split, f"{split} ({base / split})"
        elif split != "train" and held_out:  # an evaluation asks for val, the folder has test/ (or the reverse)
            root, note = base / held_out[0], f"{held_out[0]} ({base / held_out[0]})"
        elif not classes:  # unlabelled: nothing to evaluate on, every image trains
            root, note = train_root, f"{split} (every image of {train_root}, unlabelled)"
        else:  # no evaluation folder: evaluations get a stable tenth of the images, training the rest
            root = train_root
            fraction = f"1 in {HOLDOUT_BUCKETS} images of {root}, chosen by a hash of the file path"
            if split == "train":
                keep, note = -1, f"train ({root}, less the {fraction} held out for evaluation)"
            else:
                keep, note = 0, f"{split}: held out, {fraction} (the folder has no val/ or test/ folder)"
        files = train_files if root == train_root else _images(root)
        if keep is not None:  # 0: the held-out bucket only; -1: every other bucket
            files = [f for f in files if (_bucket(f) == 0) == (keep == 0)]
        if classes:
            found = _classes(files) if root != train_root else classes
            _check_classes(found, classes, root, train_root, files)
            index = {name: i for i, name in enumerate(classes)}
            label_list = [index[class_name(f.split("/", 1)[0])] for f in files]
        else:
            label_list = [-1] * len(files)
        if not files:
            raise DataError(f"imagefolder: {note} holds no image; add a {split}/ folder of images")
        prefix = os.fspath(root) + os.sep
        return cls(
            name="imagefolder", root=root, paths=tuple(prefix + f for f in files), labels=torch.tensor(label_list),
            classes=classes, split_note=note, layout=layout,
        )  # fmt: skip


def _images(root: Path, skip: tuple[str, ...] = ()) -> list[str]:
    files, unread = walk_images(root, skip)
    if files:
        return files
    other = f" ({unread} file(s) of formats this reader does not decode, such as .heic: convert them to JPEG)"
    raise DataError(
        f"imagefolder: {quoted(root)} holds no image{other if unread else ''}; images are files ending in "
        f"{', '.join(IMAGE_EXTENSIONS)}, directly in it, in sub-folders, or one folder per class"
    )


def _layout(files: list[str], labels: str, root: Path) -> str:
    """by class, flat or nested, from the files of the training folder and ``data.labels``."""
    loose = [f for f in files if "/" not in f]
    folders = {f.split("/", 1)[0] for f in files if "/" in f}
    if labels == "none" or (labels == "auto" and (loose or len(folders) < 2)):
        return "flat" if len(loose) == len(files) else "nested"
    if loose:  # data.labels folders
        raise DataError(
            f"imagefolder: data.labels folders but {quoted(root)} holds images outside class folders "
            f"({quoted(loose[0])}, {len(loose)} in all); move them into <class>/ folders, or use data.labels auto"
        )
    return "by class"


def _classes(files: list[str]) -> tuple[str, ...]:
    return tuple(sorted({class_name(f.split("/", 1)[0]) for f in files if "/" in f}))


def _check_classes(found: tuple[str, ...], classes: tuple[str, ...], root: Path, train_root: Path, files: list[str]):
    """Labels follow the class NAMES of the training folder: a class it lacks cannot be graded."""
    loose = [f for f in files if "/" not in f]
    if loose:
        raise DataError(
            f"imagefolder: {quoted(root)} holds images outside class folders ({quoted(loose[0])}) while "
            f"{quoted(train_root)} is read by class; the splits must be laid out alike"
        )
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"imagefolder: {quoted(root)} has class folder(s) {', '.join(map(quoted, unknown))} that "
            f"{quoted(train_root)} lacks; the splits must name their classes alike"
        )
    absent = sorted(set(classes) - set(found))
    if absent:
        log.warning("imagefolder: %s holds no %s; those classes are not graded", quoted(root), ", ".join(absent))


def _bucket(relative: str) -> int:
    """A stable bucket in [0, HOLDOUT_BUCKETS) of an image's path below its split root (class/file); a file name
    that is not valid UTF-8 hashes by its bytes."""
    return zlib.crc32(os.fsencode(relative)) % HOLDOUT_BUCKETS
