"""The settings of each evaluation protocol, with the paper's values as defaults (SPEC §5).

They live apart from the protocols, which need torch, so that the command line builds its parsers (and answers
`byol knn --help`) without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from byol.errors import ConfigError


@dataclass(frozen=True)
class KnnConfig:
    """The paper's kNN monitor settings (SPEC §5)."""

    k: int = 200
    temperature: float = 0.1


MODES = ("augmented", "cached", "appendix-c")


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
    clip_alpha: float = 20.0  # appendix-c: x̂ = α·tanh(x/α)
    logit_penalty: float = 1e-2  # appendix-c: β in β·mean(x̂²)
    augment_preset: str = ""  # appendix-c: the pretraining views' preset ("": the run's own)


@dataclass(frozen=True)
class FinetuneConfig:
    """Paper: lr swept over {0.01, 0.02, 0.05, 0.1, 0.005}, epochs over {30, 50}, batch 1024."""

    label_fraction: float = 0.01
    lrs: Sequence[float] = field(default=(0.01, 0.02, 0.05, 0.1, 0.005))
    epochs: Sequence[int] = field(default=(30, 50))
    batch_size: int = 1024
    weight_decay: float = 0.0
    val_size: int = 0  # 0: min(10 000, 10% of the training set)
    seed: int = 0


PAPER_LRS = tuple(10 ** (-3 + i / 2) for i in range(5))  # 1e-3 ... 1e-1, 5 log-spaced values (D.4)


@dataclass(frozen=True)
class SegmentConfig:
    """Appendix D.4's settings (VOC2012, SPEC §5); the CPU-scale values are flags (docs/transfer.md)."""

    lrs: Sequence[float] = field(default=PAPER_LRS)  # base lrs swept on the held-out images
    lr: float = 0.0  # > 0: this lr, no sweep
    iterations: int = 30_000
    batch_size: int = 16
    weight_decay: float = 1e-4
    momentum: float = 0.9
    crop_size: int = 513
    scale_range: tuple[float, float] = (0.5, 2.0)
    decay_at: tuple[float, float] = (0.7, 0.9)  # lr × 0.1 at these fractions of the iterations
    image_scale: float = 1.0  # images (and the masks trained on) resized by this before anything else
    head_channels: int = 0  # 0: round(256 · encoder width), at least 16
    head_dilation: int = 6
    frozen: bool = False
    mask_fraction: float = 1.0  # a seeded fraction of the training masks (the few-label regime)
    val_fraction: float = 0.2  # held out of train for the sweep when the folder has no val split
    seeds: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.lrs and self.lr <= 0:
            raise ConfigError("give --lrs to sweep or one --lr")
        if any(not lr > 0 for lr in (*self.lrs, self.lr or 1.0)):
            raise ConfigError("learning rates must be positive")
        if self.crop_size < 8:
            raise ConfigError(f"--crop-size must be at least 8 px, got {self.crop_size}")
