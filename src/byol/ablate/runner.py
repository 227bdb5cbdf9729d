"""`byol ablate TABLE`: runs a table of :mod:`byol.ablate.tables` and writes it in the paper's layout.

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

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from byol import rundir
from byol.ablate.tables import SCALES, TABLES, Row, Table
from byol.checkpoint import list_checkpoints
from byol.config import Config, apply_overrides, flatten, validate
from byol.distributed import resolve_device
from byol.errors import ConfigError, DataError
from byol.evaluate.common import load_encoder_from_run, random_encoder
from byol.evaluate.frozen import MAX_EVAL_IMAGES, FrozenEvaluation
from byol.evaluate.knn import KnnConfig
from byol.files import atomic_write, write_json
from byol.loss import collapse_floor
from byol.train import pretrain, resume

RESULT_FILE = "result.json"
TABLE_FILE = "table.md"


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
    values = [r["proj_std"] for r in rundir.read_metrics(run_dir) if "proj_std" in r]
    return values[-1] if values else float("nan")


def _check_same_experiment(run_dir: Path, config: Config, row: Row, previous: Mapping[str, Any] | None) -> None:
    """Refuses to reuse or resume a directory that holds another experiment (a row redefined since it ran)."""
    stale = []
    if previous is not None and previous.get("overrides") != dict(row.overrides):
        stale.append(
            f"its result was made with overrides {previous.get('overrides')}, the row now has {dict(row.overrides)}"
        )
    if row.pretrain and (run_dir / rundir.CONFIG_FILE).is_file():
        saved = flatten(rundir.read_config(run_dir).to_dict())
        wanted = flatten(config.to_dict())
        differ = sorted(key for key in wanted if saved.get(key) != wanted[key])
        if differ:
            stale.append("its run differs in " + ", ".join(f"{k} ({saved.get(k)!r} → {wanted[k]!r})" for k in differ))
    if stale:
        raise ConfigError(
            f"{run_dir} holds another experiment than row {row.label!r}: {'; '.join(stale)}. "
            "Choose a new --out, or delete that directory to rerun the cell."
        )


def run_cell(base: Config, row: Row, *, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
    """One (row, seed): pretrain (or resume), evaluate with kNN and linear, save result.json.

    A finished cell is reused; one finished before the linear protocol existed gets it from its checkpoint.
    """
    result_path = run_dir / RESULT_FILE
    previous = rundir.read_json(result_path, missing=None)
    if previous is not None and not (isinstance(previous, dict) and isinstance(previous.get("overrides"), dict)):
        raise DataError(f"{result_path} is not a result of byol ablate; move it aside to rerun the cell")
    config = _resolve(base, {**row.overrides, "train.seed": str(seed)})
    _check_same_experiment(run_dir, config, row, previous)
    if previous is not None and "linear_top1" in previous:
        return previous
    frozen = FrozenEvaluation.from_config(config, resolve_device(config.train.device), max_train=MAX_EVAL_IMAGES)
    if row.pretrain:
        if previous is None and list_checkpoints(run_dir):
            resume(run_dir, progress=progress)
        elif previous is None:  # a new cell, or one killed before its first checkpoint: started over
            pretrain(config, run_dir, progress=progress, restart=True)
        encoder = load_encoder_from_run(run_dir).encoder
        proj_std = _final_proj_std(run_dir)
    else:
        encoder = random_encoder(config, frozen.train.channels)
        proj_std = float("nan")
    knn, linear = frozen.knn_and_linear(encoder)
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
    write_json(result_path, result)
    return result


def run_table(
    name: str,
    scale: str,
    *,
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
    with rundir.exclusive(_adopt_earlier(out_dir), "this ablation"):  # a folder of the user's is refused
        for row, seed in tqdm(cells, desc=f"ablation {name}", unit="run", disable=not progress):
            result = run_cell(base, row, seed=seed, run_dir=out_dir / row.slug / f"seed{seed}", progress=False)
            results.setdefault(row.label, []).append(result)
        path = out_dir / TABLE_FILE
        label = scale + "".join(f", {k} {v}" for k, v in overrides.items())
        text = format_table(table, results, scale=label, seeds=seeds)
        atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _adopt_earlier(out_dir: Path) -> Path:
    """Marks as the package's an ablation folder written before the marker existed: one that holds nothing but
    table.md and row folders of seed<N> folders."""

    def written_here(entry: Path) -> bool:
        if entry.is_dir():
            return all(cell.is_dir() and re.fullmatch(r"seed\d+", cell.name) for cell in entry.iterdir())
        return entry.name == TABLE_FILE

    if out_dir.is_dir() and not (out_dir / rundir.MARKER_FILE).exists():
        entries = list(out_dir.iterdir())
        if entries and all(written_here(entry) for entry in entries):
            (out_dir / rundir.MARKER_FILE).touch()
    return out_dir


def _mean_half_range(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f} ± {(max(values) - min(values)) / 2:.2f}"


def format_table(table: Table, results: Mapping[str, list[dict[str, Any]]], *, scale: str, seeds: list[int]) -> str:
    lines = [
        f"# {table.title}",
        "",
        f"Scale `{scale}`, seeds {seeds}, mean ± half-range over seeds. kNN: top-1, k = {KnnConfig.k}, "
        f"T = {KnnConfig.temperature}. Linear: "
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
