"""From an image file to fixed-size crops: EXIF orientation, and decoding at the size the crops need.

A crop box is drawn in the coordinates of the image as it is meant to be seen (its EXIF orientation applied),
from the file's header alone. A JPEG is then decoded at the largest DCT scale (1/2, 1/4 or 1/8, libjpeg's
scaled decoding through Pillow's ``draft``) that keeps every crop at least :data:`MARGIN` times the output
size on each side, so the bicubic resize that follows still reduces (and antialiases) every crop. A 12-megapixel
photo cut into two 224-px views is mostly decoded at 1/4 or 1/8 of its size: a fraction of the work of a full
decode, and of the resize. The boxes are the same whichever scale is decoded (they are scaled with it), so the
crop law, its seeds and an exact resume do not depend on it.

Each box is cut at whole pixels of the decoded image and resized by torch's antialiased bicubic interpolation
on uint8 (``F.interpolate(..., antialias=True)``): Pillow's kernel (a = -0.5, support widened by the
reduction), 3-5x faster than Pillow's own resize on one core (docs/data.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

from byol.augment.pipeline import ViewConfig
from byol.data.folder import ImageFolder
from byol.data.shards import ShardSet
from byol.errors import DataError, one_line, quoted

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # left, top, right, bottom in the oriented image's pixels
Source = str | typing.BinaryIO  # what Pillow opens: a path, or a file object (a shard's member)
# A crop decoded at reduced scale keeps at least this many pixels per output pixel on each side: the resize
# after it then still reduces, with its antialiasing (measured against full decodes in docs/data.md).
MARGIN = 1.25
SCALES = (8, 4, 2)  # the DCT scalings libjpeg decodes at, largest first
TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
MAX_CONSECUTIVE_FAILURES = 50  # unreadable files in a row that stop a run: a broken dataset, not a bad file
EVAL_CROP_FRACTION = 224 / 256
HIGH_BIT_DEPTH = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0, "F": 1.0}
# What Pillow raises for a file it cannot read as an image (a truncated JPEG raises OSError, a bad header
# SyntaxError or ValueError, a decompression bomb its own error).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


_WARNED: set[tuple[str, str]] = set()  # (file, Pillow's warnings) this process has logged


@contextlib.contextmanager
def open_image(path: Source) -> Iterator[Image.Image]:
    """``Image.open(path)``, its Pillow warnings while it is open (a damaged EXIF block, a palette PNG with
    transparency, a large image) turned into one log line naming the file, instead of Pillow's own two lines that
    name Pillow's source and not the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Image.open(path) as image:
            yield image
    name = path if isinstance(path, str) else getattr(path, "name", "an image of a prepared shard")
    said = "; ".join(dict.fromkeys(one_line(str(w.message)) for w in caught))
    if said and (name, said) not in _WARNED:  # once per file and process, not once per epoch
        _WARNED.add((name, said))
        log.warning("%s: %s (Pillow)", quoted(name), said)


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when there is none or it is not a valid one."""
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODE_ERRORS:  # a damaged EXIF block: the pixels may still be fine
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as it is meant to be seen, from the header alone."""
    width, height = image.size
    return (height, width) if orientation(image) in TRANSPOSED else (width, height)


def decode_scale(boxes: Sequence[Box], size: int, margin: float | None = None) -> int:
    """The largest of :data:`SCALES` that keeps every box at least ``margin * size`` pixels on each side once
    divided by it; 1 (a full decode) when none does."""
    smallest = min(min(right - left, bottom - top) for left, top, right, bottom in boxes)
    margin = MARGIN if margin is None else margin
    return next((scale for scale in SCALES if smallest / scale >= margin * size), 1)


def to_rgb8(image: Image.Image) -> Image.Image:
    """8-bit RGB by the image's real bit depth. Pillow's own convert("RGB") clips 16-bit grey (modes I;16 and I,
    what 16-bit PNGs open as) to white above 255; here 0..65535 maps onto 0..255. Float images ("F") are
    taken as 0..255."""
    if image.mode == "RGB":
        return image
    divisor = HIGH_BIT_DEPTH.get(image.mode)
    if divisor is None:
        return image.convert("RGB")
    grey = np.clip(np.asarray(image, dtype=np.float64) / divisor, 0, 255).round().astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def load_oriented(path: Source, scale: int = 1) -> Image.Image:
    """The whole image, upright (its EXIF orientation applied), in 8-bit RGB; a JPEG decoded at 1/``scale``."""
    with open_image(path) as image:
        return _decode(image, scale, orientation(image))[0]


def decode_crops(
    path: Source, size: int, boxes: Callable[[int, int], Sequence[Box]], *, reduced: bool = True
) -> list[Tensor]:
    """uint8 (3, size, size) crops of the image at ``path``, upright: ``boxes(width, height)`` draws the boxes from
    the oriented size the header gives, then the file is decoded at the scale they need (``reduced=False``:
    always in full) and each box is resized (antialiased bicubic) to ``size``."""
    pixels, pixel_boxes = decode_boxes(path, size, boxes, reduced=reduced)
    return [resize(pixels, box, size) for box in pixel_boxes]


def decode_boxes(
    path: Source, size: int, boxes: Callable[[int, int], Sequence[Box]], *, reduced: bool = True
) -> tuple[Tensor, list[tuple[int, int, int, int]]]:
    """What :func:`decode_crops` cuts its crops from: the decoded (H, W, 3) uint8 pixels and the boxes in them, for
    a caller that cuts the same boxes from the pixels changed (:func:`colour_normalised`)."""
    with open_image(path) as image:
        turn = orientation(image)
        width, height = image.size
        crops = boxes(*((height, width) if turn in TRANSPOSED else (width, height)))
        rgb, scale = _decode(image, decode_scale(crops, size) if reduced and image.format == "JPEG" else 1, turn)
    pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8))  # (H, W, 3): channels last
    return pixels, [pixel_box(box, scale, pixels.shape[1], pixels.shape[0]) for box in crops]


def pixel_box(box: Box, scale: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` in the pixels of an image decoded at 1/``scale``, rounded to whole pixels inside it, at least one
    pixel on each side."""
    left = min(max(round(box[0] / scale), 0), width - 1)
    top = min(max(round(box[1] / scale), 0), height - 1)
    right = min(max(round(box[2] / scale), left + 1), width)
    bottom = min(max(round(box[3] / scale), top + 1), height)
    return left, top, right, bottom


def resize(pixels: Tensor, box: tuple[int, int, int, int], size: int) -> Tensor:
    """The (3, size, size) uint8 crop ``box`` of (H, W, 3) ``pixels``, resized by antialiased bicubic."""
    left, top, right, bottom = box
    crop = pixels[top:bottom, left:right].permute(2, 0, 1).unsqueeze(0)
    crop = crop.contiguous(memory_format=torch.channels_last)  # the layout torch's uint8 kernels take
    out = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.squeeze(0).contiguous()


def _decode(image: Image.Image, scale: int, turn: int) -> tuple[Image.Image, int]:
    """The image upright (``turn``: its EXIF orientation) in 8-bit RGB and the scale it was decoded at: 1/``scale``
    where the decoder can (a JPEG with one tile: pixel x of the full image is x / scale of this one), in full
    elsewhere."""
    if scale > 1:
        width = image.width
        drafted = image.draft("RGB", (width // scale, image.height // scale))
        scale = round(width / drafted[1][2]) if drafted is not None else 1
    image.load()
    if turn != 1:
        ImageOps.exif_transpose(image, in_place=True)
    return to_rgb8(image), scale


def random_box(width: int, height: int, view: ViewConfig, rng: np.random.Generator) -> Box:
    """The released crop law (area fraction, log aspect ratio, one attempt, clipped), as a PIL box."""
    area = rng.uniform(*view.crop_scale) * width * height
    ratio = math.exp(rng.uniform(*view.crop_log_ratio))
    w = min(math.sqrt(area * ratio), width)
    h = min(math.sqrt(area / ratio), height)
    left = rng.uniform(0, width - w)
    top = rng.uniform(0, height - h)
    return (left, top, left + w, top + h)


def centre_box(width: int, height: int) -> Box:
    """The evaluation crop: the centre 224/256 of the shorter side (SPEC §3)."""
    side = min(width, height) * EVAL_CROP_FRACTION
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def whole_box(width: int, height: int) -> Box:
    """The whole image: what copy detection embeds (``byol embed --copy-crops``), where every pixel counts."""
    return (0.0, 0.0, float(width), float(height))


COPY_SIDE, COPY_GRID = 0.9, 7  # copy crops: 90% of the side at a 7x7 grid of positions (every 1/60 of the side)


def copy_boxes(box: Box) -> list[Box]:
    """The copy crops of a box (left, top, right, bottom): :data:`COPY_SIDE` of its sides at a
    :data:`COPY_GRID` x :data:`COPY_GRID` grid of positions, row by row."""
    left, top, right, bottom = box
    width, height = right - left, bottom - top
    steps = np.linspace(0.0, 1.0 - COPY_SIDE, COPY_GRID).tolist()
    return [(left + x * width, top + y * height, left + (x + COPY_SIDE) * width, top + (y + COPY_SIDE) * height)
            for y in steps for x in steps]  # fmt: skip


# Copy views, colour-normalised: the level and the colourfulness every image is brought to (0-255 scale)
NORMAL_LUMA, NORMAL_CHROMA = 110.0, 25.0
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2, the luma PIL's ImageEnhance.Color blends with


def colour_normalised(pixels: Tensor) -> Tensor:
    """uint8 (..., C, H, W) pixels with their brightness and colourfulness set to common values: each image's luma
    scaled to mean :data:`NORMAL_LUMA` and its colour about the luma (RGB minus luma) to RMS :data:`NORMAL_CHROMA`.
    A copy made brighter or darker (RGB times a factor) or more or less colourful (luma plus the colour times a
    factor, as PIL's ImageEnhance.Brightness and Color do) comes out as its original, up to clipping and rounding:
    what `byol duplicates` compares beside the pixels as they are (docs/curation.md)."""
    x = pixels.float()
    channels = x.shape[-3]
    weights = torch.tensor(LUMA_WEIGHTS if channels == 3 else (1.0 / channels,) * channels).view(channels, 1, 1)
    luma = (x * weights).sum(-3, keepdim=True)  # grey images: the pixels themselves, and no colour
    chroma = x - luma
    level = luma.mean((-3, -2, -1), keepdim=True).clamp_min(1.0)
    spread = chroma.pow(2).mean((-3, -2, -1), keepdim=True).sqrt().clamp_min(1.0)
    out = NORMAL_LUMA * luma / level + NORMAL_CHROMA * chroma / spread
    return out.round_().clamp_(0, 255).to(torch.uint8)


PIXEL_SIDE = 8  # copy views' pixel descriptor: each view at 8 x 8 pixels (docs/curation.md)


def pixel_descriptors(views: Tensor) -> Tensor:
    """(..., C, H, W) uint8 views → (..., C·8·8) float32 unit rows: each view resized to :data:`PIXEL_SIDE` pixels
    a side (antialiased), its mean taken off. What `byol duplicates` compares beside the encoder's features: a copy
    blurred or re-encoded keeps the coarse layout of its pixels where a small encoder's features drift."""
    lead, (channels, height, width) = views.shape[:-3], views.shape[-3:]
    x = views.reshape(-1, channels, height, width).float()
    x = F.interpolate(x, size=(PIXEL_SIDE, PIXEL_SIDE), mode="bilinear", antialias=True, align_corners=False)
    x = x.flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=1).reshape(*lead, -1)


# An item: crop 1, crop 2 (empty for the centre crop), label, the files skipped for it, the image's index.
Item = tuple[Tensor, Tensor, int, tuple[str, ...], int]
EMPTY = torch.empty(0, dtype=torch.uint8)


class FolderCrops(torch.utils.data.Dataset):
    """Decoded crops of an :class:`ImageFolder` or of prepared shards (:class:`~byol.data.shards.ShardSet`): two
    random views (``views`` given) or one centre crop (``whole``: the whole image instead), decoded at the size
    they need (``reduced=False``: every file decoded in full, the path before that existed).

    Random crops are seeded by (seed, epoch, index), so they do not depend on worker count or order. An unreadable
    file is named in a warning and travels with the item as skipped: in training the next readable file stands in
    for it (a batch keeps its size), in evaluation its item is empty and the batch leaves it out (an evaluation
    never grades one image in place of another). After :data:`MAX_CONSECUTIVE_FAILURES` unreadable files in a
    row the dataset is broken and :class:`DataError` stops the run.
    """

    def __init__(
        self,
        folder: ImageFolder | ShardSet,
        *,
        size: int,
        views: tuple[ViewConfig, ViewConfig] | None,
        seed: int = 0,
        reduced: bool = True,
        whole: bool = False,
    ) -> None:
        self.folder, self.size, self.views, self.seed, self.reduced = folder, size, views, seed, reduced
        self.whole = whole
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.folder)

    def boxes(self, index: int) -> Callable[[int, int], list[Box]]:
        """The crop boxes of item ``index`` this epoch, as a function of the image's (oriented) size."""
        if self.views is None:
            box = whole_box if self.whole else centre_box
            return lambda width, height: [box(width, height)]
        views = self.views

        def draw(width: int, height: int) -> list[Box]:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            return [random_box(width, height, view, rng) for view in views]

        return draw

    def __getitem__(self, index: int) -> Item:
        skipped: list[str] = []
        files = self.folder
        attempts = MAX_CONSECUTIVE_FAILURES if self.views is not None else 1
        for attempt in range(attempts):
            i = (index + attempt) % len(files)
            try:
                crops = decode_crops(files.read(i), self.size, self.boxes(index), reduced=self.reduced)
                break
            except DECODE_ERRORS as e:
                log.warning("skipping unreadable image %s (%s)", quoted(files.describe(i)), e)
                skipped.append(files.describe(i))
        else:
            if self.views is None:
                return EMPTY, EMPTY, -1, tuple(skipped), index
            raise DataError(
                f"{MAX_CONSECUTIVE_FAILURES} unreadable images in a row from {quoted(files.describe(index))} on: "
                "the dataset looks broken"
            )
        second = crops[1] if len(crops) > 1 else EMPTY
        return crops[0], second, int(self.folder.labels[i]), tuple(skipped), i
