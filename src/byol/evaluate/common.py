"""What every evaluation protocol shares: the encoder to evaluate, its features, splits and metrics.

The encoder evaluated is always the ONLINE encoder f_θ of a run (SPEC §7: evaluating the target is a bug
peers shipped). ``init="random"`` gives a freshly initialised encoder of the same architecture and seed, the
baseline every table should show.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from byol.augment import LINEAR_EVAL_VIEW, ViewConfig, ViewPipeline, evaluation_view
from byol.checkpoint import latest_checkpoint, load_checkpoint, run_config
from byol.config import Config
from byol.data import Dataset, TrainBatches, eval_batches
from byol.errors import CheckpointError, ConfigError, DataError, first_line
from byol.files import write_json
from byol.networks import ResNet, build_encoder, build_projector, input_channels
from byol.optim import SGD
from byol.precision import FP32, Precision
from byol.rundir import EVAL_DIR
from byol.schedules import cosine_decay

log = logging.getLogger(__name__)

INITS = ("pretrained", "random")


@dataclass
class Pretrained:
    """An encoder with the config of the run it came from; from a run or checkpoint, the online projector's
    weights too (an export holds the encoder only)."""

    encoder: ResNet
    config: Config
    in_channels: int
    source: str
    projector_state: dict[str, Tensor] | None = None

    def projector(self) -> nn.Module | None:
        """The online projector g_θ (BN in inference mode), where the source holds it."""
        if self.projector_state is None:
            return None
        g = build_projector(self.config.model, self.encoder.out_dim)
        try:
            g.load_state_dict(self.projector_state)
        except RuntimeError as e:
            message = f"{self.source}: its projector does not match its architecture ({first_line(e)})"
            raise CheckpointError(message) from None
        return g.eval()


def random_encoder(config: Config, in_channels: int) -> ResNet:
    """The run's encoder architecture, initialised with the run's seed: the online encoder before training."""
    torch.manual_seed(config.train.seed)
    return build_encoder(config.model, in_channels)


def check_init(init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"--init must be one of {', '.join(INITS)}, not {init!r}")


def load_encoder_from_run(path: str | Path, init: str = "pretrained") -> Pretrained:
    """The online encoder of a run directory (its latest checkpoint) or of a checkpoint file.

    ``init="random"`` returns the same architecture, freshly initialised with the run's seed.
    """
    check_init(init)
    path = Path(path)
    checkpoint = latest_checkpoint(path) if path.is_dir() else path
    payload = load_checkpoint(checkpoint)
    config = run_config(payload, checkpoint)
    try:
        online = payload["state"]["online"]
        in_channels = input_channels(online)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{checkpoint} is not a byol pretraining checkpoint ({e})") from None
    encoder = random_encoder(config, in_channels)
    if init == "pretrained":
        weights = {k.removeprefix("encoder."): v for k, v in online.items() if k.startswith("encoder.")}
        try:
            encoder.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f"{checkpoint} does not match its own architecture ({first_line(e)})") from None
    head = {k.removeprefix("projector."): v for k, v in online.items() if k.startswith("projector.")}
    return Pretrained(encoder=encoder, config=config, in_channels=in_channels, source=str(checkpoint),
                      projector_state=head if init == "pretrained" and head else None)  # fmt: skip


def check_compatible(pretrained: Pretrained, dataset: Dataset) -> None:
    if dataset.channels != pretrained.in_channels:
        raise ConfigError(
            f"the encoder takes {pretrained.in_channels}-channel images but {dataset.name} has {dataset.channels}; "
            "transfer needs datasets with the same number of channels"
        )


class Features(NamedTuple):
    """Representations of a dataset's readable images, their labels and their indices in the dataset (an
    unreadable file of an image folder has no row)."""

    features: Tensor
    labels: Tensor
    indices: Tensor


@torch.no_grad()
def extract(
    encoder: torch.nn.Module,
    dataset: Dataset,
    *,
    image_size: int,
    device: torch.device,
    batch_size: int = 512,
    num_workers: int = 0,
    desc: str = "features",
    progress: bool = True,
    precision: Precision = FP32,
    whole: bool = False,
) -> Features:
    """Representations y = f(x) of every image (unaugmented, BN in inference mode), labels and indices;
    ``whole``: of image files' whole images, not the evaluation's centre crop."""
    precision.prepare(encoder.eval().to(device))
    features, labels, indices = [], [], []
    total = (len(dataset) + batch_size - 1) // batch_size
    start, left_out = 0, 0
    for batch in tqdm(
        eval_batches(
            dataset, batch_size=batch_size, device=device, image_size=image_size, num_workers=num_workers, whole=whole
        ),
        total=total,
        desc=desc,
        disable=not progress,
    ):
        x = precision.input(evaluation_view(batch.images, image_size, dataset.mean, dataset.std))
        with precision.context(device):
            features.append(encoder(x).float().cpu())
        labels.append(batch.labels.cpu())
        indices.append(batch.indices if batch.indices is not None else torch.arange(start, start + len(x)))
        start += len(x)
        left_out += len(batch.skipped)
    if left_out:
        log.warning("%d of %d images of %s could not be read and are left out", left_out, len(dataset), dataset.name)
    if not features:
        raise DataError(f"no image of {dataset.name} could be read; nothing was evaluated")
    stacked = torch.cat(features)
    if not torch.isfinite(stacked).all():  # a score on NaN features would look like a result and mean nothing
        raise CheckpointError(
            f"the encoder gives non-finite features on {dataset.name} (NaN/Inf weights?); nothing was evaluated"
        )
    return Features(stacked, torch.cat(labels), torch.cat(indices))


def extract_features(encoder: torch.nn.Module, dataset: Dataset, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """:func:`extract`'s features and labels (``kwargs``: its keyword arguments)."""
    features = extract(encoder, dataset, **kwargs)
    return features.features, features.labels


# One epoch's (inputs, labels) minibatches, by epoch number.
EpochBatches = Callable[[int], Iterator[tuple[Tensor, Tensor]]]


def augmented_batches(
    dataset: Dataset,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    device: torch.device,
    view_config: ViewConfig = LINEAR_EVAL_VIEW,
) -> tuple[EpochBatches, int]:
    """Shuffled full batches of views new every epoch, random crop + flip by default (appendix C.1; the
    appendix's variant passes the pretraining view T); and the steps per epoch. Batches hold at most the whole
    dataset."""
    views = (view_config, view_config)
    batch_size = min(batch_size, len(dataset))
    source = TrainBatches(dataset, batch_size=batch_size, seed=seed, device=device, views=views, image_size=image_size)
    view = ViewPipeline(view_config, image_size=image_size, mean=dataset.mean, std=dataset.std)
    generator = torch.Generator(device=device).manual_seed(seed)

    def epoch_batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for batch in source.epoch(epoch):
            yield view(batch.images, generator, crop=batch.second_crop is None), batch.labels

    return epoch_batches, source.steps_per_epoch


def fit_classifier(
    model: nn.Module,
    batches: EpochBatches,
    *,
    steps_per_epoch: int,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    loss: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> None:
    """``loss`` (cross-entropy) with SGD, Nesterov momentum 0.9 and a per-step cosine schedule from ``lr`` to 0:
    the paper's linear evaluation and fine-tuning optimizer (appendix C). The caller sets train or eval mode."""
    optimizer = SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    total, step = epochs * steps_per_epoch, 0
    for epoch in range(epochs):
        for x, y in batches(epoch):
            for group in optimizer.param_groups:
                group["lr"] = cosine_decay(step, total, lr)
            value = loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            step += 1


def validation_size(requested: int, train_size: int) -> int:
    """``requested``, or by default (0) the paper's 10k held-out training images, a tenth of a smaller set."""
    return requested or min(10_000, train_size // 10)


def split_train_val(labels: Tensor, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices of a seeded held-out validation split of the TRAINING set and of the rest."""
    if not 0 < val_size < len(labels):
        raise ConfigError(f"validation size must lie in (0, {len(labels)}), got {val_size}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def balanced_subset(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """A class-balanced, seeded subset: round(fraction · count_c) images of every class c (at least one)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"label fraction must lie in (0, 1], got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique(sorted=True).tolist():
        members = (labels == c).nonzero().squeeze(1)
        keep = max(1, round(fraction * len(members)))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:keep]])
    return torch.cat(chosen).sort().values


def classification_metrics(logits: Tensor, labels: Tensor, num_classes: int) -> dict[str, float]:
    """Top-1, top-5 and mean per-class accuracy, in percent."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
    correct1 = top5[:, 0] == labels
    per_class = [correct1[labels == c].float().mean().item() for c in range(num_classes) if (labels == c).any()]
    return {
        "top1": 100 * correct1.float().mean().item(),
        "top5": 100 * (top5 == labels[:, None]).any(dim=1).float().mean().item(),
        "mean_per_class": 100 * sum(per_class) / len(per_class),
    }


def result_path(run_dir: str | Path, name: str) -> Path:
    """<run_dir>/eval/<name>.json: where an evaluation's numbers go, and where `byol report` finds them."""
    return Path(run_dir) / EVAL_DIR / f"{name}.json"


def write_result(run_dir: str | Path, name: str, result: dict[str, Any]) -> Path:
    """Writes an evaluation's numbers to :func:`result_path`."""
    path = result_path(run_dir, name)
    write_json(path, result)
    return path
