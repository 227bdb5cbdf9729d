"""One typed configuration for a BYOL run, the paper's presets, and overrides by dotted key.

Defaults equal the released code's 1000-epoch ImageNet configuration (``configs/byol.py``). The presets
``imagenet-{40,100,300,1000}ep`` change only what the released configs change (base lr, weight decay, τ_base
and the number of epochs, SPEC §4). CPU presets (``tiny``, ``cpu-demo``) shrink the network and the heads;
each deviation is named in its docstring.

A config is never mutated after a run starts; overrides build a new one (``--optim.base_lr 0.3``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byol.choices import LABELS, ORDERS, URL
from byol.errors import ConfigError
from byol.files import write_json


@dataclass(frozen=True)
class ModelConfig:
    """Encoder and heads (paper section 3.3).

    ``predictor``: mlp (the paper), none (Table 5b), or closed-form (the optimal linear predictor solved by
    least squares on each batch, appendix I.2). Depths count Linear layers (Table 14). ``init``: a file the
    encoder starts from instead of a random draw (a byol export, or any ResNet state dict in torchvision's
    layout, ``byol.load_encoder``); its architecture must be the config's; the heads start at random.
    """

    depth: int = 50
    width: float = 1.0
    stem: str = "imagenet"
    projector_hidden: int = 4096
    projection_dim: int = 256
    projector_depth: int = 2
    predictor: str = "mlp"
    predictor_hidden: int = 4096
    predictor_depth: int = 2
    zero_init_residual: bool = False
    init: str = ""


@dataclass(frozen=True)
class OptimConfig:
    """LARS and its schedule (SPEC §4): lr = base_lr · batch_size / 256, warm-up, cosine decay.

    ``optimizer``: lars (the paper) or sgd (the same momentum update without the trust ratio, as the peers'
    CIFAR-10 recipes use; for the CIFAR-10 experiments of docs/cifar10.md). ``exclude_bias_and_norm``: biases
    and BN γ/β get neither weight decay nor the trust ratio (the released code); false treats every parameter
    alike: the weight decay on all of them, as ``torch.optim.SGD`` does, and with lars the trust ratio too.
    ``accumulation_steps`` N emulates ``batch_size`` B with N micro-batches of B/N (each view of each
    micro-batch its own BN batch): gradients are averaged and θ and ξ are updated once per B (Table 16).
    """

    base_lr: float = 0.2
    weight_decay: float = 1.5e-6
    momentum: float = 0.9
    eta: float = 1e-3
    batch_size: int = 4096
    warmup_epochs: float = 10.0
    predictor_lr_scale: float = 1.0
    projector_lr_scale: float = 1.0
    accumulation_steps: int = 1
    optimizer: str = "lars"
    exclude_bias_and_norm: bool = True


@dataclass(frozen=True)
class TargetConfig:
    """The target network: τ_base of the EMA schedule, and how ξ is initialised (copy or random).

    ``schedule``: cosine (τ rises from τ_base to 1, the paper's) or constant (τ = τ_base throughout; with
    τ_base = 0 the target is the stop-gradient of the online network at every step, Table 5a / appendix I).
    ``network``: ema (BYOL's moving average), or no target network, the targets coming from the online
    network with (online-sg) or without (online) a stop-gradient (appendix F.4, Table 19).
    """

    base_ema: float = 0.996
    schedule: str = "cosine"
    init: str = "copy"
    network: str = "ema"


@dataclass(frozen=True)
class LossConfig:
    """The unified objective of section 5 / appendix F.4: β weighs the contrastive (negative pairs) term,
    α is its temperature; β = 0 is BYOL. ``normalize=False`` drops the ℓ2 normalisation (appendix F.6)."""

    beta: float = 0.0
    temperature: float = 0.1
    normalize: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to pretrain on (``byol.data.DATASETS``), where its files are, and the view size.

    ``labels`` (image folders): auto (class folders where the folder holds only folders of images, else
    unlabelled), folders (insist on class folders) or none (every image unlabelled; ``byol.data.folder``).
    ``eval_dataset`` / ``eval_dir``: the labelled set that what needs labels during and after pretraining grades
    on (the kNN monitor, the evaluation commands' default); empty: the pretraining dataset and its folder.
    ``data_dir`` may be a prepared set in object storage (``s3://BUCKET/PREFIX``, ``gs://…``; ``byol.data.remote``).

    ``order`` (prepared sets): global (each epoch a permutation of all images: every batch reads from every
    shard), shards (each epoch a permutation of the shards, cut into one contiguous run per rank, images
    shuffled within windows of ``shard_window`` shards: each rank reads a few shards at a time, which a cache
    smaller than the set can stream) or auto (shards for a set in object storage, global for a local one).
    ``cache_dir`` / ``cache_bytes``: where shards from object storage are kept and the most bytes they take
    (``byol.data.cache``; "" is ~/.cache/byol/shards, 0 the whole set or 80% of the free disk if less).
    """

    dataset: str = "imagefolder"
    data_dir: str = ""
    image_size: int = 224
    num_workers: int = 4
    labels: str = "auto"
    eval_dataset: str = ""
    eval_dir: str = ""
    order: str = "auto"
    shard_window: int = 4
    cache_dir: str = ""
    cache_bytes: int = 0

    def evaluation(self) -> tuple[str, str]:
        """(dataset, folder) of the labelled set evaluations use by default."""
        name = self.eval_dataset or self.dataset
        return name, self.eval_dir or (self.data_dir if name == self.dataset else "")


@dataclass(frozen=True)
class AugmentConfig:
    """The view distributions T and T' by preset name (``byol.augment.PRESETS``; the paper's Table 17).

    ``crop_min_scale``: the smallest random-crop area fraction of both views (the paper: 0.08).
    """

    preset: str = "byol"
    crop_min_scale: float = 0.08


@dataclass(frozen=True)
class TrainConfig:
    """Length of the run, seeds, logging, checkpointing and speed switches.

    ``precision``: fp32, bf16 (autocast; the loss and the optimizer stay fp32) or auto (bf16 where the device
    computes it natively: CUDA with bf16, a CPU with AVX512_BF16 or AMX; fp32 everywhere else, see
    ``byol.precision``). ``memory_format``: channels_last, contiguous or auto (channels_last exactly when
    bf16 is used: the fast pair on both GPUs and bf16-capable CPUs). ``compile``: ``torch.compile`` the
    networks (the two-view forward and the target) and the views: auto (the default) times the first steps eager
    and compiles each part whose saving over the rest of the run exceeds its compile time (``byol.compiling``
    states the rule and prints the decision), true or false always or never; a compile that fails says so in one
    line and the run goes on eager. ``deterministic``:
    deterministic kernels only (exact resume on a CPU is bit-identical either way). ``on_nonfinite``: stop (default) or
    skip a step whose loss or gradients are NaN/Inf, at most ``max_skipped_steps`` times. ``tensorboard``:
    TensorBoard event files beside metrics.jsonl (``<run>/tensorboard/``) where the ``tensorboard`` package is
    installed (``pip install byol[tensorboard]``); false writes none. ``loggers``: experiment trackers that get
    the same records, comma-separated: mlflow, wandb (``byol.loggers``; "" for none). ``follow_length``: warm-up,
    τ_base, base lr and weight decay follow ``epochs`` from the preset's length (``byol.length``); false keeps the
    preset's numbers. ``pinned``: the comma-separated keys of those the rule leaves alone (the ones the user set);
    ``length_note``: what the rule changed and why, as the run printed it.
    """

    epochs: float = 1000.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    online_probe: bool = True
    knn_every: int = 0
    max_steps: int = 0
    precision: str = "auto"
    memory_format: str = "auto"
    deterministic: bool = False
    compile: str = "auto"
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 10
    tensorboard: bool = True
    loggers: str = ""
    follow_length: bool = True
    pinned: str = ""
    length_note: str = ""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        """Writes the config as JSON, atomically (a kill leaves the old file or the new one)."""
        write_json(Path(path), self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        return apply_overrides(cls(), flatten(data))


def finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is finite: what every number read back from a file must be."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"base_lr": 0.3}} → {"optim.base_lr": 0.3}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


MAX_INT = 2**63 - 1  # what a config integer may be (torch and numpy take int64)
# Bounds far beyond any real run that keep an absurd value from hanging or exhausting memory before it is refused.
MAX_UNITS, MAX_DEPTH = 2**16, 16
# The ResNet v1 depths byol builds (byol.networks) and their residual blocks per stage, and the stems.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),  # not in the paper: the CPU demo's encoder (cpu_demo below)
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
STEMS = ("imagenet", "cifar")
MAX_IMAGE_SIZE = 4096  # pixels a side: views, evaluations and exports


def valid_keys() -> list[str]:
    return sorted(flatten(Config().to_dict()))


def unknown_key(key: str) -> ConfigError:
    """The refusal of a key that is not in the config, with the closest valid keys (or the sections)."""
    close = difflib.get_close_matches(key, valid_keys(), n=3, cutoff=0.6)
    sections = ", ".join(f.name for f in dataclasses.fields(Config))
    hint = f"did you mean {' or '.join(close)}?" if close else f"keys look like SECTION.NAME, sections: {sections}"
    return ConfigError(f"unknown config key {key!r}; {hint}")


def _convert(key: str, value: Any, annotation: Any) -> Any:
    """Turns a command-line string (or a JSON value) into the field's declared type."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError
            return text in {"true", "1", "yes"}
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            number = int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
            if not -MAX_INT <= number <= MAX_INT:
                raise ValueError
            return number
        if annotation is float:
            return float(value)
        if isinstance(value, bool):  # a switch that became a choice (train.compile): config.json files of before
            return str(value).lower()
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}") from None


@functools.cache
def _field_types(section: type) -> dict[str, Any]:
    """A config section's field types, resolved once (the annotations are strings: ``from __future__``)."""
    return typing.get_type_hints(section)


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """A new config with the dotted keys replaced; unknown keys are refused with the list of valid ones."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        section_config = getattr(config, section, None)
        if not dataclasses.is_dataclass(section_config) or name not in {
            f.name for f in dataclasses.fields(section_config)
        }:
            raise unknown_key(key)
        kind: type = type(section_config)
        sections.setdefault(section, {})[name] = _convert(key, value, _field_types(kind)[name])
    replaced = {s: dataclasses.replace(getattr(config, s), **v) for s, v in sections.items()}
    return dataclasses.replace(config, **replaced)


def _released(epochs: int, base_lr: float, weight_decay: float, base_ema: float) -> Callable[[], Config]:
    def preset() -> Config:
        return Config(
            optim=OptimConfig(base_lr=base_lr, weight_decay=weight_decay),
            target=TargetConfig(base_ema=base_ema),
            train=TrainConfig(epochs=float(epochs)),
        )

    preset.__doc__ = (
        f"Released code, ImageNet ResNet-50, {epochs} epochs at batch 4096: base lr {base_lr}, "
        f"wd {weight_decay}, τ_base {base_ema}."
    )
    return preset


def tiny() -> Config:
    """For tests on a CPU: a width-1/8 ResNet-18 with the cifar stem on 16 px synthetic images.

    Deviations from the paper, all for speed: 8-channel encoder, heads 64 → 32 (predictor 64), batch 32,
    2 epochs of warm-up-free training on a 256-image synthetic set. fp32 on every machine, so that a test's
    numbers do not depend on the CPU it runs on (``auto`` picks bf16 on a CPU with AVX512_BF16 or AMX).
    """
    return Config(
        model=ModelConfig(
            depth=18, width=0.125, stem="cifar", projector_hidden=64, projection_dim=32, predictor_hidden=64
        ),
        optim=OptimConfig(base_lr=1.0, weight_decay=1e-6, batch_size=32, warmup_epochs=0.0),
        target=TargetConfig(base_ema=0.99),
        data=DataConfig(dataset="synthetic", image_size=16, num_workers=0),
        train=TrainConfig(epochs=2.0, log_every=1, checkpoint_every=4, knn_every=0, precision="fp32"),
    )


def small_data_optim(warmup_epochs: float) -> OptimConfig:
    """The optimizer measured best at batch 128 on small images (``cifar10-resnet18``'s docstring has the
    numbers): momentum SGD without LARS's trust ratio, base lr 0.24, weight decay 5e-4 on every parameter."""
    return OptimConfig(
        optimizer="sgd",
        base_lr=0.24,
        weight_decay=5e-4,
        exclude_bias_and_norm=False,
        batch_size=128,
        warmup_epochs=warmup_epochs,
    )


def cpu_demo() -> Config:
    """Fashion-MNIST on a 2-core CPU: `byol demo` sizes ``train.epochs`` to its time budget (byol/demo.py).

    The algorithm is the paper's (loss, per-view BN, cosine τ, T/T' asymmetry); the optimizer is the small-data
    one of ``cifar10-resnet18``. Choices for the budget, each measured on a 2-core AVX2 CPU (the studies:
    docs/benchmarks.md):
    - DEVIATION, loud: momentum SGD without LARS's trust ratio, base lr 0.24, weight decay 5e-4 on every
      parameter, as ``cifar10-resnet18``. The demo's gain over random init (kNN / linear) with it: seed 0
      +10.2 / +10.4, seed 1 +8.9 / +8.0, seed 2 +10.1 / +8.2; with LARS base lr 2.0 (the released code's
      Imagenette rate; 3.0 was no different) +8.2 / +8.0, +7.9 / +6.6 and +8.5 / +6.5. On CIFAR-10 SGD beat
      LARS on each of three seeds, by 3.2 points (docs/cifar10.md).
    - DEVIATION, loud: a ResNet-10 (one basic block per stage; not in the paper) of width 1/8 with the cifar
      stem (3x3/1, no max-pool). A step takes 0.163 s against 0.271 for ResNet-18 (its 20-px first stages
      dominate), so the budget trains 5 epochs instead of 3 and BYOL's lead over random init grew on every
      seed (seed 2: kNN / linear +8.0 / +6.6 against +2.4 / +4.1). The paper's stride-2 stem learns far less.
    - DEVIATION, loud: views and evaluation at 20 px, not Fashion-MNIST's 28: a step takes 288 ms instead of
      519 (ResNet-18), and the random-init encoder scores the same at both sizes.
    - DEVIATION, loud: no blur in either view (``augment.preset remove-blur``, the paper's Table 17 row): its
      σ ∈ [0.1, 2.0] px is for 224-px images and blurs away a tenth of a 20-px one.
    - DEVIATION, loud: the smallest crop covers 25% of the image, not 8%: an 8% crop of a 28-px image is an
      8x8 patch, often of background (kNN after 2 epochs 61.4% with 0.08, 69.7% with 0.25; 40% was no better).
    - ``train.precision auto``: bf16 + channels_last where the CPU has native bf16 (2.9x faster than fp32
      on an AVX512_BF16 CPU), fp32 elsewhere (emulated bf16 was 7x slower than fp32 on an AVX2 CPU).
    - Heads 1024 → 128 (predictor 1024) instead of 4096 → 256: the encoder is 64-d.
    - Batch 128 (it beat 64 and 256 in the same minutes), half an epoch of warm-up (a tenth learned far less),
      τ_base 0.99.
    Every other augmentation parameter is the paper's.
    """
    return Config(
        model=ModelConfig(
            depth=10, width=0.125, stem="cifar", projector_hidden=1024, projection_dim=128, predictor_hidden=1024
        ),
        optim=small_data_optim(warmup_epochs=0.5),
        target=TargetConfig(base_ema=0.99),
        data=DataConfig(dataset="fashion-mnist", image_size=20, num_workers=0),
        augment=AugmentConfig(preset="remove-blur", crop_min_scale=0.25),
        train=TrainConfig(epochs=6.0, log_every=10, checkpoint_every=200),
    )


def cifar10_resnet18() -> Config:
    """Small data on one device: CIFAR-10-scale images, ResNet-18 with the cifar stem at 32 px, 100 epochs.

    The recipe is stated at 100 epochs; a run of another length moves warm-up, τ_base, the learning rate and
    the weight decay along the released per-length table (``byol.length``). Each choice was measured on real
    CIFAR-10 on a 2-core CPU, 3 epochs of a ResNet-10 of width 1/8 at 20 px, kNN top-1 (docs/cifar10.md, "A
    preset for small data"); the reference is 39.2 (τ_base 0.97) or 39.4 (0.99):
    - DEVIATION, loud: momentum SGD without LARS's trust ratio, weight decay 5e-4 on every parameter, base lr
      0.24 (lr = 0.24 · B/256; 0.48: 39.0). SGD beat LARS on each of three seeds, by 3.2 points on average;
      LARS peaked at the released Imagenette recipe's base lr 2.0 (35.9; 0.5 to 4.0 tried).
    - Batch 128: at short lengths more steps learn more (batch 256: 36.7).
    - τ_base 0.99 at 100 epochs, 0.97 below 40 as in the released table (0.97 and 0.99 within 0.2 points at 3
      epochs, 0.996 a point behind); 10 warm-up epochs at 100 and from 40 on, 0.5 at 3 epochs (0.75: 37.3,
      none: 38.0).
    - DEVIATION, loud: no blur (``augment.preset remove-blur``): the paper's σ ∈ [0.1, 2.0] px is for 224-px
      images; at 32 px lightly's loop learned 4.5 points more without it in 30 epochs on a GPU.
    - DEVIATION, loud: the smallest crop covers 25% of the image, not 8% (8%: 39.0).
    - Heads 1024 → 128 (predictor 1024), as ``cpu-demo`` (the paper's 4096 → 256: 38.6).
    bf16 and channels_last where the device computes them natively (``train.precision auto``).
    """
    return Config(
        model=ModelConfig(
            depth=18, width=1.0, stem="cifar", projector_hidden=1024, projection_dim=128, predictor_hidden=1024
        ),
        optim=small_data_optim(warmup_epochs=10.0),
        target=TargetConfig(base_ema=0.99),
        data=DataConfig(dataset="cifar10", image_size=32, num_workers=0),
        augment=AugmentConfig(preset="remove-blur", crop_min_scale=0.25),
        train=TrainConfig(epochs=100.0, log_every=50, checkpoint_every=2000, knn_every=10),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "imagenet-40ep": _released(40, 0.45, 1e-6, 0.97),
    "imagenet-100ep": _released(100, 0.45, 1e-6, 0.99),
    "imagenet-300ep": _released(300, 0.3, 1e-6, 0.99),
    "imagenet-1000ep": _released(1000, 0.2, 1.5e-6, 0.996),
    "cifar10-resnet18": cifar10_resnet18,
    "tiny": tiny,
    "cpu-demo": cpu_demo,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets are: {', '.join(PRESETS)}")
    return PRESETS[name]()


def local_folder(text: str, what: str) -> str:
    """``text`` unless it is a URL: a URL taken as a folder name would make a local folder called "s3:" without a
    word. Refused in one line naming what to do."""
    if URL.match(text):
        raise ConfigError(
            f"{what} {text!r} is a URL; this takes a local folder (object storage is read as --data-dir and "
            "written by `byol prepare --out`)"
        )
    return text


def data_location(text: str, what: str) -> str:
    """A dataset's place: a local folder, or a prepared set in object storage (``s3://`` or ``gs://``); any other
    URL refused in one line naming the valid ones."""
    if URL.match(text):
        from byol.data.remote import parse  # no boto3 import: parsing is plain text

        parse(text, what)
    return text


def _check_streaming(data: DataConfig) -> None:
    """The data's places (folders or object storage; the cache a local folder) and how a prepared set streams."""
    data_location(data.data_dir, "data.data_dir")
    data_location(data.eval_dir, "data.eval_dir")
    local_folder(data.cache_dir, "data.cache_dir")
    if data.order not in ORDERS:
        raise ConfigError(f"data.order: {data.order!r} is not valid; choose one of {', '.join(ORDERS)}")
    if not 1 <= data.shard_window <= 4096:
        raise ConfigError(f"data.shard_window = {data.shard_window!r} must lie in [1, 4096]")
    if not 0 <= data.cache_bytes <= 2**60:
        raise ConfigError(f"data.cache_bytes = {data.cache_bytes!r} must lie in [0, 2^60] (0: the whole set)")


def validate(config: Config) -> Config:
    """Refuses impossible or unknown values, naming the field and what it accepts. Returns the config."""
    from byol.augment import PRESETS as AUGMENT_PRESETS  # local: augment imports errors, not config
    from byol.data import DATASETS
    from byol.ema import TAU_SCHEDULES
    from byol.loggers import TRACKERS, names

    for key, value in flatten(config.to_dict()).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} = {value!r} must be a finite number")
    _check_streaming(config.data)
    m, o, t, d, tr = config.model, config.optim, config.target, config.data, config.train
    choices: list[tuple[str, object, tuple[object, ...]]] = [
        ("model.depth", m.depth, tuple(BLOCKS_PER_STAGE)),
        ("model.stem", m.stem, STEMS),
        ("target.init", t.init, ("copy", "random")),
        ("optim.optimizer", o.optimizer, ("lars", "sgd")),
        ("target.schedule", t.schedule, TAU_SCHEDULES),
        ("target.network", t.network, ("ema", "online-sg", "online")),
        ("model.predictor", m.predictor, ("mlp", "none", "closed-form")),
        ("train.precision", tr.precision, ("auto", "fp32", "bf16")),
        ("train.memory_format", tr.memory_format, ("auto", "channels_last", "contiguous")),
        ("train.on_nonfinite", tr.on_nonfinite, ("stop", "skip")),
        ("train.compile", tr.compile, ("auto", "true", "false")),
        ("data.dataset", d.dataset, tuple(DATASETS)),
        ("data.eval_dataset", d.eval_dataset, ("", *DATASETS)),
        ("data.labels", d.labels, LABELS),
        ("augment.preset", config.augment.preset, tuple(AUGMENT_PRESETS)),
    ]
    choices += [("train.loggers", name, TRACKERS) for name in names(tr.loggers)]
    for key, value, valid in choices:
        if value not in valid:
            raise ConfigError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(str, valid))}")
    checks: list[tuple[str, bool, str]] = [
        ("model.width", 0 < m.width <= 64, "must lie in (0, 64]"),
        ("model.projector_hidden", 0 < m.projector_hidden <= MAX_UNITS, f"must lie in [1, {MAX_UNITS}]"),
        ("model.projection_dim", 0 < m.projection_dim <= MAX_UNITS, f"must lie in [1, {MAX_UNITS}]"),
        (
            "model.predictor_hidden",
            0 < m.predictor_hidden <= MAX_UNITS,
            f"must lie in [1, {MAX_UNITS}] (model.predictor none removes it)",
        ),
        ("model.projector_depth", 1 <= m.projector_depth <= MAX_DEPTH, f"must lie in [1, {MAX_DEPTH}]"),
        ("model.predictor_depth", 1 <= m.predictor_depth <= MAX_DEPTH, f"must lie in [1, {MAX_DEPTH}]"),
        ("optim.accumulation_steps", o.accumulation_steps >= 1, "must be >= 1"),
        (
            "optim.batch_size",
            o.accumulation_steps < 1
            or (o.batch_size % o.accumulation_steps == 0 and o.batch_size // o.accumulation_steps >= 2),
            "must be divisible by optim.accumulation_steps into micro-batches of >= 2 (BN needs a batch)",
        ),
        ("loss.temperature", config.loss.temperature > 0, "must be > 0"),
        ("loss.beta", config.loss.beta >= 0, "must be >= 0"),
        ("optim.base_lr", o.base_lr >= 0, "must be >= 0"),
        ("optim.weight_decay", o.weight_decay >= 0, "must be >= 0"),
        ("optim.momentum", 0 <= o.momentum < 1, "must lie in [0, 1)"),
        ("optim.eta", o.eta > 0, "must be > 0"),
        (
            "optim.warmup_epochs",
            0 <= o.warmup_epochs <= 1e6,
            "must lie in [0, 1e6] (warm-up longer than the run is cut to it)",
        ),
        ("optim.predictor_lr_scale", o.predictor_lr_scale >= 0, "must be >= 0"),
        ("optim.projector_lr_scale", o.projector_lr_scale >= 0, "must be >= 0"),
        ("target.base_ema", 0 <= t.base_ema <= 1, "must lie in [0, 1]"),
        (
            "data.image_size",
            d.image_size >= (8 if m.stem == "cifar" else 32),
            "is too small for the stem (>= 8 px for cifar, >= 32 px for imagenet)",
        ),
        ("data.image_size", d.image_size <= MAX_IMAGE_SIZE, f"must be <= {MAX_IMAGE_SIZE}"),
        ("data.num_workers", 0 <= d.num_workers <= 256, "must lie in [0, 256]"),
        ("optim.batch_size", o.batch_size <= 2**20, "must be <= 2^20"),
        ("augment.crop_min_scale", 0 < config.augment.crop_min_scale <= 1, "must lie in (0, 1]"),
        ("train.epochs", 0 < tr.epochs <= 1e6, "must lie in (0, 1e6]"),
        ("train.log_every", tr.log_every > 0, "must be > 0"),
        ("train.checkpoint_every", tr.checkpoint_every > 0, "must be > 0"),
        ("train.keep_checkpoints", tr.keep_checkpoints >= 1, "must be >= 1"),
        ("train.knn_every", tr.knn_every >= 0, "must be >= 0 (0 disables the kNN monitor)"),
        ("train.max_steps", 0 <= tr.max_steps <= 2**40, "must lie in [0, 2^40] (0: train.epochs decides)"),
        ("train.max_skipped_steps", tr.max_skipped_steps >= 0, "must be >= 0"),
        ("train.seed", 0 <= tr.seed < 2**32, "must lie in [0, 2^32) (numpy's seed range)"),
    ]
    for key, ok, requirement in checks:
        if not ok:
            section, _, name = key.partition(".")
            value = getattr(getattr(config, section), name)
            raise ConfigError(f"{key} = {value!r} {requirement}")
    return config
