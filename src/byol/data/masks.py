"""Folders of images and per-pixel class masks, for segmentation transfer (``byol segment``).

The layout: ``DIR/{train,val,test}/images/NAME.*`` (any image format the folders read) and
``DIR/{split}/masks/NAME.png`` of the same stem, one class id per pixel (an 8- or 16-bit single-channel PNG,
or a palette PNG whose indices are the ids). ``DIR/classes.json`` names the classes and the void id:
``{"classes": ["sky", "building", ...], "void": 11}``; without it ``--void-id`` says which id is void (255
by default, the VOC convention) and the classes are named by their ids, as many as the largest id found.
CamVid (``../shared/data/camvid``, SegNet's 11-class version) is this layout with its names and void id 11
known (:data:`CAMVID`).

Everything is checked when a split is read, before any training: a mask whose size differs from its image,
an id beyond the classes that is not void, an image without its mask, a colour (RGB) mask, an empty split.
Each gets one line naming the file and what is valid.

Images are decoded upright (their EXIF orientation applied) and resized to ``scale`` of their size by
antialiased bicubic interpolation; masks are resized by nearest neighbour only (a class id is never blended),
and kept at their full size too, for scoring.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from byol.choices import MASK_DATASETS
from byol.data.decode import DECODE_ERRORS, load_oriented, open_image
from byol.data.folder import IMAGE_EXTENSIONS, hidden
from byol.errors import ConfigError, DataError, quoted

log = logging.getLogger(__name__)

DATASETS = MASK_DATASETS
CLASSES_FILE = "classes.json"
DEFAULT_VOID = 255  # PASCAL VOC's "unlabelled / object boundary"
CAMVID = (  # SegNet's 11-class CamVid (../shared/data/camvid/README.md): ids 0-10, void 11
    ("sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist"),
    11,
)
MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "1")  # single-channel: each value is a class id


@dataclass(frozen=True)
class Classes:
    """The class names (id i is ``names[i]``) and the id that marks void pixels (ignored by loss and score)."""

    names: tuple[str, ...]
    void: int

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class SegmentationSplit:
    """One split in memory: ``images`` uint8 (3, h, w) at the working scale, ``masks`` int64 (h, w) at that scale
    (nearest neighbour) and ``full_masks`` at the files' own size; ``files`` names each image."""

    name: str
    images: list[Tensor]
    masks: list[Tensor]
    full_masks: list[Tensor]
    files: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: list[int], name: str) -> SegmentationSplit:
        return SegmentationSplit(
            name, [self.images[i] for i in index], [self.masks[i] for i in index],
            [self.full_masks[i] for i in index], [self.files[i] for i in index],
        )  # fmt: skip


def read_classes(root: str | Path, dataset: str, void_id: int | None) -> Classes | None:
    """The classes of the folder: ``classes.json``, CamVid's when ``dataset`` is camvid, else None (named by the
    ids found in the masks). ``void_id`` overrides the file's void id."""
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset {dataset!r} is not a segmentation layout; choose one of {', '.join(DATASETS)}")
    path = Path(root) / CLASSES_FILE
    if path.is_file():
        try:
            spec = json.loads(path.read_text())
            names = tuple(str(name) for name in spec["classes"])
            void = int(spec.get("void", DEFAULT_VOID))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(
                f"{quoted(path)} cannot be read ({type(e).__name__}: {e}); expected "
                '{"classes": ["name", ...], "void": ID}'
            ) from None
        if not names:
            raise DataError(f'{quoted(path)} names no class; list at least one under "classes"')
    elif dataset == "camvid":
        names, void = CAMVID
    else:
        return None if void_id is None else Classes((), void_id)
    void = void if void_id is None else void_id
    if 0 <= void < len(names):
        raise DataError(
            f"the void id {void} is also the class {names[void]!r}; void must lie outside 0..{len(names) - 1}"
        )
    return Classes(names, void)


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs of a split, by stem; an image without a mask is refused."""
    images_dir, masks_dir = root / split / "images", root / split / "masks"
    if not images_dir.is_dir():
        raise DataError(f"{quoted(images_dir)} is not a folder; the layout is DIR/{split}/images and DIR/{split}/masks")
    images = sorted(
        p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not hidden(p.name) and p.is_file()
    )
    if not images:
        raise DataError(
            f"{quoted(images_dir)} holds no image ({', '.join(IMAGE_EXTENSIONS)}); the {split} split is empty"
        )
    masks = {p.stem: p for p in masks_dir.glob("*.png") if not hidden(p.name)} if masks_dir.is_dir() else {}
    pairs = []
    for image in images:
        mask = masks.get(image.stem)
        if mask is None:
            raise DataError(f"{quoted(image)} has no mask: expected {quoted(masks_dir / (image.stem + '.png'))}")
        pairs.append((image, mask))
    return pairs


def read_mask(path: Path) -> np.ndarray:
    """A mask's class ids as a (h, w) int64 array; a colour mask or an unreadable file is refused."""
    try:
        with open_image(str(path)) as mask:
            if mask.mode not in MASK_MODES:
                raise DataError(
                    f"mask {quoted(path)} is {mask.mode}, not class ids; save one id per pixel as a single-channel "
                    "(L, I;16) or palette (P) PNG"
                )
            return np.asarray(mask, dtype=np.int64)
    except DECODE_ERRORS as e:
        raise DataError(f"mask {quoted(path)} cannot be read as an image ({e})") from None


def _scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_image(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 (3, h, w) → uint8 (3, size) by antialiased bicubic interpolation (the same kernel as the crops)."""
    if tuple(pixels.shape[1:]) == size:
        return pixels
    batch = pixels.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    return F.interpolate(batch, size=size, mode="bicubic", antialias=True, align_corners=False).squeeze(0).contiguous()


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(h, w) class ids → (size) by nearest neighbour (``nearest-exact``: pixel centres), never blended."""
    if tuple(mask.shape) == size:
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def read_split(
    root: str | Path, split: str, classes: Classes | None, scale: float = 1.0, progress: bool = True
) -> SegmentationSplit:
    """Every image of ``root/split`` and its mask, checked (sizes, ids) and held in memory at ``scale``."""
    root = Path(root)
    if not 0 < scale <= 1:
        raise ConfigError(f"--image-scale must lie in (0, 1], got {scale}")
    images, masks, full, files = [], [], [], []
    for image_path, mask_path in tqdm(_pairs(root, split), desc=f"reading {split}", disable=not progress):
        mask = read_mask(mask_path)
        try:
            rgb = load_oriented(str(image_path))  # upright: its size is the one a mask is drawn at
        except DECODE_ERRORS as e:
            raise DataError(f"image {quoted(image_path)} cannot be read ({e})") from None
        width, height = rgb.size
        if mask.shape != (height, width):
            raise DataError(
                f"mask {quoted(mask_path)} is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height}; "
                "a mask must have its image's size"
            )
        if classes is not None and classes.names:
            bad = (mask >= len(classes)) & (mask != classes.void) | (mask < 0)
            if bad.any():
                raise DataError(
                    f"mask {quoted(mask_path)} holds id {int(mask[bad][0])}, which is neither a class "
                    f"(0..{len(classes) - 1}) nor void ({classes.void})"
                )
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
        size = _scaled_size(width, height, scale)
        full_mask = torch.from_numpy(mask)
        images.append(resize_image(pixels, size))
        masks.append(resize_mask(full_mask, size))
        full.append(full_mask)
        files.append(str(image_path))
    return SegmentationSplit(split, images, masks, full, files)


def complete_classes(classes: Classes | None, splits: list[SegmentationSplit]) -> Classes:
    """``classes``, or for a folder without ``classes.json`` the ids found in its masks (0..largest, void
    excluded), named by their numbers."""
    if classes is not None and classes.names:
        return classes
    void = DEFAULT_VOID if classes is None else classes.void
    largest = max(int(m[m != void].max()) if (m != void).any() else -1 for s in splits for m in s.full_masks)
    if largest < 0:
        raise DataError(f"every mask holds only the void id {void}; nothing to learn (is --void-id right?)")
    log.info("no %s: %d classes named by their ids 0..%d, void %d", CLASSES_FILE, largest + 1, largest, void)
    return Classes(tuple(str(i) for i in range(largest + 1)), void)


def channel_stats(split: SegmentationSplit) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of a split's images at the working scale: the input normalisation."""
    total, squares, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
    for image in split.images:
        pixels = image.reshape(3, -1).double() / 255
        total += pixels.sum(1)
        squares += (pixels**2).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(max(s, 1e-3) for s in std.tolist())


def fraction_subset(n: int, fraction: float, seed: int) -> list[int]:
    """A seeded ``fraction`` of ``n`` items (at least one), sorted: the masks a few-label run keeps."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"--mask-fraction must lie in (0, 1], got {fraction}")
    keep = max(1, math.floor(fraction * n + 0.5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:keep].tolist())
