"""BYOL's two view distributions T and T' (paper Table 6, released ``augmentations.py``; SPEC §3).

Order for one view: random resized crop → horizontal flip → colour jitter (random order per image, clip after
each op) → grayscale → Gaussian blur → solarise → clip → normalise. Each image draws its own parameters from
a ``torch.Generator`` on the batch's device, so a seed reproduces the same views and the whole pipeline runs
where the batch lives (on the GPU when there is one), with no Python loop over images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byol.augment import functional as AF
from byol.augment import fused
from byol.errors import ConfigError


@dataclass(frozen=True)
class ViewConfig:
    """One view distribution. The defaults are the released code's T (``view1``)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_log_ratio: tuple[float, float] = (math.log(3 / 4), math.log(4 / 3))
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0
    solarize_threshold: float = 0.5


# Released code: view1 blurs always and never solarises; view2 blurs 10% and solarises 20% of the time.
BYOL_T = ViewConfig()
BYOL_T_PRIME = ViewConfig(blur_prob=0.1, solarize_prob=0.2)


def _both(t: ViewConfig, t_prime: ViewConfig, **changes: Any) -> tuple[ViewConfig, ViewConfig]:
    return dataclasses.replace(t, **changes), dataclasses.replace(t_prime, **changes)


_NO_COLOR: dict[str, Any] = {"jitter_prob": 0.0, "grayscale_prob": 0.0}
_NO_BLUR_SOLARIZE: dict[str, Any] = {"blur_prob": 0.0, "solarize_prob": 0.0}

# The paper's Table 17 (appendix F.2), by the paper's names, as (T, T').
PRESETS: dict[str, tuple[ViewConfig, ViewConfig]] = {
    "byol": (BYOL_T, BYOL_T_PRIME),
    "remove-flip": _both(BYOL_T, BYOL_T_PRIME, flip_prob=0.0),
    "remove-blur": _both(BYOL_T, BYOL_T_PRIME, blur_prob=0.0),
    "remove-color": _both(BYOL_T, BYOL_T_PRIME, **_NO_COLOR),
    "remove-color-jittering": _both(BYOL_T, BYOL_T_PRIME, jitter_prob=0.0),
    "remove-grayscale": _both(BYOL_T, BYOL_T_PRIME, grayscale_prob=0.0),
    "remove-blur-in-t-prime": (BYOL_T, dataclasses.replace(BYOL_T_PRIME, blur_prob=0.0)),
    "remove-solarize-in-t-prime": (BYOL_T, dataclasses.replace(BYOL_T_PRIME, solarize_prob=0.0)),
    "remove-blur-and-solarize-in-t-prime": (BYOL_T, dataclasses.replace(BYOL_T_PRIME, **_NO_BLUR_SOLARIZE)),
    "symmetric-blur-solarize": _both(BYOL_T, BYOL_T_PRIME, blur_prob=0.5, solarize_prob=0.1),
    "crop-only": _both(BYOL_T, BYOL_T_PRIME, flip_prob=0.0, **_NO_COLOR, **_NO_BLUR_SOLARIZE),
    "crop-and-flip-only": _both(BYOL_T, BYOL_T_PRIME, **_NO_COLOR, **_NO_BLUR_SOLARIZE),
    "crop-and-color-only": _both(BYOL_T, BYOL_T_PRIME, flip_prob=0.0, **_NO_BLUR_SOLARIZE),
    "crop-and-blur-only": _both(BYOL_T, BYOL_T_PRIME, flip_prob=0.0, **_NO_COLOR, solarize_prob=0.0, blur_prob=1.0),
}
# Linear evaluation trains on random crop + flip (SPEC §5).
LINEAR_EVAL_VIEW = PRESETS["crop-and-flip-only"][0]


def get_views(preset: str, crop_min_scale: float | None = None) -> tuple[ViewConfig, ViewConfig]:
    """The (T, T') pair of a preset; ``crop_min_scale`` replaces the smallest crop area (0.08 in the paper)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; valid presets are: {', '.join(PRESETS)}")
    t, t_prime = PRESETS[preset]
    if crop_min_scale is None:
        return t, t_prime
    scale = (crop_min_scale, 1.0)
    return dataclasses.replace(t, crop_scale=scale), dataclasses.replace(t_prime, crop_scale=scale)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device) * (high - low) + low


def _bernoulli(n: int, p: float, generator: torch.Generator) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device) < p


def sample_crop_boxes(n: int, height: int, width: int, view: ViewConfig, generator: torch.Generator) -> Tensor:
    """(N, 4) boxes (top, left, h, w): area ~ U(scale)·H·W, aspect ~ exp(U(log-ratio)), one attempt.

    As in the released ``_distorted_bounding_box_crop`` there is no retry loop: the sides are clipped to the
    image, then the box is placed uniformly.
    """
    area = _uniform(n, *view.crop_scale, generator) * height * width
    ratio = torch.exp(_uniform(n, *view.crop_log_ratio, generator))  # width / height
    w = torch.sqrt(area * ratio).clamp(max=width)
    h = torch.sqrt(area / ratio).clamp(max=height)
    top = torch.rand(n, generator=generator, device=generator.device) * (height - h)
    left = torch.rand(n, generator=generator, device=generator.device) * (width - w)
    return torch.stack((top, left, h, w), dim=1)


def _apply_to(x: Tensor, mask: Tensor, op: Callable[..., Tensor], *params: Tensor, sync_free: bool) -> Tensor:
    """x with op(images, *their params) applied to the images selected by mask, clipped to [0, 1]; the others
    stay untouched.

    ``sync_free`` (a GPU): every image is computed and the mask selects, with no host synchronisation, so the
    next batch's views can run ahead on a side stream while a step runs. Otherwise (a CPU, where synchronising
    costs nothing) only the selected images are computed, none when none is selected.
    """
    if sync_free:
        return torch.where(mask.view(-1, 1, 1, 1), op(x, *params).clamp(0.0, 1.0), x)
    index = mask.nonzero().squeeze(1)
    if index.numel() == 0:
        return x
    if index.numel() == x.shape[0]:
        return op(x, *params).clamp_(0.0, 1.0)
    selected = op(x.index_select(0, index), *(p.index_select(0, index) for p in params)).clamp_(0.0, 1.0)
    return x.index_copy_(0, index, selected)  # x is the pipeline's own tensor (see ViewPipeline.apply)


@dataclass
class ViewParams:
    """Every random choice of one view, per image (tensors of shape (N,) unless noted)."""

    boxes: Tensor  # (N, 4) crop boxes (top, left, height, width) in pixels
    flip: Tensor
    jitter: Tensor
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    jitter_order: Tensor  # (N, 4): a permutation of (brightness, contrast, saturation, hue) per image
    grayscale: Tensor
    blur: Tensor
    blur_sigma: Tensor
    solarize: Tensor

    def part(self, start: int, stop: int) -> ViewParams:
        """The parameters of images [start, stop)."""
        return ViewParams(**{f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)})


# A CPU makes the views of a batch in parts of at most this many bytes of float pixels, so that the passes over
# them run in the cores' caches rather than in memory (with the in-place ops, the eager views went 3.3x faster at
# 224 px and 1.7x at 96: docs/benchmarks.md).
CPU_PART_BYTES = 4 << 20


def _part_size(pixels: int) -> int:
    """Images per part: a power of two, so that a batch of a power of two falls into parts of one shape (one
    compiled graph)."""
    return 1 << max(0, (CPU_PART_BYTES // (4 * pixels)).bit_length() - 1)


class ViewPipeline:
    """Samples one view of each image of a batch: float (N, C, H, W) in [0, 1] → normalised (N, C, S, S).

    ``sync_free``: how an op reaches the images it selects (see :func:`_apply_to`); None, the default, chooses
    by the batch's device. Both ways give the same views.

    ``compiled``: the ops after the crop run as one compiled function (:mod:`byol.augment.fused`, fewer passes
    over the pixels) rather than op by op; the same views up to float rounding. The crop stays eager (ATen's
    bicubic ``grid_sample`` is faster than its compiled decomposition).
    """

    sync_free: bool | None = None

    def __init__(self, view: ViewConfig, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.view = view
        self.image_size = image_size
        self.normalization = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.kernel_size = AF.blur_kernel_size(image_size)
        self.compiled: Callable[..., None] | None = None

    def compile(self, compiler: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
        """Runs the ops after the crop as ``compiler(fused.view)`` (``torch.compile`` or a wrapper of it)."""
        self.compiled = compiler(fused.view)

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> ViewParams:
        """Draws every parameter of n views, in a fixed order, from ``generator`` (on the batch's device)."""
        view = self.view
        return ViewParams(
            boxes=sample_crop_boxes(n, height, width, view, generator),
            flip=_bernoulli(n, view.flip_prob, generator),
            jitter=_bernoulli(n, view.jitter_prob, generator),
            brightness=_uniform(n, -view.brightness, view.brightness, generator),
            contrast=_uniform(n, 1 - view.contrast, 1 + view.contrast, generator),
            saturation=_uniform(n, 1 - view.saturation, 1 + view.saturation, generator),
            hue=_uniform(n, -view.hue, view.hue, generator),
            jitter_order=torch.rand(n, 4, generator=generator, device=generator.device).argsort(dim=1),
            grayscale=_bernoulli(n, view.grayscale_prob, generator),
            blur=_bernoulli(n, view.blur_prob, generator),
            blur_sigma=_uniform(n, *view.blur_sigma, generator),
            solarize=_bernoulli(n, view.solarize_prob, generator),
        )

    def apply(self, images: Tensor, params: ViewParams, crop: bool = True) -> Tensor:
        """The view of each image under its parameters; ``crop=False`` skips the crop (already done)."""
        if not crop and (images.shape[-1] != self.image_size or images.shape[-2] != self.image_size):
            raise ValueError(f"uncropped batch must be {self.image_size} px, got {tuple(images.shape[-2:])}")
        sync_free = images.device.type != "cpu" if self.sync_free is None else self.sync_free
        n, channels = images.shape[:2]
        part = n if sync_free else _part_size(channels * self.image_size**2)
        if part >= n and self.compiled is None:
            return self._apply(images, params, crop, sync_free)
        out = torch.empty(n, channels, self.image_size, self.image_size, device=images.device)
        for start in range(0, n, part):
            stop = min(n, start + part)
            if self.compiled is not None:
                self._apply_compiled(images[start:stop], params.part(start, stop), crop, out[start:stop])
            else:
                out[start:stop] = self._apply(images[start:stop], params.part(start, stop), crop, sync_free)
        return out

    def _apply(self, images: Tensor, params: ViewParams, crop: bool, sync_free: bool) -> Tensor:
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if crop:
            x = AF.resized_crop(x, params.boxes, self.image_size).clamp_(0.0, 1.0)
        x, view = AF.hflip(x, params.flip), self.view  # a new tensor: the ops below may work in place
        if view.jitter_prob > 0:  # an op whose probability is 0 costs nothing, on a GPU too
            x = _jitter(x, params, sync_free)
        if view.grayscale_prob > 0:
            x = _apply_to(x, params.grayscale, AF.to_grayscale, sync_free=sync_free)
        if view.blur_prob > 0:
            blur = functools.partial(AF.gaussian_blur, kernel_size=self.kernel_size)
            x = _apply_to(x, params.blur, blur, params.blur_sigma, sync_free=sync_free)
        if view.solarize_prob > 0:
            solarize = functools.partial(AF.solarize, threshold=view.solarize_threshold)
            x = _apply_to(x, params.solarize, solarize, sync_free=sync_free)
        if self.mean.device != x.device:  # moved once, not at every batch
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return x.sub_(self.mean).div_(self.std)

    def _apply_compiled(self, images: Tensor, params: ViewParams, crop: bool, out: Tensor) -> None:
        x = images.float()  # the scale to [0, 1] is fused with what follows the crop
        if crop:
            x = AF.resized_crop(x, params.boxes, self.image_size)
        v, p = self.view, params
        static = fused.Static(
            jitter=v.jitter_prob > 0, grayscale=v.grayscale_prob > 0, blur=v.blur_prob > 0,
            solarize=v.solarize_prob > 0, scale=1 / 255 if images.dtype == torch.uint8 else 1.0,
            kernel_size=self.kernel_size, threshold=v.solarize_threshold,
            mean=self.normalization[0], std=self.normalization[1],
        )  # fmt: skip
        assert self.compiled is not None
        self.compiled(
            x, p.flip, p.jitter, p.jitter_order, p.brightness, p.contrast, p.saturation, p.hue, p.grayscale, p.blur,
            p.blur_sigma, p.solarize, static, out,
        )  # fmt: skip

    def __call__(self, images: Tensor, generator: torch.Generator, crop: bool = True) -> Tensor:
        """``crop=False`` for batches already cropped to image_size at decode time (image folders)."""
        params = self.sample(images.shape[0], images.shape[-2], images.shape[-1], generator)
        return self.apply(images, params, crop)


def _jitter(x: Tensor, p: ViewParams, sync_free: bool) -> Tensor:
    """Colour jitter: at each of the 4 positions every jittered image runs the op its own order puts there,
    clipped. Saturation and hue share one HSV round trip (:func:`AF.adjust_hsv`) with the other's identity."""
    for position in range(4):
        op = torch.where(p.jitter, p.jitter_order[:, position], -1)  # -1: no jitter for this image
        x = _apply_to(x, op == 0, AF.adjust_brightness, p.brightness, sync_free=sync_free)
        x = _apply_to(x, op == 1, AF.adjust_contrast, p.contrast, sync_free=sync_free)
        if x.shape[1] == 3:  # saturation and hue are identities on one channel
            saturation, hue = op == 2, op == 3
            factor, delta = torch.where(saturation, p.saturation, 1.0), torch.where(hue, p.hue, 0.0)
            x = _apply_to(x, saturation | hue, AF.adjust_hsv, factor, delta, sync_free=sync_free)
    return x


class TwoViews:
    """The pair (t(x), t'(x)), t ~ T and t' ~ T', drawn independently per image."""

    def __init__(
        self,
        preset: str,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_min_scale: float | None = None,
    ) -> None:
        t, t_prime = get_views(preset, crop_min_scale)
        self.t = ViewPipeline(t, image_size, mean, std)
        self.t_prime = ViewPipeline(t_prime, image_size, mean, std)

    def compile(self, compiler: Callable[[Callable[..., None]], Callable[..., None]]) -> None:
        """Both pipelines' ops after the crop compiled (:meth:`ViewPipeline.compile`)."""
        self.t.compile(compiler)
        self.t_prime.compile(compiler)

    def eager(self) -> None:
        """Undoes :meth:`compile`."""
        self.t.compiled = self.t_prime.compiled = None

    def __call__(self, images: Tensor, generator: torch.Generator, crop: bool = True) -> tuple[Tensor, Tensor]:
        return self.t(images, generator, crop), self.t_prime(images, generator, crop)


def evaluation_view(images: Tensor, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Deterministic evaluation input: the whole image resized to image_size (bicubic), normalised.

    In-memory datasets (28–96 px) are evaluated on the whole image; image folders are centre-cropped at
    decode time (224/256 of the shorter side, SPEC §3) before reaching here.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        n, _, h, w = x.shape
        boxes = torch.tensor([[0.0, 0.0, float(h), float(w)]], device=x.device).expand(n, 4)
        x = AF.resized_crop(x, boxes, image_size).clamp_(0.0, 1.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t
