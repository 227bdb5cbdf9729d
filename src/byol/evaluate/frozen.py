"""The frozen-encoder evaluation that the demo, the ablation runner, the evaluation commands and the kNN
monitor share: the datasets a run's config names, the device and precision, and kNN + linear on features
extracted once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from byol.config import Config
from byol.data import Dataset, Files, ImageFolder, labelled, load_split, use_cache
from byol.errors import DataError, quoted
from byol.evaluate.common import extract_features
from byol.evaluate.knn import KnnConfig, knn_on_features
from byol.evaluate.linear import LinearConfig, linear_evaluation, linear_on_features
from byol.precision import Precision

log = logging.getLogger(__name__)

# The CPU-friendly linear protocol of the demo and the ablations: linear on cached features, standardized with
# training statistics (a random-init encoder's features are ~5x smaller than BYOL's, and on raw features the
# paper's lr grid under-trains its classifier: measured 57.5% raw vs 67.8% standardized; BYOL 81.4 vs 82.0),
# the paper's lr grid, 10 epochs (enough for a 10-class linear head on fixed features).
CACHED_LINEAR = LinearConfig(mode="cached", epochs=10, standardize=True)
# The kNN monitor and the ablation runner evaluate on at most this many training (and, the monitor, test) images.
MAX_EVAL_IMAGES = 10_000


def _sample(dataset: Dataset, limit: int | None, generator: torch.Generator, labelled_only: bool) -> Dataset:
    """A seeded random subset of at most ``limit`` images (all of them, in order, without a limit)."""
    if limit is None:
        return dataset
    pool = (dataset.labels >= 0).nonzero().squeeze(1) if labelled_only else torch.arange(len(dataset))
    return dataset.subset(pool[torch.randperm(len(pool), generator=generator)[:limit]])


@dataclass(frozen=True)
class FrozenEvaluation:
    """Training and test images, their size, the device and the precision of one frozen-encoder evaluation."""

    train: Dataset
    test: Dataset
    image_size: int
    device: torch.device
    precision: Precision

    def __post_init__(self) -> None:
        check_distinct(self.train, self.test)

    @classmethod
    def from_config(
        cls,
        config: Config,
        device: torch.device,
        *,
        train: Dataset | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
    ) -> FrozenEvaluation:
        """The run's evaluation set (``data.evaluation()``: the pretraining dataset unless the config names a labelled
        one; ``train``: the pretraining images, already loaded), its test split, at most ``max_train`` /
        ``max_test`` images drawn with the run's seed, the run's precision on ``device``. An evaluation set
        without labels is refused (:class:`DataError`)."""
        d = config.data
        name, data_dir = d.evaluation()
        same = (name, data_dir) == (d.dataset, d.data_dir)
        labels = d.labels if same else "auto"
        use_cache(d.cache_dir, d.cache_bytes)
        if train is None or not same:
            train = load_split(name, "train", data_dir, d.image_size, labels)
        require_labels(train)
        test = load_split(name, "test", data_dir, d.image_size, labels)
        generator = torch.Generator().manual_seed(config.train.seed)
        return cls(
            train=_sample(train, max_train, generator, labelled_only=True),
            test=_sample(test, max_test, generator, labelled_only=False),
            image_size=d.image_size, device=device, precision=Precision.for_run(config.train, device),
        )  # fmt: skip

    def features(self, encoder: nn.Module, progress: bool = False, desc: str = "") -> tuple[Tensor, ...]:
        """Features and labels of the training images, then of the test images."""
        return tuple(
            tensor
            for name, split in (("train", self.train), ("test", self.test))
            for tensor in extract_features(encoder, split, image_size=self.image_size, device=self.device,
                                           desc=f"{desc}{name} features", progress=progress, precision=self.precision)
        )  # fmt: skip

    def knn(self, encoder: nn.Module, knn: KnnConfig | None = None, progress: bool = False) -> dict[str, Any]:
        """kNN (``knn``: the paper's k = 200, T = 0.1 by default) of the test images against the training ones."""
        knn = knn or KnnConfig()
        features = self.features(encoder, progress)
        return knn_on_features(*features, num_classes=len(self.train.classes), k=knn.k, temperature=knn.temperature)

    def linear(self, encoder: nn.Module, config: LinearConfig, progress: bool = False) -> dict[str, Any]:
        """The linear protocol ``config`` (augmented or on cached features) on these images."""
        return linear_evaluation(
            encoder, train=self.train, test=self.test, image_size=self.image_size, device=self.device, config=config,
            progress=progress, precision=self.precision,
        )  # fmt: skip

    def knn_and_linear(
        self, encoder: nn.Module, progress: bool = False, desc: str = ""
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """kNN and :data:`CACHED_LINEAR` from one feature extraction of each split."""
        features = self.features(encoder, progress, desc)
        classes = len(self.train.classes)
        knn = knn_on_features(*features, num_classes=classes)
        return knn, linear_on_features(*features, num_classes=classes, config=CACHED_LINEAR, progress=progress)


def check_distinct(train: Dataset, test: Dataset) -> None:
    """Refuses an evaluation whose test images are training images: the same file (by device and inode, so a
    symlinked or hard-linked folder too) under both splits of an image folder. Grading on them means nothing."""
    if not (isinstance(train, ImageFolder) and isinstance(test, ImageFolder)):
        return
    seen = {_identity(path) for path in train.paths}
    shared = [path for path in test.paths if _identity(path) in seen]
    if shared:
        raise DataError(
            f"{len(shared)} of the {len(test)} test images are training images too (the same files, e.g. "
            f"{quoted(shared[0])}: a linked or repeated folder?); an evaluation must grade images it did not train on"
        )


def _identity(path: str) -> tuple[int, int] | str:
    try:
        info = os.stat(path)
    except OSError:  # unreadable now: its item will be skipped and named; compare it by its path
        return os.path.realpath(path)
    return (info.st_dev, info.st_ino)


def require_labels(dataset: Dataset) -> None:
    """Refuses, in one line, to grade against a dataset without labels, and says how to name one."""
    if not labelled(dataset):
        where = f" {quoted(dataset.root)}" if isinstance(dataset, Files) else ""
        raise DataError(
            f"{dataset.name}{where} has no labels to grade against; name a labelled set (with pretrain: "
            "--data.eval_dir DIR, a folder of <class>/<image> files, or --data.eval_dataset NAME; with an "
            "evaluation: --dataset NAME --data-dir DIR)"
        )


class KnnMonitor:
    """kNN accuracy of the online encoder during pretraining, on up to 10k training and 10k test images."""

    def __init__(self, config: Config, train: Dataset, device: torch.device) -> None:
        self.evaluation = FrozenEvaluation.from_config(
            config, device, train=train, max_train=MAX_EVAL_IMAGES, max_test=MAX_EVAL_IMAGES
        )

    @classmethod
    def create(cls, config: Config, train: Dataset, device: torch.device) -> KnnMonitor | None:
        """The monitor, or None with one line that says why there is none (no labelled set to grade on)."""
        try:
            return cls(config, train, device)
        except DataError as e:
            log.info("kNN monitor skipped: %s", e)
            return None

    def __call__(self, encoder: nn.Module) -> float:
        return float(self.evaluation.knn(encoder)["top1"])
