"""`byol ablate TABLE`: the paper's ablations (section 5, appendices F and I) as named experiment grids.

Each table is a list of rows; a row is a set of config overrides on top of a scale preset (``cpu``: minutes per
run on a laptop CPU; ``gpu``: CIFAR-10 ResNet-18). Every row runs for every seed, each run is evaluated with the
same two protocols on up to 10k training images against the test set (kNN top-1, k = 200, T = 0.1; and a
linear classifier on standardized cached features) and flagged as collapsed when its final projection std is
below 0.1/√d. The Markdown table gives mean ± half-range over
seeds next to the paper's ImageNet result where SPEC §6 states one (linear top-1 or the paper's verdict).

Finished runs (a ``result.json`` in their directory) are reused and unfinished ones resume from their last
checkpoint, so an interrupted grid continues where it stopped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from byol.checkpoint import list_checkpoints
from byol.config import (
    AugmentConfig,
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TargetConfig,
    TrainConfig,
    apply_overrides,
    flatten,
    get_preset,
    validate,
)
from byol.data import TEST_SPLIT, load_dataset
from byol.errors import ConfigError
from byol.evaluate.common import load_encoder_from_run, random_encoder
from byol.evaluate.runner import knn_and_cached_linear
from byol.loss import collapse_floor
from byol.precision import Precision
from byol.train import CONFIG_FILE, METRICS_FILE, pretrain, resolve_device

RESULT_FILE = "result.json"
EVAL_IMAGES = 10_000


@dataclass(frozen=True)
class Row:
    label: str
    overrides: Mapping[str, str] = field(default_factory=dict)
    paper: str = "—"  # the paper's number or verdict, as SPEC §6 gives it
    pretrain: bool = True  # False: the random-init encoder of the same architecture

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[Row, ...]
    note: str = ""
    # per scale, overrides this table needs on top of the scale (before the user's own)
    scale_overrides: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


RANDOM_INIT = Row("random-init encoder (no pretraining)", paper="1.4", pretrain=False)
TAU_ZERO = {"target.base_ema": "0", "target.schedule": "constant"}  # τ = 0 at every step, not a rising cosine
NO_TARGET = {"target.network": "online"}  # "no target network": the online projections, no stop-gradient
NO_PREDICTOR = {"model.predictor": "none"}

TABLES: dict[str, Table] = {
    "5a": Table(
        "Table 5a: target network decay rate τ_base",
        (
            Row("τ_base = 1 (constant random target)", {"target.base_ema": "1"}, "18.8"),
            Row("τ_base = 0.999", {"target.base_ema": "0.999"}, "69.8"),
            Row("τ_base = 0.99", {"target.base_ema": "0.99"}, "72.5"),
            Row("τ_base = 0.9", {"target.base_ema": "0.9"}, "68.4"),
            Row("τ_base = 0 (stop-gradient of the online network)", TAU_ZERO, "0.3 (collapse)"),
            RANDOM_INIT,
        ),
        "The cpu scale runs 10 epochs here: in 1 to 3 epochs a slow target (τ_base 0.999) hardly moves from its "
        "random initialisation, and no pretraining clearly beats the random-init encoder (docs/ablations.md).",
        scale_overrides={"cpu": {"train.epochs": "10"}},
    ),
    "5b": Table(
        "Table 5b: predictor, target network and the weight β of negative pairs (α = loss.temperature)",
        (
            Row("BYOL: predictor + target network, β = 0", {}, "72.5"),
            Row("predictor + target network, β = 1", {"loss.beta": "1"}),
            Row("target network, β = 1", {**NO_PREDICTOR, "loss.beta": "1"}),
            Row(
                "SimCLR: no predictor, no target network, β = 1",
                {**NO_PREDICTOR, **NO_TARGET, "loss.beta": "1"},
                "trains (no collapse)",
            ),
            Row("predictor, β = 1", {**NO_TARGET, "loss.beta": "1"}),
            Row("target network, β = 0", NO_PREDICTOR, "collapse"),
            Row("predictor, β = 0", NO_TARGET, "collapse"),
            Row("no predictor, no target network, β = 0", {**NO_PREDICTOR, **NO_TARGET}, "collapse"),
        ),
        "SPEC §6: without negatives (β = 0) only predictor + target network avoids collapse.",
    ),
    "14": Table(
        "Table 14: projector and predictor depth (Linear layers) and projection dimension",
        (
            Row("projector 2, predictor 2 (BYOL)", {}),
            Row("projector 1, predictor 2", {"model.projector_depth": "1"}),
            Row("projector 3, predictor 2", {"model.projector_depth": "3"}),
            Row("projector 2, predictor 1", {"model.predictor_depth": "1"}),
            Row("projector 2, predictor 3", {"model.predictor_depth": "3"}),
            Row("projection dimension ÷ 4", {"model.projection_dim": "32"}),
        ),
    ),
    "15": Table(
        "Table 15: learning rate and weight decay",
        (
            Row("base lr × 1, weight decay × 1 (preset)", {}),
            Row("base lr × 0.5", {"optim.base_lr": "x0.5"}),
            Row("base lr × 2", {"optim.base_lr": "x2"}),
            Row("weight decay 0", {"optim.weight_decay": "0"}),
            Row("weight decay × 10", {"optim.weight_decay": "x10"}),
        ),
    ),
    "16": Table(
        "Table 16: batch size (lr scales linearly with the batch)",
        (
            Row("batch 256", {"optim.batch_size": "256"}),
            Row(
                "batch 256 as 4 × 64 accumulated (target updated once per 256)",
                {"optim.batch_size": "256", "optim.accumulation_steps": "4"},
            ),
            Row("batch 128", {"optim.batch_size": "128"}),
            Row("batch 64", {"optim.batch_size": "64"}),
            Row("batch 32", {"optim.batch_size": "32"}),
        ),
        "SPEC §6: BYOL stays flat from 4096 down to 256 and drops at 128 and 64 (ImageNet).",
    ),
    "17": Table(
        "Table 17: image augmentations",
        (
            Row("baseline", {}),
            Row("remove flip", {"augment.preset": "remove-flip"}),
            Row("remove blur", {"augment.preset": "remove-blur"}),
            Row("remove color (jittering and grayscale)", {"augment.preset": "remove-color"}, "−9.1 vs baseline"),
            Row("remove solarize in T'", {"augment.preset": "remove-solarize-in-t-prime"}),
            Row("symmetric blurring/solarization", {"augment.preset": "symmetric-blur-solarize"}),
            Row("crop and flip only", {"augment.preset": "crop-and-flip-only"}),
            Row("crop only", {"augment.preset": "crop-only"}, "−13.1 vs baseline"),
        ),
        "On one-channel Fashion-MNIST colour jitter is brightness and contrast only (see byol.augment).",
    ),
    "19": Table(
        "Table 19 (appendix F.4): the target network and the stop-gradient",
        (
            Row("moving-average target network (BYOL)", {}),
            Row("no target network, stop-gradient on the online projections", {"target.network": "online-sg"}),
            Row("no target network, no stop-gradient", NO_TARGET, "collapse"),
        ),
    ),
    "21": Table(
        "Table 21 (appendix I): τ = 0 with a predictor learning-rate multiplier λ",
        (
            Row("τ_base = 0, λ = 1", TAU_ZERO, "0.3 (collapse)"),
            Row("τ_base = 0, λ = 2", {**TAU_ZERO, "optim.predictor_lr_scale": "2"}),
            Row("τ_base = 0, λ = 10", {**TAU_ZERO, "optim.predictor_lr_scale": "10"}),
            Row("τ_base = 0, λ = 20", {**TAU_ZERO, "optim.predictor_lr_scale": "20"}),
        ),
        "SPEC §6: a large λ avoids collapse.",
    ),
    "22": Table(
        "Table 22 (appendix I.2): the closed-form optimal linear predictor",
        (
            Row("learned predictor, moving-average target (BYOL)", {}),
            Row(
                "closed-form predictor, no target network",
                {"model.predictor": "closed-form", "target.network": "online-sg"},
            ),
            Row("closed-form predictor, moving-average target", {"model.predictor": "closed-form"}),
            Row("loss without ℓ2 normalisation (appendix F.6)", {"loss.normalize": "false"}, "close to BYOL"),
        ),
    ),
}


def cpu_scale() -> Config:
    """Minutes per run on a 2-core CPU: Fashion-MNIST at 28 px, a width-1/8 ResNet-18 with the cifar stem,
    heads 1024 → 128, batch 256, LARS base lr 2.0, τ_base 0.99, smallest crop 25%, 1 epoch (the setting
    docs/ablations.md was measured with; pinned here, so that a change of the demo preset leaves it alone).

    A table may ask for more (``Table.scale_overrides``): 5a runs 10 epochs, about 11 minutes a run.
    """
    return Config(
        model=ModelConfig(
            depth=18, width=0.125, stem="cifar", projector_hidden=1024, projection_dim=128, predictor_hidden=1024
        ),
        optim=OptimConfig(base_lr=2.0, weight_decay=1e-6, batch_size=256, warmup_epochs=0.5),
        target=TargetConfig(base_ema=0.99),
        data=DataConfig(dataset="fashion-mnist", image_size=28, num_workers=0),
        augment=AugmentConfig(crop_min_scale=0.25),
        train=TrainConfig(epochs=1.0, log_every=10, checkpoint_every=100),
    )


SCALES = {"cpu": cpu_scale, "gpu": lambda: get_preset("cifar10-resnet18")}


def _resolve(base: Config, overrides: Mapping[str, str]) -> Config:
    """Applies a row's overrides; "x2" multiplies the scale's own value (Table 15's relative grid)."""
    flat = {}
    for key, value in overrides.items():
        if value.startswith("x"):
            section, _, name = key.partition(".")
            value = str(float(value[1:]) * getattr(getattr(base, section), name))
        flat[key] = value
    return validate(apply_overrides(base, flat))


def _final_proj_std(run_dir: Path) -> float:
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip()]
    values = [r["proj_std"] for r in records if "proj_std" in r]
    return values[-1] if values else float("nan")


def _check_same_experiment(run_dir: Path, config: Config, row: Row, previous: Mapping[str, Any] | None) -> None:
    """Refuses to reuse or resume a directory that holds another experiment (a row redefined since it ran)."""
    stale = []
    if previous is not None and previous.get("overrides") != dict(row.overrides):
        stale.append(
            f"its result was made with overrides {previous.get('overrides')}, the row now has {dict(row.overrides)}"
        )
    config_path = run_dir / CONFIG_FILE
    if row.pretrain and config_path.is_file():
        saved = flatten(Config.from_dict(json.loads(config_path.read_text())).to_dict())
        wanted = flatten(config.to_dict())
        differ = sorted(key for key in wanted if saved.get(key) != wanted[key])
        if differ:
            stale.append("its run differs in " + ", ".join(f"{k} ({saved.get(k)!r} → {wanted[k]!r})" for k in differ))
    if stale:
        raise ConfigError(
            f"{run_dir} holds another experiment than row {row.label!r}: {'; '.join(stale)}. "
            "Choose a new --out, or delete that directory to rerun the cell."
        )


def run_cell(base: Config, row: Row, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
    """One (row, seed): pretrain (or resume), evaluate with kNN and linear, save result.json.

    A finished cell is reused; one finished before the linear protocol existed gets it from its checkpoint.
    """
    result_path = run_dir / RESULT_FILE
    previous = json.loads(result_path.read_text()) if result_path.is_file() else None
    config = _resolve(base, {**row.overrides, "train.seed": str(seed)})
    _check_same_experiment(run_dir, config, row, previous)
    if previous is not None and "linear_top1" in previous:
        return previous
    device = resolve_device(config.train.device)
    d = config.data
    train = load_dataset(d.dataset, "train", d.data_dir, d.image_size)
    test = load_dataset(d.dataset, TEST_SPLIT.get(d.dataset, "test"), d.data_dir, d.image_size)
    generator = torch.Generator().manual_seed(seed)
    train_eval = train.subset(torch.randperm(len(train), generator=generator)[:EVAL_IMAGES])
    if row.pretrain:
        if previous is None:
            pretrain(config, run_dir, resume=bool(list_checkpoints(run_dir)), progress=progress)
        encoder = load_encoder_from_run(run_dir).encoder
        proj_std = _final_proj_std(run_dir)
    else:
        encoder = random_encoder(config, train.channels)
        proj_std = float("nan")
    precision = Precision.create(config.train.precision, config.train.memory_format, device)
    knn, linear = knn_and_cached_linear(encoder, train_eval, test, d.image_size, device, precision, progress=False)
    floor = collapse_floor(config.model.projection_dim)
    result = {
        "row": row.label,
        "seed": seed,
        "knn_top1": knn["top1"],
        "linear_top1": linear["top1"],
        "proj_std": proj_std,
        "collapsed": bool(proj_std < floor) if row.pretrain else None,
        "overrides": dict(row.overrides),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_table(
    name: str,
    scale: str,
    seeds: list[int],
    out_dir: Path,
    progress: bool = True,
    overrides: Mapping[str, str] | None = None,
) -> Path:
    """Runs (or resumes) every cell of a table and writes out_dir/table.md; returns its path.

    ``overrides`` (dotted config keys) change the scale for every row, e.g. {"train.epochs": "3"}.
    """
    if name not in TABLES:
        raise ConfigError(f"unknown ablation table {name!r}; valid tables are: {', '.join(TABLES)}")
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid scales are: {', '.join(SCALES)}")
    table = TABLES[name]
    overrides = {**table.scale_overrides.get(scale, {}), **(overrides or {})}
    base = validate(apply_overrides(SCALES[scale](), overrides))
    cells = [(row, seed) for row in table.rows for seed in seeds]
    results: dict[str, list[dict[str, Any]]] = {}
    for row, seed in tqdm(cells, desc=f"ablation {name}", unit="run", disable=not progress):
        result = run_cell(base, row, seed, out_dir / row.slug / f"seed{seed}", progress=False)
        results.setdefault(row.label, []).append(result)
    path = out_dir / "table.md"
    label = scale + "".join(f", {k} {v}" for k, v in overrides.items())
    path.write_text(format_table(table, results, label, seeds))
    return path


def _mean_half_range(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def format_table(table: Table, results: Mapping[str, list[dict[str, Any]]], scale: str, seeds: list[int]) -> str:
    lines = [
        f"# {table.title}",
        "",
        f"Scale `{scale}`, seeds {seeds}, mean ± half-range over seeds. kNN: top-1, k = 200, T = 0.1. Linear: "
        "top-1 of a linear classifier on standardized cached features, lr chosen on a held-out validation split. "
        "Collapsed: final projection std < 0.1/√d (runs collapsed / runs). "
        "Paper: ImageNet linear top-1 or verdict, where SPEC §6 states it.",
        "",
        "| row | ours kNN top-1 | ours linear top-1 | projection std | collapsed | paper |",
        "| --- | ---: | ---: | ---: | :---: | --- |",
    ]
    for row in table.rows:
        runs = results.get(row.label, [])
        knn = _mean_half_range([r["knn_top1"] for r in runs])
        linear = _mean_half_range([r["linear_top1"] for r in runs])
        stds = [r["proj_std"] for r in runs if not math.isnan(r["proj_std"])]
        std = f"{sum(stds) / len(stds):.4f}" if stds else "—"
        collapsed = f"{sum(bool(r['collapsed']) for r in runs)}/{len(runs)}" if row.pretrain else "—"
        lines.append(f"| {row.label} | {knn} | {linear} | {std} | {collapsed} | {row.paper} |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"
