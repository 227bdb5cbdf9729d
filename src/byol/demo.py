"""`byol demo`: BYOL on Fashion-MNIST on a laptop CPU, evaluated against a random-init encoder.

1. Pretrain with the ``cpu-demo`` preset (see its docstring for the choices and why).
2. Evaluate the online encoder and a randomly initialised encoder of the same architecture and seed with
   exactly the same protocols and budgets: kNN (k = 200, T = 0.1) and linear evaluation on cached features
   (learning rate chosen on a validation split held out from the training set).
3. Write the run's report (table + plots) and print the final table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from byol.config import Config, cpu_demo, validate
from byol.data import TEST_SPLIT, load_dataset
from byol.evaluate.common import load_encoder_from_run, write_result
from byol.evaluate.runner import knn_and_cached_linear
from byol.precision import Precision
from byol.report import write_report
from byol.train import pretrain, resolve_device


def default_run_dir() -> Path:
    return Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


def run_demo(run_dir: Path, config: Config | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrains, evaluates BYOL and random init identically, writes the report; returns the summary."""
    config = validate(config or cpu_demo())
    start = time.perf_counter()
    pretrain(config, run_dir, progress=progress)
    pretrain_seconds = time.perf_counter() - start

    data = config.data
    train = load_dataset(data.dataset, "train", data.data_dir, data.image_size)
    test = load_dataset(data.dataset, TEST_SPLIT.get(data.dataset, "test"), data.data_dir, data.image_size)
    device = resolve_device(config.train.device)
    precision = Precision.create(config.train.precision, config.train.memory_format, device)
    rows = []
    for init in ("pretrained", "random"):
        encoder = load_encoder_from_run(run_dir, init).encoder
        knn, linear = knn_and_cached_linear(
            encoder, train, test, data.image_size, device, precision, progress, desc=f"{init} "
        )
        for tag, result in (("knn", knn), ("linear-cached-standardized", linear)):
            result.update(dataset=data.dataset, init=init, encoder="online" if init == "pretrained" else "random init")
            write_result(run_dir, f"{tag}_{data.dataset}_{init}", result)
        rows.append({"init": init, "knn_top1": knn["top1"], "linear_top1": linear["top1"]})

    report = write_report(run_dir)
    summary = {
        "run_dir": str(run_dir),
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": time.perf_counter() - start,
        "rows": rows,
        "knn_gain": rows[0]["knn_top1"] - rows[1]["knn_top1"],
        "linear_gain": rows[0]["linear_top1"] - rows[1]["linear_top1"],
        "report": str(report),
    }
    (run_dir / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict[str, Any]) -> str:
    byol, random = summary["rows"]
    lines = [
        f"{'encoder (same architecture)':<30}{'kNN top-1':>12}{'linear top-1':>15}",
        f"{'BYOL (online encoder)':<30}{byol['knn_top1']:>11.2f}%{byol['linear_top1']:>14.2f}%",
        f"{'random init':<30}{random['knn_top1']:>11.2f}%{random['linear_top1']:>14.2f}%",
        f"{'BYOL gain (points)':<30}{summary['knn_gain']:>+12.2f}{summary['linear_gain']:>+15.2f}",
    ]
    return "\n".join(lines)
