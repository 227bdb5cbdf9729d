"""Semantic segmentation transfer (paper section 4, appendix D.4): an FCN on the encoder, fine-tuned on masks.

The network (D.4): the encoder's convolutional stages with the last stage's 3x3 convolutions dilated 2 at
stride 1 (total stride 16 with the ImageNet stem, 4 with the cifar stem, which does not downsample), then two
3x3 convolutions of 256 channels with dilation 6, each followed by BN and ReLU, then a 1x1 convolution per
class; the logits are upsampled bilinearly to the mask's size. With a narrower encoder the head's 256 channels
scale with the encoder's width (``head_channels`` 0: round(256 · width), at least 16), so a CPU-sized encoder
does not carry a head wider than itself.

Training (D.4): per-pixel softmax cross-entropy ignoring void pixels; each image randomly scaled by a ratio in
[0.5, 2.0], cropped (513 px in the paper; padded with void where the image is smaller) and flipped
horizontally; batch 16, weight decay 1e-4, SGD with momentum 0.9 (the paper does not name the optimizer; this
is the usual choice for this head), the learning rate × 0.1 at 70% and 90% of the iterations (30,000 in the
paper), the whole network fine-tuned (``frozen``: the encoder fixed, BN in inference mode, the head alone
trained). The base learning rate is swept over 5 log-spaced values in [1e-3, 1e-1] on held-out images: the
folder's ``val`` split where it has one, else a seeded fifth of ``train``; never the test split. The chosen
rate is trained on ``train`` once per seed and scored on the test split.

Scoring: a confusion matrix over the test split's non-void pixels at the masks' own size (rows: true class,
columns: predicted); per-class IoU = TP / (TP + FP + FN) for every class that occurs in the truth or the
prediction, mIoU their mean, pixel accuracy its trace over its sum. Inference is on the whole test image (the
paper's VOC evaluation takes the central crop), at the working scale, upsampled to the mask.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from byol.data.masks import Classes, SegmentationSplit, channel_stats, fraction_subset
from byol.errors import ConfigError, TrainingError
from byol.evaluate.settings import SegmentConfig
from byol.networks import BN_EPS, BN_MOMENTUM, ResNet, dilate_last_stage
from byol.optim import SGD

log = logging.getLogger(__name__)


def head_width(encoder: ResNet, requested: int = 0) -> int:
    """The FCN head's channels: ``requested``, or the paper's 256 scaled with the encoder's width."""
    return requested or max(16, round(256 * encoder.width))


class SegmentationNetwork(nn.Module):
    """The dilated encoder, the FCN head and bilinear upsampling of the logits: (N, 3, H, W) → (N, K, h, w)."""

    def __init__(self, encoder: ResNet, num_classes: int, channels: int = 0, dilation: int = 6) -> None:
        super().__init__()
        self.encoder = dilate_last_stage(copy.deepcopy(encoder))
        channels = head_width(encoder, channels)
        layers: list[nn.Module] = []
        c_in = encoder.out_dim
        for _ in range(2):
            layers += [
                nn.Conv2d(c_in, channels, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            c_in = channels
        layers.append(nn.Conv2d(channels, num_classes, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        logits = self.head(self.encoder.feature_map(x))
        return F.interpolate(logits, size=size or x.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------- metrics


def confusion_matrix(truth: Tensor, prediction: Tensor, num_classes: int, void: int) -> Tensor:
    """(K, K) int64 counts of pixels with true class i (row) predicted j (column); void pixels are left out."""
    keep = truth != void
    truth, prediction = truth[keep].long(), prediction[keep].long()
    return torch.bincount(truth * num_classes + prediction, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores(confusion: Tensor) -> dict[str, Any]:
    """Per-class IoU (None for a class absent from both truth and prediction), mIoU and pixel accuracy (%)."""
    confusion = confusion.double()
    hits = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - hits
    iou = [100 * (h / u).item() if u > 0 else None for h, u in zip(hits, union, strict=True)]
    present = [v for v in iou if v is not None]
    total = confusion.sum().item()
    return {
        "miou": sum(present) / len(present) if present else 0.0,
        "pixel_acc": 100 * hits.sum().item() / total if total else 0.0,
        "iou": iou,
    }


# --------------------------------------------------------------------------------------------- training


@dataclass
class Normalise:
    mean: Tensor
    std: Tensor

    @classmethod
    def of(cls, stats: dict[str, Any]) -> Normalise:
        """From ``{"mean": [...], "std": [...]}``, as a result records it."""
        return cls(torch.tensor(stats["mean"]).view(3, 1, 1), torch.tensor(stats["std"]).view(3, 1, 1))

    def __call__(self, images: Tensor) -> Tensor:
        return (images.float() / 255 - self.mean) / self.std


def augment(image: Tensor, mask: Tensor, config: SegmentConfig, void: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """D.4's training view of one normalised image (3, h, w) and its mask (h, w): scaled by a ratio drawn
    uniformly from ``scale_range`` (image bilinear, mask nearest), padded to the crop (image with zeros, the
    normalised mean; mask with void), cropped at random, flipped with p = 0.5."""
    low, high = config.scale_range
    ratio = low + (high - low) * torch.rand((), generator=g).item()
    h, w = mask.shape
    size = (max(1, round(h * ratio)), max(1, round(w * ratio)))
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    crop = config.crop_size
    pad_h, pad_w = max(0, crop - size[0]), max(0, crop - size[1])
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=void)
    top = int(torch.randint(mask.shape[0] - crop + 1, (), generator=g))
    left = int(torch.randint(mask.shape[1] - crop + 1, (), generator=g))
    image, mask = image[:, top : top + crop, left : left + crop], mask[top : top + crop, left : left + crop]
    if torch.rand((), generator=g).item() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    return image, mask


def learning_rate(step: int, iterations: int, base_lr: float, decay_at: tuple[float, float]) -> float:
    """D.4's step schedule: ``base_lr``, × 0.1 from ``decay_at[0]`` of the iterations, × 0.01 from ``decay_at[1]``."""
    return base_lr * 0.1 ** sum(step >= fraction * iterations for fraction in decay_at)


def train_network(
    encoder: ResNet,
    train: SegmentationSplit,
    classes: Classes,
    normalise: Normalise,
    *,
    lr: float,
    seed: int,
    config: SegmentConfig,
    device: torch.device,
    desc: str = "",
    progress: bool = True,
) -> SegmentationNetwork | None:
    """The network trained on ``train`` at base ``lr``; None if the loss went non-finite (a diverged rate)."""
    torch.manual_seed(seed)
    model = SegmentationNetwork(encoder, len(classes), config.head_channels, config.head_dilation).to(device)
    if config.frozen:
        model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(seed)
    images = [normalise(image) for image in train.images]
    order: list[int] = []
    for step in tqdm(range(config.iterations), desc=desc, disable=not progress, leave=False):
        model.train()
        if config.frozen:
            model.encoder.eval()  # BN in inference mode: the representation as it is
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config.iterations, lr, config.decay_at)
        batch_x: list[Tensor] = []
        batch_y: list[Tensor] = []
        while len(batch_x) < config.batch_size:
            if not order:
                order = torch.randperm(len(train), generator=g).tolist()
            i = order.pop()
            x, y = augment(images[i], train.masks[i], config, classes.void, g)
            batch_x.append(x)
            batch_y.append(y)
        x, y = torch.stack(batch_x).to(device), torch.stack(batch_y).to(device)
        loss = F.cross_entropy(model(x), y, ignore_index=classes.void)
        if not torch.isfinite(loss):
            log.info("%s: the loss went non-finite at step %d; this learning rate diverges", desc, step)
            return None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: SegmentationNetwork, image: Tensor, size: tuple[int, int], normalise: Normalise) -> Tensor:
    """Class ids (h, w) at ``size`` for one uint8 image at the working scale."""
    device = next(model.parameters()).device
    return model.eval()(normalise(image)[None].to(device), size=size)[0].argmax(0).cpu()


def evaluate(
    model: SegmentationNetwork, split: SegmentationSplit, classes: Classes, normalise: Normalise
) -> dict[str, Any]:
    """Scores and the confusion matrix of ``model`` on every image of ``split``, at the masks' own size."""
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    for image, truth in zip(split.images, split.full_masks, strict=True):
        prediction = predict(model, image, tuple(truth.shape), normalise)  # type: ignore[arg-type]
        confusion += confusion_matrix(truth, prediction, len(classes), classes.void)
    return {**scores(confusion), "confusion": confusion.tolist()}


@dataclass
class SegmentationData:
    """The splits a segmentation run reads: train (for the networks), held-out (for the sweep), test."""

    train: SegmentationSplit
    held_out: SegmentationSplit | None  # the folder's val split, or None: a fifth of train is held out
    test: SegmentationSplit
    classes: Classes


def segmentation_transfer(
    encoder: ResNet,
    data: SegmentationData,
    *,
    config: SegmentConfig,
    device: torch.device,
    progress: bool = True,
) -> tuple[dict[str, Any], list[tuple[str, SegmentationNetwork]]]:
    """Sweep the base lr on the held-out images (seed ``config.seed``), train the chosen one on the (fraction
    of the) training masks for each seed, score each on the test split. Returns the result and the trained
    networks by seed label (the report's pictures draw from the first)."""
    classes = data.classes
    mean, std = channel_stats(data.train)
    normalise = Normalise.of({"mean": mean, "std": std})
    train, held_out = data.train, data.held_out
    if held_out is None:  # a seeded part of train, never the test split
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed)).tolist()
        cut = max(1, round(config.val_fraction * len(train)))
        if cut >= len(train):
            raise ConfigError(f"train holds {len(train)} image(s): too few to hold some out for the lr sweep")
        held_out, sweep_train = (
            train.subset(sorted(order[:cut]), "held-out part of train"),
            train.subset(sorted(order[cut:]), "train"),
        )
    else:
        sweep_train = train

    def masks_of(split: SegmentationSplit, seed: int) -> SegmentationSplit:
        if config.mask_fraction >= 1:
            return split
        return split.subset(fraction_subset(len(split), config.mask_fraction, seed), split.name)

    sweep: list[dict[str, Any]] = []
    chosen = config.lr
    if not chosen:
        fitting = masks_of(sweep_train, config.seed)
        for i, lr in enumerate(config.lrs):
            model = train_network(
                encoder, fitting, classes, normalise, lr=lr, seed=config.seed, config=config, device=device,
                desc=f"lr sweep {i + 1}/{len(config.lrs)} (lr {lr:.3g})", progress=progress,
            )  # fmt: skip
            score = evaluate(model, held_out, classes, normalise)["miou"] if model is not None else None
            sweep.append({"lr": lr, "held_out_miou": score})
            log.info("lr %.3g: held-out mIoU %s", lr, "diverged" if score is None else f"{score:.2f}")
        finished = [row for row in sweep if row["held_out_miou"] is not None]
        if not finished:
            raise TrainingError("every learning rate of the sweep diverged; give smaller --lrs")
        chosen = max(finished, key=lambda row: row["held_out_miou"])["lr"]

    runs, networks = [], []
    for seed in range(config.seed, config.seed + config.seeds):
        fitting = masks_of(train, seed)
        model = train_network(
            encoder, fitting, classes, normalise, lr=chosen, seed=seed, config=config, device=device,
            desc=f"seed {seed} (lr {chosen:.3g})", progress=progress,
        )  # fmt: skip
        if model is None:
            raise TrainingError(f"seed {seed} diverged at the chosen lr {chosen:.3g}; give a smaller --lr")
        result = evaluate(model, data.test, classes, normalise)
        runs.append({"seed": seed, "masks": len(fitting), **_named(result, classes)})
        networks.append((f"seed {seed}", model))
        log.info("seed %d: test mIoU %.2f, pixel accuracy %.2f", seed, result["miou"], result["pixel_acc"])

    mious = [run["miou"] for run in runs]
    mean_miou = sum(mious) / len(mious)
    per_class = {
        name: _mean([run["per_class_iou"][name] for run in runs]) for name in classes.names
    }  # a class absent from a seed's truth and prediction counts in none of its means
    return {
        "protocol": "segmentation (appendix D.4)",
        "miou": mean_miou,
        "miou_std": math.sqrt(sum((m - mean_miou) ** 2 for m in mious) / len(mious)),
        "pixel_acc": sum(run["pixel_acc"] for run in runs) / len(runs),
        "per_class_iou": per_class,
        "classes": list(classes.names),
        "void_id": classes.void,
        "chosen_lr": chosen,
        "sweep": sweep,
        "sweep_on": held_out.name if not config.lr else "",
        "seeds": runs,
        "normalisation": {"mean": list(mean), "std": list(std), "from": "the training images"},
        "train_images": len(train),
        "test_images": len(data.test),
        "settings": asdict(config) | {"lrs": list(config.lrs)},
    }, networks


def _named(result: dict[str, Any], classes: Classes) -> dict[str, Any]:
    iou = result.pop("iou")
    return {**result, "per_class_iou": dict(zip(classes.names, iou, strict=True))}


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
