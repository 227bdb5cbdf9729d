"""Pure, batched image operations of BYOL's view augmentations (paper Table 6, SPEC §3).

Every function takes a float batch ``x`` of shape (N, C, H, W) with values in [0, 1] and its parameters as
per-image tensors of shape (N,), so each image of a batch gets its own parameters. Nothing here draws random
numbers; :mod:`byol.augment.pipeline` does.

Single-channel images (Fashion-MNIST): brightness, contrast, blur, solarise, flip and crop act as on any
channel; saturation, hue and grayscale are identities, since a one-channel image has no chroma.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

# ITU-R 601 luma, as tf.image.rgb_to_grayscale and the released code use.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


@functools.cache
def _channel_constants(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """(1, C, 1, 1) constants, made once per device: from host data on a GPU, each making is a blocking copy."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def _per_image(v: Tensor) -> Tensor:
    return v.reshape(-1, 1, 1, 1)


def adjust_brightness(x: Tensor, delta: Tensor) -> Tensor:
    """x + δ (additive, TF style; not torchvision's multiplicative brightness). Not clipped."""
    return x + _per_image(delta).to(x.dtype)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """(x − mean_c)·f + mean_c, mean_c the per-image, per-channel spatial mean (tf.image.adjust_contrast)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    return (x - mean) * _per_image(factor).to(x.dtype) + mean


def _hsv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hue, saturation and value of an (N, 3, H, W) RGB batch, each (N, 1, H, W). The hue is (g − b)/c,
    (b − r)/c + 2 or (r − g)/c + 4 in sixths, as r, g or b holds the maximum (the first of them on a tie)."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    value = torch.maximum(torch.maximum(r, g), b)
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    c = chroma.clamp_min(1e-12)
    sixths = torch.where(r == value, (g - b) / c, torch.where(g == value, (b - r) / c + 2.0, (r - g) / c + 4.0))
    hue = torch.where(chroma > 0, torch.remainder(sixths, 6.0) / 6.0, 0.0)
    return hue, torch.where(value > 0, chroma / value.clamp_min(1e-12), 0.0), value


def _rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """RGB (N, 3, H, W) from hue, saturation and value, each (N, 1, H, W)."""
    k = torch.remainder(_channel_constants((5.0, 3.0, 1.0), h.device, h.dtype) + 6.0 * h, 6.0)  # for r, g, b
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] → HSV with h, s, v in [0, 1]."""
    return torch.cat(_hsv(x), dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    return _rgb(*x.split(1, dim=1))


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """HSV saturation s ↦ clip(s·f, 0, 1). Identity on single-channel images."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    s = torch.clamp(hsv[:, 1:2] * _per_image(factor).to(x.dtype), 0.0, 1.0)
    return hsv_to_rgb(torch.cat((hsv[:, :1], s, hsv[:, 2:]), dim=1))


def adjust_hue(x: Tensor, delta: Tensor) -> Tensor:
    """HSV hue h ↦ (h + δ) mod 1. Identity on single-channel images."""
    if x.shape[1] == 1:
        return x
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, :1] + _per_image(delta).to(x.dtype), 1.0)
    return hsv_to_rgb(torch.cat((h, hsv[:, 1:]), dim=1))


def adjust_hsv(x: Tensor, saturation: Tensor, hue: Tensor) -> Tensor:
    """Saturation s ↦ clip(s·f, 0, 1) and hue h ↦ (h + δ) mod 1 in one HSV round trip: with δ = 0 it is
    :func:`adjust_saturation`, with f = 1 :func:`adjust_hue`. Identity on single-channel images.

    The arithmetic of :func:`rgb_to_hsv` and :func:`hsv_to_rgb` without stacking the channels (a GPU runs it
    for the whole batch at each jitter position).
    """
    if x.shape[1] == 1:
        return x
    h, s, v = _hsv(x)
    h = torch.remainder(h + _per_image(hue).to(x.dtype), 1.0)
    s = torch.clamp(s * _per_image(saturation).to(x.dtype), 0.0, 1.0)
    return _rgb(h, s, v)


def to_grayscale(x: Tensor) -> Tensor:
    """Luma 0.2989 R + 0.5870 G + 0.1140 B, repeated to the input's channel count."""
    if x.shape[1] == 1:
        return x
    weights = _channel_constants(LUMA_WEIGHTS, x.device, x.dtype)
    return (x * weights).sum(dim=1, keepdim=True).expand_as(x).contiguous()


def blur_kernel_size(image_size: int) -> int:
    """2·floor(H/20) + 1 taps: the released code's kernel of size H/10 (23 taps at 224 px, 3 at 32 px)."""
    return 2 * (image_size // 20) + 1


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """One normalised 1-D Gaussian per image: (N,) sigmas → (N, kernel_size)."""
    radius = kernel_size // 2
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    kernels = torch.exp(-(taps**2) / (2.0 * sigma.float().view(-1, 1) ** 2))
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with a per-image σ, zero padding ('SAME' convolution as in the released code)."""
    n, c, h, w = x.shape
    kernels = gaussian_kernels(sigma, kernel_size).to(x.dtype)  # (N, k)
    kernels = kernels.repeat_interleave(c, dim=0)  # (N·C, k): one depthwise filter per image channel
    flat = x.reshape(1, n * c, h, w)
    pad = kernel_size // 2
    flat = F.conv2d(flat, kernels.view(n * c, 1, kernel_size, 1), padding=(pad, 0), groups=n * c)
    flat = F.conv2d(flat, kernels.view(n * c, 1, 1, kernel_size), padding=(0, pad), groups=n * c)
    return flat.view(n, c, h, w)


def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
    """x if x < threshold else 1 − x."""
    return torch.where(x < threshold, x, 1.0 - x)


def hflip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right the images whose ``mask`` entry is True."""
    return torch.where(_per_image(mask), x.flip(-1), x)


def resized_crop(x: Tensor, boxes: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Crop each image to its box and resize it to size × size, in one batched ``grid_sample``.

    boxes: (N, 4) float pixel boxes (top, left, height, width), possibly sub-pixel. Output pixel centres are
    spaced evenly over the box (align_corners=False convention); bicubic as in the paper, no antialiasing as
    in the released code. Bicubic can overshoot [0, 1]: the pipeline clips afterwards.
    """
    n, _, h, w = x.shape
    steps = (torch.arange(size, device=x.device, dtype=torch.float32) + 0.5) / size  # (size,)
    top, left, height, width = boxes.float().unbind(dim=1)
    ys = top.view(n, 1) + steps.view(1, size) * height.view(n, 1)  # (N, size) pixel coordinates
    xs = left.view(n, 1) + steps.view(1, size) * width.view(n, 1)
    gy = (ys / h * 2.0 - 1.0).view(n, size, 1).expand(n, size, size)
    gx = (xs / w * 2.0 - 1.0).view(n, 1, size).expand(n, size, size)
    grid = torch.stack((gx, gy), dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)
