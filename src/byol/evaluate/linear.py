"""Linear evaluation (paper section 4.1, appendix C.1; SPEC §5).

The online encoder is frozen with BN in inference mode; a linear layer on the representation y is trained
with SGD, Nesterov momentum 0.9, a cosine schedule and no weight decay. Training inputs are random crops +
flips (``mode="augmented"``, the paper's protocol) or, much faster, features of the unaugmented images
computed once (``mode="cached"``, reported as such). The learning rate is chosen on a validation split held
out from the TRAINING set; the classifier is then retrained on the whole training set with that rate and
only then evaluated on the test set, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from byol.augment import LINEAR_EVAL_VIEW, ViewPipeline
from byol.data import Dataset, TrainBatches
from byol.errors import ConfigError
from byol.evaluate.common import classification_metrics, extract_features, split_train_val
from byol.precision import FP32, Precision
from byol.schedules import cosine_decay

MODES = ("augmented", "cached")


@dataclass(frozen=True)
class LinearConfig:
    """Paper: base lr swept over {0.4, 0.3, 0.2, 0.1, 0.05} (× batch/256), 80 epochs in the released code."""

    mode: str = "augmented"
    base_lrs: Sequence[float] = field(default=(0.4, 0.3, 0.2, 0.1, 0.05))
    epochs: int = 80
    batch_size: int = 256
    val_size: int = 0  # 0: min(10 000, 10% of the training set), as the paper's 10k held-out images
    seed: int = 0
    standardize: bool = False  # cached mode: z-score features with training-set statistics (not the paper's)


# Yields (inputs, labels) minibatches of one epoch; inputs are encoder features.
EpochBatches = Callable[[int], Iterator[tuple[Tensor, Tensor]]]


def fit_linear(
    batches: EpochBatches, steps_per_epoch: int, in_dim: int, num_classes: int, lr: float, epochs: int, seed: int
) -> nn.Linear:
    """SGD (Nesterov, momentum 0.9, no weight decay) with a per-step cosine schedule from lr to 0."""
    torch.manual_seed(seed)
    head = nn.Linear(in_dim, num_classes)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    total, step = epochs * steps_per_epoch, 0
    for epoch in range(epochs):
        for x, y in batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = cosine_decay(step, total, lr)
            loss = F.cross_entropy(head(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return head


def _cached_batches(features: Tensor, labels: Tensor, batch_size: int, seed: int) -> tuple[EpochBatches, int]:
    steps = max(1, len(labels) // batch_size)

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for i in range(steps):
            index = order[i * batch_size : (i + 1) * batch_size]
            yield features[index], labels[index]

    return epoch_batches, steps


def _augmented_batches(
    encoder: nn.Module,
    dataset: Dataset,
    image_size: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    precision: Precision,
) -> tuple[EpochBatches, int]:
    """Random crop + flip views through the frozen encoder (BN in inference mode), every epoch anew."""
    source = TrainBatches(
        dataset, min(batch_size, len(dataset)), seed, device, (LINEAR_EVAL_VIEW, LINEAR_EVAL_VIEW), image_size
    )
    view = ViewPipeline(LINEAR_EVAL_VIEW, image_size, dataset.mean, dataset.std)
    generator = torch.Generator(device=device).manual_seed(seed)

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        encoder.eval()
        for batch in source.epoch(epoch):
            with torch.no_grad():  # exit the no_grad block before yielding: grad mode is global state
                x = precision.input(view(batch.images, generator, crop=batch.second_crop is None))
                with precision.context(device):
                    features = encoder(x).float().cpu()
            yield features, batch.labels.cpu()

    return epoch_batches, source.steps_per_epoch


Fit = Callable[[Tensor, float], nn.Linear]


def _select_and_test(
    fit: Fit,
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Callable[[], tuple[Tensor, Tensor]],
    num_classes: int,
    config: LinearConfig,
    progress: bool,
) -> dict[str, Any]:
    """Sweeps the learning rate on the held-out validation split, refits the best on the whole training
    set, and only then asks for the test features (a callable, so selection cannot see them)."""
    val_size = config.val_size or min(10_000, len(train_labels) // 10)
    fit_index, val_index = split_train_val(train_labels, val_size, config.seed)
    sweep = []
    for base_lr in tqdm(config.base_lrs, desc="lr sweep (validation split)", disable=not progress):
        lr = base_lr * config.batch_size / 256
        head = fit(fit_index, lr)
        with torch.no_grad():
            val = classification_metrics(head(train_features[val_index]), train_labels[val_index], num_classes)
        sweep.append({"base_lr": base_lr, "lr": lr, "val": val})
    best = max(sweep, key=lambda r: r["val"]["top1"])
    head = fit(torch.arange(len(train_labels)), best["lr"])
    features, labels = test_features()
    with torch.no_grad():
        result = classification_metrics(head(features), labels, num_classes)
    protocol = "linear"
    if config.mode == "cached":
        protocol += " (cached features, standardized)" if config.standardize else " (cached features, no augmentation)"
    return {
        "protocol": protocol,
        **result,
        "chosen_base_lr": best["base_lr"],
        "sweep": sweep,
        "settings": asdict(config) | {"base_lrs": list(config.base_lrs)},
    }


def linear_on_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    config: LinearConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """The cached-features protocol on features already extracted (unaugmented).

    With ``config.standardize`` every feature is z-scored with the mean and std of the TRAINING features, so
    encoders whose features differ in scale (a random-init encoder's are small) meet the same lr grid on
    equal terms.
    """
    config = replace(config, mode="cached")
    if config.standardize:
        mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
        train_features, test_features = (train_features - mean) / std, (test_features - mean) / std

    def fit(indices: Tensor, lr: float) -> nn.Linear:
        batches, steps = _cached_batches(train_features[indices], train_labels[indices], config.batch_size, config.seed)
        return fit_linear(batches, steps, train_features.shape[1], num_classes, lr, config.epochs, config.seed)

    return _select_and_test(
        fit, train_features, train_labels, lambda: (test_features, test_labels), num_classes, config, progress
    )


def linear_evaluation(
    encoder: nn.Module,
    train: Dataset,
    test: Dataset,
    image_size: int,
    device: torch.device,
    config: LinearConfig = LinearConfig(),
    progress: bool = True,
    precision: Precision = FP32,
) -> dict[str, Any]:
    """The sweep on the validation split, then one fit on the whole training set and one test evaluation."""
    if config.mode not in MODES:
        raise ConfigError(f"linear evaluation mode must be one of {', '.join(MODES)}, not {config.mode!r}")
    if config.standardize and config.mode != "cached":
        raise ConfigError("standardized features are only available with the cached mode (--mode cached)")
    encoder = encoder.to(device).eval()
    num_classes = len(train.classes)
    train_features, train_labels = extract_features(
        encoder, train, image_size, device, desc="train features", progress=progress, precision=precision
    )

    def test_features() -> tuple[Tensor, Tensor]:
        return extract_features(
            encoder, test, image_size, device, desc="test features", progress=progress, precision=precision
        )

    if config.mode == "cached":
        return linear_on_features(train_features, train_labels, *test_features(), num_classes, config, progress)

    def fit(indices: Tensor, lr: float) -> nn.Linear:
        batches, steps = _augmented_batches(
            encoder, train.subset(indices), image_size, config.batch_size, config.seed, device, precision
        )
        return fit_linear(batches, steps, train_features.shape[1], num_classes, lr, config.epochs, config.seed)

    return _select_and_test(fit, train_features, train_labels, test_features, num_classes, config, progress)
