import colorsys
import math

import pytest
import torch

from byol.augment import functional as AF


def _rgb(n=4, size=6):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_brightness_is_additive():
    x = _rgb()
    delta = torch.tensor([0.1, -0.2, 0.0, 0.4])
    torch.testing.assert_close(AF.adjust_brightness(x, delta), x + delta.view(-1, 1, 1, 1))


def test_contrast_uses_the_per_channel_spatial_mean():
    x = _rgb()
    f = torch.tensor([0.6, 1.4, 1.0, 0.0])
    mean = x.mean(dim=(2, 3), keepdim=True)
    out = AF.adjust_contrast(x, f)
    torch.testing.assert_close(out, (x - mean) * f.view(-1, 1, 1, 1) + mean)
    torch.testing.assert_close(out[3], mean[3].expand(3, 6, 6))  # factor 0: flat per-channel mean


def test_hsv_round_trip_and_agreement_with_colorsys():
    x = _rgb(2, 5)
    torch.testing.assert_close(AF.hsv_to_rgb(AF.rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    r, g, b = x[0, :, 1, 2].tolist()
    torch.testing.assert_close(AF.rgb_to_hsv(x)[0, :, 1, 2], torch.tensor(colorsys.rgb_to_hsv(r, g, b)))


def test_hue_and_saturation_closed_forms():
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    green = AF.adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    x = _rgb()
    torch.testing.assert_close(AF.adjust_hue(x, torch.zeros(4)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(AF.adjust_saturation(x, torch.ones(4)), x, atol=1e-5, rtol=0)
    hsv = AF.rgb_to_hsv(x)
    out = AF.rgb_to_hsv(AF.adjust_saturation(x, torch.full((4,), 0.5)))
    torch.testing.assert_close(out[:, 1], hsv[:, 1] * 0.5, atol=1e-5, rtol=0)
    gray = AF.adjust_saturation(x, torch.zeros(4))
    torch.testing.assert_close(gray, gray.max(dim=1, keepdim=True).values.expand_as(gray))  # s = 0: r = g = b = v


def test_one_hsv_round_trip_is_saturation_or_hue_exactly():
    """adjust_hsv with the other's identity gives adjust_saturation and adjust_hue bit for bit, grey pixels,
    black pixels and ties for the maximum included; together it is saturation, then hue."""
    x = torch.rand(64, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    x[:8], x[8:16, 1], x[16:20] = x[:8, :1], x[8:16, 0], 0.0  # grey images, r = g ties, black images
    f, delta = torch.rand(64) * 0.4 + 0.8, torch.rand(64) * 0.2 - 0.1
    assert torch.equal(AF.adjust_hsv(x, f, torch.zeros(64)), AF.adjust_saturation(x, f))
    assert torch.equal(AF.adjust_hsv(x, torch.ones(64), delta), AF.adjust_hue(x, delta))
    both = AF.adjust_hue(AF.adjust_saturation(x, f), delta)
    torch.testing.assert_close(AF.adjust_hsv(x, f, delta), both, atol=1e-5, rtol=0)


def test_grayscale_luma_weights_keep_the_channel_count():
    x = _rgb()
    luma = 0.2989 * x[:, 0] + 0.5870 * x[:, 1] + 0.1140 * x[:, 2]
    out = AF.to_grayscale(x)
    assert out.shape == x.shape
    for c in range(3):
        torch.testing.assert_close(out[:, c], luma)


def test_single_channel_images_ignore_chroma_operations():
    x = torch.rand(2, 1, 5, 5)
    assert AF.to_grayscale(x) is x
    assert AF.adjust_hue(x, torch.ones(2)) is x
    assert AF.adjust_saturation(x, torch.zeros(2)) is x
    assert AF.adjust_hsv(x, torch.zeros(2), torch.ones(2)) is x


@pytest.mark.parametrize(("size", "taps"), [(224, 23), (96, 9), (32, 3), (28, 3)])
def test_blur_kernel_size_follows_the_released_code(size, taps):
    assert AF.blur_kernel_size(size) == taps == 2 * math.floor(size / 20) + 1


def test_blur_of_an_impulse_is_the_outer_product_of_gaussians():
    x = torch.zeros(2, 1, 9, 9)
    x[:, :, 4, 4] = 1.0
    sigma = torch.tensor([0.5, 1.7])
    out = AF.gaussian_blur(x, sigma, 5)
    for i, s in enumerate(sigma.tolist()):
        g = torch.exp(-(torch.arange(-2.0, 3.0) ** 2) / (2 * s * s))
        g = g / g.sum()
        torch.testing.assert_close(out[i, 0, 2:7, 2:7], torch.outer(g, g))
    assert out[:, :, :2].abs().sum() == 0


def test_blur_pads_with_zeros():
    out = AF.gaussian_blur(torch.ones(1, 1, 8, 8), torch.tensor([1.0]), 3)
    assert out[0, 0, 4, 4] == pytest.approx(1.0) and out[0, 0, 0, 0] < 0.95  # edges darken


def test_solarize_threshold():
    x = torch.tensor([0.0, 0.3, 0.49, 0.5, 0.7, 1.0]).view(1, 1, 1, 6)
    torch.testing.assert_close(AF.solarize(x), torch.tensor([0.0, 0.3, 0.49, 0.5, 0.3, 0.0]).view(1, 1, 1, 6))


def test_hflip_only_flips_masked_images():
    x = _rgb()
    out = AF.hflip(x, torch.tensor([True, False, True, False]))
    torch.testing.assert_close(out[0], x[0].flip(-1))
    torch.testing.assert_close(out[1], x[1])


def test_resized_crop_of_the_whole_image_is_identity_and_boxes_are_per_image():
    x = _rgb(2, 8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2)
    torch.testing.assert_close(AF.resized_crop(x, whole, 8, mode="bilinear"), x)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]])  # top-left and bottom-right quarters
    out = AF.resized_crop(x, boxes, 4, mode="nearest")
    torch.testing.assert_close(out[0], x[0, :, :4, :4])
    torch.testing.assert_close(out[1], x[1, :, 4:, 4:])
