import math

import pytest
import torch
from op_counter import OpCounter

from byol.augment import BYOL_T, BYOL_T_PRIME, PRESETS, TwoViews, ViewPipeline, get_views
from byol.augment import functional as AF
from byol.errors import ConfigError

N = 20000


def _params(view, n=N, seed=0):
    return ViewPipeline(view, 32, [0.5] * 3, [0.25] * 3).sample(n, 64, 48, torch.Generator().manual_seed(seed))


def _rate(mask):
    return mask.float().mean().item()


def test_released_probabilities_of_t_and_t_prime():
    t, tp = _params(BYOL_T), _params(BYOL_T_PRIME, seed=1)
    tol = 4 * math.sqrt(0.25 / N)  # four standard deviations of a Bernoulli rate
    assert _rate(t.solarize) == 0.0 and _rate(tp.solarize) == pytest.approx(0.2, abs=tol)
    assert _rate(t.blur) == 1.0 and _rate(tp.blur) == pytest.approx(0.1, abs=tol)
    for p in (t, tp):
        assert _rate(p.jitter) == pytest.approx(0.8, abs=tol)
        assert _rate(p.grayscale) == pytest.approx(0.2, abs=tol)
        assert _rate(p.flip) == pytest.approx(0.5, abs=tol)
    # grayscale independent of jitter: P(gray | jitter) ≈ P(gray | no jitter)
    assert _rate(t.grayscale[t.jitter]) == pytest.approx(_rate(t.grayscale[~t.jitter]), abs=0.03)


def test_jitter_ranges_and_random_order_per_image():
    p = _params(BYOL_T)
    assert p.brightness.min() >= -0.4 and p.brightness.max() <= 0.4
    assert p.contrast.min() >= 0.6 and p.contrast.max() <= 1.4
    assert p.saturation.min() >= 0.8 and p.saturation.max() <= 1.2
    assert p.hue.min() >= -0.1 and p.hue.max() <= 0.1
    assert p.blur_sigma.min() >= 0.1 and p.blur_sigma.max() <= 2.0
    assert torch.equal(p.jitter_order.sort(dim=1).values, torch.arange(4).expand(N, 4))
    first_op_rates = torch.bincount(p.jitter_order[:, 0], minlength=4).float() / N
    assert torch.allclose(first_op_rates, torch.full((4,), 0.25), atol=0.02)


def test_crop_area_and_aspect_ratio_law():
    p = _params(BYOL_T)
    top, left, h, w = p.boxes.unbind(1)
    area = h * w / (64 * 48)
    assert area.min() >= 0.08 - 1e-6 and area.max() <= 1.0 + 1e-6
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64 + 1e-4).all() and (left + w <= 48 + 1e-4).all()
    unclipped = (h < 64 - 1e-3) & (w < 48 - 1e-3)
    log_ratio = torch.log(w / h)[unclipped]
    assert log_ratio.min() >= math.log(3 / 4) - 1e-5 and log_ratio.max() <= math.log(4 / 3) + 1e-5
    # log aspect ratio uniform: its quartiles split the interval evenly (large crops are clipped, so use small ones)
    small = unclipped & (area < 0.3)
    q = torch.quantile(torch.log(w / h)[small], torch.tensor([0.25, 0.5, 0.75]))
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert torch.allclose(q, torch.tensor([lo + (hi - lo) * f for f in (0.25, 0.5, 0.75)]), atol=0.03)


def test_each_image_gets_its_own_parameters_and_the_seed_reproduces_views():
    images = torch.rand(2, 3, 32, 32).repeat(8, 1, 1, 1)
    views = TwoViews("byol", 32, [0.5] * 3, [0.25] * 3)
    v1, v2 = views(images, torch.Generator().manual_seed(3))
    assert not torch.allclose(v1[0], v1[2])  # the same image twice in a batch gives two different views
    assert not torch.allclose(v1, v2)
    w1, w2 = views(images, torch.Generator().manual_seed(3))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)


@pytest.mark.parametrize("sync_free", [False, True])
def test_apply_composes_the_functional_ops_in_the_released_order(sync_free):
    """Image by image, the functional ops in the released order; either way of reaching the selected images
    (index-select on a CPU, compute-all-and-mask on a GPU) gives the same views."""
    pipeline = ViewPipeline(BYOL_T_PRIME, 40, [0.0] * 3, [1.0] * 3)
    pipeline.sync_free = sync_free
    assert pipeline.kernel_size == 5
    n = 24
    images = torch.rand(n, 3, 48, 48)
    p = pipeline.sample(n, 48, 48, torch.Generator().manual_seed(5))
    masks = torch.rand(4, n, generator=torch.Generator().manual_seed(6)) < 0.5
    p.jitter, p.grayscale, p.blur, p.solarize = masks  # every op selects some images and leaves others
    out = pipeline.apply(images, p)
    x = AF.resized_crop(images, p.boxes, 40).clamp(0, 1)
    x = AF.hflip(x, p.flip)
    ops = [AF.adjust_brightness, AF.adjust_contrast, AF.adjust_saturation, AF.adjust_hue]
    factors = [p.brightness, p.contrast, p.saturation, p.hue]
    for i in range(n):
        xi = x[i : i + 1]
        for op_index in p.jitter_order[i].tolist() if p.jitter[i] else []:
            xi = ops[op_index](xi, factors[op_index][i : i + 1]).clamp(0, 1)
        xi = AF.to_grayscale(xi) if p.grayscale[i] else xi
        xi = AF.gaussian_blur(xi, p.blur_sigma[i : i + 1], 5).clamp(0, 1) if p.blur[i] else xi
        xi = AF.solarize(xi) if p.solarize[i] else xi
        torch.testing.assert_close(out[i : i + 1], xi, atol=1e-5, rtol=0)


def test_gpu_views_never_synchronise_with_the_host():
    """The compute-all-and-mask path has no data-dependent shapes: no nonzero, no .item(), no bool(tensor)."""
    views = TwoViews("byol", 32, [0.5] * 3, [0.25] * 3)
    views.t.sync_free = views.t_prime.sync_free = True
    images = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8)
    views(images, torch.Generator().manual_seed(0))  # constants are made on a device's first batch
    with OpCounter() as ops:
        views(images, torch.Generator().manual_seed(0))
    assert ops.syncs == 0 and ops.kernels > 0
    views.t.sync_free = views.t_prime.sync_free = False  # the CPU path selects its images: it does synchronise
    with OpCounter() as ops:
        views(images, torch.Generator().manual_seed(0))
    assert ops.syncs > 0


def test_table_17_presets():
    assert set(PRESETS) >= {
        "byol", "remove-flip", "remove-blur", "remove-color", "remove-color-jittering", "remove-grayscale",
        "remove-blur-in-t-prime", "remove-solarize-in-t-prime", "remove-blur-and-solarize-in-t-prime",
        "symmetric-blur-solarize", "crop-only", "crop-and-flip-only", "crop-and-color-only", "crop-and-blur-only",
    }  # fmt: skip
    t, tp = get_views("symmetric-blur-solarize")
    assert (t.blur_prob, t.solarize_prob, tp.blur_prob, tp.solarize_prob) == (0.5, 0.1, 0.5, 0.1)
    t, tp = get_views("crop-only")
    assert all(v.flip_prob == v.jitter_prob == v.grayscale_prob == v.blur_prob == v.solarize_prob == 0 for v in (t, tp))
    t, tp = get_views("remove-blur-in-t-prime")
    assert t.blur_prob == 1.0 and tp.blur_prob == 0.0 and tp.solarize_prob == 0.2
    with pytest.raises(ConfigError, match="valid presets"):
        get_views("nope")


def test_single_channel_views_are_normalised_and_finite():
    views = TwoViews("byol", 28, [0.286], [0.353])
    v1, v2 = views(torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert v1.shape == (64, 1, 28, 28) and torch.isfinite(v1).all() and torch.isfinite(v2).all()
