"""Segmentation transfer at CPU scale (issue 49, docs/transfer.md): encoders pretrained on the same images with
matched budgets, then `byol segment` on each. Prints what it measures; asserts nothing.

Two steps:

- ``pretrain``: three encoders of one architecture on CIFAR-10's 50,000 training images for the same epochs:
  ``byol`` (``byol pretrain --preset cifar10-resnet18``), ``simclr`` (the same preset with the paper's SimCLR
  row of Table 5b: no predictor, no target network, β = 1) and ``supervised`` (the same encoder and a linear
  layer trained on the labels, ``peers_cifar.supervised``), written to ``OUT/{byol,simclr}`` (run directories)
  and ``OUT/supervised.safetensors`` (an export).
- ``table``: reads the JSON results `byol segment` wrote and prints the Markdown table of docs/transfer.md.

    .venv/bin/python benchmarks/segment_transfer.py pretrain --data-dir /tmp/c10 --out /tmp/seg --epochs 5
    .venv/bin/python benchmarks/segment_transfer.py table /tmp/seg/results/*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from peers_cifar import supervised

from byol.data import load_split
from byol.evaluate.common import Pretrained
from byol.export import write_export
from byol.length import configure
from byol.train import pretrain

PRESET = "cifar10-resnet18"
SIMCLR = {"model.predictor": "none", "target.network": "online", "loss.beta": "1"}  # Table 5b's SimCLR row


def pretrain_all(args: argparse.Namespace) -> None:
    config, _ = configure(PRESET, _overrides(args))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, extra in (("byol", {}), ("simclr", SIMCLR)):
        if (args.out / name).exists():
            print(f"{args.out / name} exists; kept", file=sys.stderr)
            continue
        overrides = {**_overrides(args), **extra}
        run_config, _ = configure(PRESET, overrides)
        start = time.perf_counter()
        pretrain(run_config, args.out / name, progress=args.progress)
        print(json.dumps({"encoder": name, "train_seconds": round(time.perf_counter() - start, 1)}), flush=True)
    out = args.out / "supervised.safetensors"
    if not out.exists():
        train = load_split("cifar10", "train", args.data_dir, args.size)
        encoder, seconds, _ = supervised(config, train, args.progress)
        source = f"supervised on cifar10 train labels, {args.epochs:g} epochs (benchmarks/segment_transfer.py)"
        write_export(Pretrained(encoder.cpu().eval(), config, 3, source), out)
        print(json.dumps({"encoder": "supervised", "train_seconds": round(seconds, 1)}), flush=True)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    values = {
        "train.epochs": args.epochs, "train.seed": args.seed, "model.depth": args.depth, "model.width": args.width,
        "data.image_size": args.size, "data.dataset": "cifar10", "data.data_dir": args.data_dir,
        "train.precision": "fp32", "train.tensorboard": False, "train.knn_every": 0, "train.device": "cpu",
    }  # fmt: skip
    return {key: str(value) for key, value in values.items()}


def table(paths: list[Path]) -> str:
    """One row per (encoder, mask fraction, frozen): mean mIoU over the seeds (± their standard deviation), each
    seed's, pixel accuracy and the lr chosen; then each class's IoU, the mean over the seeds."""
    rows: dict[tuple[str, float, bool], list[dict[str, Any]]] = {}
    for path in paths:
        result = json.loads(path.read_text())
        label = path.stem.split("_masks")[0]  # the file names of docs/transfer.md's commands: ENCODER_masksF.json
        key = (label, result["settings"]["mask_fraction"], result["settings"]["frozen"])
        rows.setdefault(key, []).append(result)
    lines = [
        "| encoder | masks | encoder trained | mIoU (mean of seeds) | per seed | pixel acc. | lr chosen |",
        "| --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for (label, fraction, frozen), results in sorted(rows.items(), key=lambda item: (item[0][1], item[0][2])):
        for result in results:
            seeds = ", ".join(f"{run['miou']:.2f}" for run in result["seeds"])
            lines.append(
                f"| {label} | {100 * fraction:g}% | {'frozen' if frozen else 'fine-tuned'} | {result['miou']:.2f} "
                f"(± {result['miou_std']:.2f}) | {seeds} | {result['pixel_acc']:.2f} | {result['chosen_lr']:g} |"
            )
    classes = next(iter(rows.values()))[0]["classes"]
    lines += ["", "| encoder | masks | encoder trained | " + " | ".join(classes) + " |", "| --- | ---: | --- |"
              + " ---: |" * len(classes)]  # fmt: skip
    for (label, fraction, frozen), results in sorted(rows.items(), key=lambda item: (item[0][1], item[0][2])):
        for result in results:
            iou = result["per_class_iou"]
            cells = " | ".join("–" if iou[name] is None else f"{iou[name]:.1f}" for name in classes)
            lines.append(f"| {label} | {100 * fraction:g}% | {'frozen' if frozen else 'fine-tuned'} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pretrain", help="the three encoders, matched budgets")
    p.add_argument("--data-dir", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--size", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    t = sub.add_parser("table", help="the Markdown table of `byol segment` results")
    t.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.step == "pretrain":
        pretrain_all(args)
    else:
        print(table(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
