"""The view pipeline after the crop as one function of the images and their parameters, written for ``torch.compile``.

:class:`byol.augment.pipeline.ViewPipeline` applies its ops one batched pass at a time, each op to the images that
drew it. That is a few dozen passes over the pixels, and the passes, not the arithmetic, are what a view costs:
memory traffic on a CPU, kernel launches on a GPU. Here every op is computed for every image and each image keeps
what its own parameters select (``torch.where``), on the colour planes one by one, so that the compiler fuses the
whole chain into a handful of loops, each of which reads a pixel's channels once. The same arithmetic as the
eager ops (:mod:`byol.augment.functional`) in the same order; the compiler's fusion and its reductions' order
make the views differ from the eager ones by float rounding only (``tests/test_compile.py`` bounds it).

Nothing here synchronises with the host, and nothing draws random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from byol.augment import functional as AF


@dataclass(frozen=True)
class Static:
    """What the function specialises on (the compiler compiles one graph per value): the view's enabled ops, the
    input's scale, the blur's taps, the solarisation threshold and the normalisation."""

    jitter: bool
    grayscale: bool
    blur: bool
    solarize: bool
    scale: float  # 1/255 for bytes, 1 for floats in [0, 1]
    kernel_size: int
    threshold: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _per_image(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1)


def _clip(x: Tensor) -> Tensor:
    return x.clamp(0.0, 1.0)


def _select(mask: Tensor, new: list[Tensor], old: list[Tensor]) -> list[Tensor]:
    m = _per_image(mask)
    return [torch.where(m, a, b) for a, b in zip(new, old, strict=True)]


def _hsv_adjust(r: Tensor, g: Tensor, b: Tensor, factor: Tensor, delta: Tensor) -> list[Tensor]:
    """:func:`byol.augment.functional.adjust_hsv` on three planes, clipped."""
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    c = chroma.clamp_min(1e-12)
    # one division: the branch's numerator and offset selected first, the same arithmetic as the eager three
    on_r, on_g = r == value, g == value
    numerator = torch.where(on_r, g - b, torch.where(on_g, b - r, r - g))
    sixths = numerator / c + torch.where(on_r, 0.0, torch.where(on_g, 2.0, 4.0))
    # the remainders as selects: sixths lie in [-1, 5], hue + δ in (-1, 2) (|δ| ≤ 0.5) and offset + 6·hue in
    # [1, 11], where a select and torch.remainder agree bit for bit
    hue = torch.where(chroma > 0, torch.where(sixths < 0, sixths + 6.0, sixths) / 6.0, 0.0)
    saturation = torch.where(value > 0, chroma / value.clamp_min(1e-12), 0.0)
    hue = hue + _per_image(delta)
    hue = torch.where(hue < 0, hue + 1.0, torch.where(hue >= 1.0, hue - 1.0, hue))
    saturation = _clip(saturation * _per_image(factor))
    six_hue = 6.0 * hue
    planes = []
    for offset in (5.0, 3.0, 1.0):  # r, g, b
        k = offset + six_hue
        k = torch.where(k >= 6.0, k - 6.0, k)
        planes.append(_clip(value - value * saturation * _clip(torch.minimum(k, 4.0 - k))))
    return planes


def _jitter(planes: list[Tensor], jitter: Tensor, order: Tensor, brightness: Tensor, contrast: Tensor,
            saturation: Tensor, hue: Tensor) -> list[Tensor]:  # fmt: skip
    for position in range(4):
        op = torch.where(jitter, order[:, position], -1)  # -1: no jitter for this image
        planes = _select(op == 0, [_clip(p + _per_image(brightness)) for p in planes], planes)
        means = [p.mean(dim=(-2, -1), keepdim=True) for p in planes]
        contrasted = [_clip((p - m) * _per_image(contrast) + m) for p, m in zip(planes, means, strict=True)]
        planes = _select(op == 1, contrasted, planes)
        if len(planes) == 3:
            factor, delta = torch.where(op == 2, saturation, 1.0), torch.where(op == 3, hue, 0.0)
            r, g, b = planes
            planes = _select((op == 2) | (op == 3), _hsv_adjust(r, g, b, factor, delta), planes)
    return planes


def view(
    x: Tensor, flip: Tensor, jitter: Tensor, jitter_order: Tensor, brightness: Tensor, contrast: Tensor,
    saturation: Tensor, hue: Tensor, grayscale: Tensor, blur: Tensor, blur_sigma: Tensor, solarize: Tensor,
    static: Static, out: Tensor,
) -> None:  # fmt: skip
    """Crops ``x`` (N, C, S, S) as the crop left them (unclipped, at ``static.scale``) → the normalised views,
    written to ``out`` (the compiled function's last loop stores there: no copy)."""
    planes = [_clip(p * static.scale) for p in x.unbind(1)]
    planes = _select(flip, [p.flip(-1) for p in planes], planes)
    if static.jitter:
        planes = _jitter(planes, jitter, jitter_order, brightness, contrast, saturation, hue)
    if static.grayscale and len(planes) == 3:
        r, g, b = planes
        luma = _clip(r * AF.LUMA_WEIGHTS[0] + g * AF.LUMA_WEIGHTS[1] + b * AF.LUMA_WEIGHTS[2])
        planes = _select(grayscale, [luma] * 3, planes)
    if static.blur:
        blurred = AF.gaussian_blur(torch.stack(planes, dim=1), blur_sigma, static.kernel_size)
        planes = _select(blur, [_clip(p) for p in blurred.unbind(1)], planes)
    if static.solarize:
        t = static.threshold
        planes = _select(solarize, [torch.where(p < t, p, 1.0 - p) for p in planes], planes)
    out.copy_(torch.stack([(p - m) / s for p, m, s in zip(planes, static.mean, static.std, strict=True)], dim=1))
