"""Class-per-folder image trees (the ImageNet layout), decoded with Pillow in DataLoader workers.

For pretraining, each worker decodes an image and takes both views' random resized crops at decode time
(bicubic, to the view size), so only fixed-size uint8 crops cross to the main process; flip, colour, blur
and solarise then run batched on the device. For evaluation the crop is the centre 224/256 of the shorter
side (SPEC §3).

A truncated or unreadable image is skipped with a warning naming the file; the skipped paths travel with the
batch so the training loop can count and report them. After ``MAX_CONSECUTIVE_FAILURES`` unreadable files in
a row the run stops: that is a broken dataset, not a bad file.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from byol.augment.pipeline import ViewConfig
from byol.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
MAX_CONSECUTIVE_FAILURES = 50
SPLITS = ("train", "val", "test")
HOLDOUT_BUCKETS = 10  # without a val/ or test/ folder, 1 image in 10 is held out of training for evaluation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 224 / 256


@dataclass(frozen=True)
class ImageFolder:
    """root/<class>/<image> (or root/<split>/<class>/<image>); labels follow the sorted class names."""

    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: Tensor
    classes: tuple[str, ...]
    split_note: str = ""  # which images the split holds, for results: "val (<dir>/val)", "val: held out, ..."
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Tensor) -> ImageFolder:
        chosen = indices.tolist()
        return dataclasses.replace(self, paths=tuple(self.paths[i] for i in chosen), labels=self.labels[indices])

    @classmethod
    def scan(cls, data_dir: str, split: str) -> ImageFolder:
        """The images of ``split`` (train, val or test). A folder without that split's own folder never falls
        back to the training images: evaluation splits are held out of them, one image in
        :data:`HOLDOUT_BUCKETS` chosen by a hash of its path, and the train split then leaves those out."""
        base = Path(data_dir)
        if not data_dir or not base.is_dir():
            raise DataError(f"imagefolder: --data-dir {data_dir!r} is not a directory (expected <dir>/<class>/*.jpg)")
        if split not in SPLITS:
            raise DataError(f"imagefolder: unknown split {split!r}; valid splits are {', '.join(SPLITS)}")
        present = [name for name in SPLITS if (base / name).is_dir()]
        held_out = [name for name in present if name != "train"]  # val/ and test/ folders
        keep: int | None = None  # None: every image of root; 0: the held-out bucket only; -1: all the others
        if split in present and (split != "train" or held_out):
            root, note = base / split, f"{split} ({base / split})"
        elif split != "train" and held_out:  # an evaluation asks for val, the folder has test/ (or the reverse)
            root, note = base / held_out[0], f"{held_out[0]} ({base / held_out[0]})"
        else:  # no evaluation folder: evaluations get a stable tenth of the images, training the rest
            root = base / "train" if "train" in present else base
            fraction = f"1 in {HOLDOUT_BUCKETS} images of {root}, chosen by a hash of the file path"
            if split == "train":
                keep, note = -1, f"train ({root}, less the {fraction} held out for evaluation)"
            else:
                keep, note = 0, f"{split}: held out, {fraction} (the folder has no val/ or test/ folder)"
        class_dirs = _class_dirs(root)
        train_root = base / "train" if "train" in present else base
        classes = [d.name for d in (class_dirs if root == train_root else _class_dirs(train_root))]
        unknown = sorted(d.name for d in class_dirs if d.name not in classes)
        if unknown:  # labels follow the class NAMES of the training folder: a class it lacks cannot be graded
            raise DataError(
                f"imagefolder: {root} has class folder(s) {', '.join(map(repr, unknown))} that {train_root} lacks; "
                "the splits must name their classes alike"
            )
        absent = sorted(set(classes) - {d.name for d in class_dirs})
        if absent:
            log.warning("imagefolder: %s holds no %s; those classes are not graded", root, ", ".join(absent))
        paths: list[Path] = []
        labels: list[int] = []
        for class_dir in class_dirs:
            label = classes.index(class_dir.name)
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise DataError(
                    f"imagefolder: class folder {class_dir} is empty (expected files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)})"
                )
            if keep is not None:  # 0: the held-out bucket only; -1: every other bucket
                files = [f for f in files if (_bucket(f.relative_to(root)) == 0) == (keep == 0)]
            paths.extend(files)
            labels.extend([label] * len(files))
        if not paths:
            raise DataError(f"imagefolder: {note} holds no image; add a {split}/ folder of <class>/<image> files")
        return cls(
            name="imagefolder", root=root, paths=tuple(paths), labels=torch.tensor(labels),
            classes=tuple(classes), split_note=note,
        )  # fmt: skip


def _class_dirs(root: Path) -> list[Path]:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and d.name not in SPLITS)
    if not class_dirs:
        raise DataError(f"imagefolder: {root} holds no class folders (expected {root}/<class>/<image>.jpg)")
    return class_dirs


def _bucket(relative: Path) -> int:
    """A stable bucket in [0, HOLDOUT_BUCKETS) of an image's path below its split root (class/file); a file name
    that is not valid UTF-8 hashes by its bytes."""
    return zlib.crc32(os.fsencode(relative.as_posix())) % HOLDOUT_BUCKETS


Box = tuple[float, float, float, float]


def _random_box(width: int, height: int, view: ViewConfig, rng: np.random.Generator) -> Box:
    """The released crop law (area fraction, log aspect ratio, one attempt, clipped), as a PIL box."""
    area = rng.uniform(*view.crop_scale) * width * height
    ratio = math.exp(rng.uniform(*view.crop_log_ratio))
    w = min(math.sqrt(area * ratio), width)
    h = min(math.sqrt(area / ratio), height)
    left = rng.uniform(0, width - w)
    top = rng.uniform(0, height - h)
    return (left, top, left + w, top + h)


def _centre_box(width: int, height: int) -> Box:
    side = min(width, height) * EVAL_CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


HIGH_BIT_DEPTH = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0, "F": 1.0}


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB by the image's real bit depth. Pillow's own convert("RGB") clips 16-bit grey (modes I;16 and I,
    what 16-bit PNGs open as) to white above 255; here 0..65535 maps onto 0..255. Float images ("F") are
    taken as 0..255."""
    divisor = HIGH_BIT_DEPTH.get(image.mode)
    if divisor is None:
        return image.convert("RGB")
    grey = np.clip(np.asarray(image, dtype=np.float64) / divisor, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


class FolderCrops(torch.utils.data.Dataset):
    """Decoded crops of an :class:`ImageFolder`: two random views (``views`` given) or one centre crop.

    Items are (crop1, crop2, label, skipped_paths); crop2 is an empty tensor for the centre crop. Random
    crops are seeded by (seed, epoch, index), so the crops do not depend on worker count or order.
    """

    def __init__(
        self, folder: ImageFolder, *, size: int, views: tuple[ViewConfig, ViewConfig] | None, seed: int = 0
    ) -> None:
        self.folder, self.size, self.views, self.seed = folder, size, views, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folder)

    def _decode(self, index: int) -> Image.Image:
        path = self.folder.paths[index]
        with Image.open(path) as image:
            image.load()
            return to_rgb8(image)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int, tuple[str, ...]]:
        skipped: list[str] = []
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            i = (index + attempt) % len(self.folder)
            try:
                image = self._decode(i)
                break
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                log.warning("skipping unreadable image %s (%s)", self.folder.paths[i], e)
                skipped.append(str(self.folder.paths[i]))
        else:
            raise DataError(
                f"{MAX_CONSECUTIVE_FAILURES} unreadable images in a row from {self.folder.paths[index]} on: "
                "the dataset looks broken"
            )
        label = int(self.folder.labels[i])
        size = (self.size, self.size)
        if self.views is None:
            crop = image.resize(size, Image.Resampling.BICUBIC, box=_centre_box(*image.size))
            return _to_tensor(crop), torch.empty(0, dtype=torch.uint8), label, tuple(skipped)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        crops = [
            image.resize(size, Image.Resampling.BICUBIC, box=_random_box(*image.size, view, rng)) for view in self.views
        ]
        return _to_tensor(crops[0]), _to_tensor(crops[1]), label, tuple(skipped)
