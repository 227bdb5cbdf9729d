"""`byol report RUN_DIR`: plots of a run's training curves and a table of its evaluations, as Markdown.

Reads ``metrics.jsonl`` (per-step records and kNN records) and ``eval/*.json``; writes ``report.md`` and
PNG plots into ``RUN_DIR/report/``. The collapse plot shows the healthy level 1/√d and the warning floor
0.1/√d of the projection std.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from byol import rundir
from byol.config import Config
from byol.errors import DataError
from byol.evaluate.common import EVAL_DIR
from byol.loss import collapse_floor
from byol.rundir import METRICS_FILE

REPORT_DIR = "report"


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training-step records, kNN records) of a run."""
    if not (run_dir / METRICS_FILE).is_file():
        raise DataError(f"{run_dir} holds no {METRICS_FILE}; is it a byol run directory?")
    records = rundir.read_metrics(run_dir)
    return [r for r in records if "byol_loss" in r], [r for r in records if "knn_top1" in r]


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / EVAL_DIR).glob("*.json"))]


def _plot(path: Path, title: str, ylabel: str, series: list[tuple[str, list[float], list[float]]],
          hlines: tuple[tuple[str, float], ...] = (), log_y: bool = False) -> None:  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, linewidth=1.5, marker="o" if len(xs) < 30 else None)
    for label, y in hlines:
        ax.axhline(y, linestyle="--", linewidth=1, color="grey")
        ax.annotate(
            label, (ax.get_xlim()[0], y), textcoords="offset points", xytext=(4, 3), fontsize=8, color="dimgray"
        )
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(run_dir: str | Path) -> Path:
    """Writes RUN_DIR/report/report.md and its plots; returns the Markdown file's path."""
    run_dir = Path(run_dir)
    steps, knn = read_metrics(run_dir)
    if not steps:
        raise DataError(f"{run_dir / METRICS_FILE} holds no training records yet")
    config = Config.from_dict(rundir.read_config(run_dir) or {})  # written before the first metrics record
    d = config.model.projection_dim
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    x = [r["step"] for r in steps]

    _plot(out / "loss.png", "BYOL loss (sum of both view orders, range 0–8)", "loss",
          [("BYOL loss", x, [r["byol_loss"] for r in steps])])  # fmt: skip
    _plot(out / "tau.png", "target decay rate τ (cosine schedule to 1)", "τ", [("τ", x, [r["tau"] for r in steps])])
    _plot(out / "learning_rate.png", "learning rate (warm-up, then cosine)", "learning rate",
          [("lr", x, [r["lr"] for r in steps])])  # fmt: skip
    _plot(out / "collapse.png", "collapse monitor: std of ℓ2-normalised projections", "std per dimension",
          [("projection std", x, [r["proj_std"] for r in steps])],
          hlines=(("healthy 1/√d", 1 / math.sqrt(d)), ("warning 0.1/√d", collapse_floor(d))))  # fmt: skip
    plots = ["loss.png", "tau.png", "learning_rate.png", "collapse.png"]
    accuracy = []
    if knn:
        accuracy.append(("kNN top-1 (test)", [r["step"] for r in knn], [r["knn_top1"] for r in knn]))
    if any("probe_acc" in r for r in steps):
        probe = [r for r in steps if "probe_acc" in r]
        accuracy.append(
            ("online probe (train batches)", [r["step"] for r in probe], [100 * r["probe_acc"] for r in probe])
        )
    if accuracy:
        _plot(out / "accuracy.png", "accuracy during pretraining", "accuracy (%)", accuracy)
        plots.append("accuracy.png")

    last = steps[-1]
    lines = [
        f"# BYOL run report: `{run_dir}`",
        "",
        f"Dataset **{config.data.dataset}**, ResNet-{config.model.depth} width {config.model.width}, "
        f"{last['step']} optimizer steps "
        f"({last['epoch']:.2f} epochs). Final BYOL loss {last['byol_loss']:.4f}, τ {last['tau']:.5f}, "
        f"projection std {last['proj_std']:.4f} (healthy ≈ {1 / math.sqrt(d):.4f}, "
        f"collapse < {collapse_floor(d):.4f}).",
        "",
        "## Evaluations",
        "",
    ]
    evaluations = read_evaluations(run_dir)
    if evaluations:
        lines += [
            "| protocol | dataset | encoder | top-1 | top-5 | mean per-class |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for e in evaluations:
            lines.append(
                f"| {e['protocol']} | {e['dataset']} | {e['init']} | {e['top1']:.2f} | {e['top5']:.2f} "
                f"| {e['mean_per_class']:.2f} |"
            )
    else:
        lines.append("No evaluation yet (run `byol knn`, `byol linear` or `byol finetune` on this run).")
    lines += ["", "## Training curves", ""] + [f"![{p}]({p})" for p in plots]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
