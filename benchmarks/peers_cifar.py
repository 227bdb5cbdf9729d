"""CIFAR-10 on a CPU, side by side (issue 27): byol's preset, lightly's BYOL recipe and a supervised ceiling on
the same backbone, data, epochs and evaluation. Prints one JSON line per run; asserts nothing.

Recipes (``--recipe``):

- ``byol``: what a user types, ``byol pretrain --preset P --epochs E`` plus a network size (``--depth``,
  ``--width``, ``--size``): the config is built by the CLI's own function, so the length rule chooses warm-up,
  τ_base and the learning rate, and the run is ``byol.train.pretrain``.
- ``lightly``: lightly's CIFAR-10 benchmark loop, run from lightly's own code: ``BYOLProjectionHead(d, 4096,
  256)``, ``BYOLPredictionHead(256, 4096, 256)``, ``NegativeCosineSimilarity`` as 0.5·(L(p0, z1) + L(p1, z0)),
  ``update_momentum`` with m = 0.99 before each step, SGD (lr 0.06·B/128, momentum 0.9, weight decay 5e-4 on
  every parameter) and ``CosineAnnealingLR`` over the epochs, stepped once an epoch. Same encoder as byol
  (``byol.networks.ResNet``), same batches, and byol's views of the same preset (``TwoViews``).
- ``lightly-views``: the same loop fed by lightly's own views, as its benchmark makes them:
  ``SimCLRTransform(input_size, cj_strength=0.5, gaussian_blur=0.0)`` on PIL images in DataLoader workers.
- ``supervised``: the ceiling. The same encoder and a linear layer trained on all labels for the same epochs
  (cross-entropy, SGD Nesterov, momentum 0.9, lr 0.1·B/128 with a cosine decay, weight decay 5e-4; random
  crop (area ≥ 25%) and flip), its test accuracy as ``supervised_top1``.

Evaluation, the same for every recipe: the final online encoder (lightly: its backbone) frozen, kNN (k = 200,
T = 0.1) of the 10,000 test images against the 50,000 training images, and the linear protocol on cached
features (``byol linear --mode cached --epochs 10 --standardize``: the paper's lr grid, a 10k validation split).
``images_per_s``: training images / training seconds, end to end (batches, views, steps; no evaluation).

lightly is not a dependency of byol. Install it and torchvision beside the repository, in a git-ignored folder
(see DEVELOPERS.md), and put that folder on PYTHONPATH for the lightly recipes:

    .venv/bin/python benchmarks/peers_cifar.py --recipe byol --epochs 3 --seed 0 --data-dir DATA
    PYTHONPATH=.peers .venv/bin/python benchmarks/peers_cifar.py --recipe lightly --epochs 3 --seed 0 --data-dir DATA
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from byol.augment.pipeline import LINEAR_EVAL_VIEW, TwoViews, ViewPipeline
from byol.config import Config
from byol.data import Dataset, TrainBatches, load_split
from byol.evaluate.frozen import FrozenEvaluation
from byol.length import configure
from byol.networks import build_encoder
from byol.train import pretrain

RECIPES = ("byol", "lightly", "lightly-views", "supervised")
PRESET = "cifar10-resnet18"  # every recipe takes its network and views from a byol preset


def byol_config(args: argparse.Namespace) -> Config:
    """The config of ``byol pretrain --preset P --epochs E --model.depth D --model.width W --data.image_size S``."""
    overrides = {
        "train.epochs": args.epochs, "train.seed": args.seed, "model.depth": args.depth, "model.width": args.width,
        "data.image_size": args.size, "data.dataset": "cifar10", "data.data_dir": args.data_dir,
        "train.precision": "fp32", "train.memory_format": "contiguous", "train.tensorboard": False,
        "train.knn_every": 0, "train.device": args.device,
    }  # fmt: skip
    config, note = configure(args.preset, {key: str(value) for key, value in overrides.items()})
    print(note or "the preset's own length: nothing moved", file=sys.stderr)
    return config


def run_byol(config: Config, train: Dataset, progress: bool) -> tuple[nn.Module, float]:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        state, _ = pretrain(config, Path(folder) / "run", progress=progress)
        return state.online.encoder, time.perf_counter() - start


def lightly_loop(config: Config, steps_per_epoch: int, views: Any, progress: bool) -> tuple[nn.Module, float]:
    """lightly's BYOL benchmark loop on byol's encoder; ``views(epoch)`` yields (x0, x1) batches."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    torch.manual_seed(config.train.seed)
    device = torch.device(config.train.device)
    backbone = build_encoder(config.model, in_channels=3).to(device)
    projector = BYOLProjectionHead(backbone.out_dim, 4096, 256).to(device)
    predictor = BYOLPredictionHead(256, 4096, 256).to(device)
    backbone_momentum, projector_momentum = copy.deepcopy(backbone), copy.deepcopy(projector)
    deactivate_requires_grad(backbone_momentum)
    deactivate_requires_grad(projector_momentum)
    criterion = NegativeCosineSimilarity()
    params = [*backbone.parameters(), *projector.parameters(), *predictor.parameters()]
    batch_size = config.optim.batch_size
    optimizer = torch.optim.SGD(params, lr=0.06 * batch_size / 128, momentum=0.9, weight_decay=5e-4)
    epochs = math.ceil(config.train.epochs)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)

    def online(x: Tensor) -> Tensor:
        return predictor(projector(backbone(x)))

    def target(x: Tensor) -> Tensor:
        with torch.no_grad():
            return projector_momentum(backbone_momentum(x)).detach()

    total, step = max(1, round(config.train.epochs * steps_per_epoch)), 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc="lightly", disable=not progress)
    for epoch in range(epochs):
        for x0, x1 in views(epoch):
            if step == total:
                break
            step += 1
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
            update_momentum(backbone, backbone_momentum, m=0.99)
            update_momentum(projector, projector_momentum, m=0.99)
            loss = 0.5 * (criterion(online(x0), target(x1)) + criterion(online(x1), target(x0)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bar.update()
        scheduler.step()
    bar.close()
    return backbone, time.perf_counter() - start


def byol_views(config: Config, train: Dataset) -> tuple[Any, int]:
    """(x0, x1) of every batch of an epoch: byol's batches and byol's views of the preset."""
    device = torch.device(config.train.device)
    batches = TrainBatches(train, batch_size=config.optim.batch_size, seed=config.train.seed, device=device)
    a = config.augment
    views = TwoViews(a.preset, config.data.image_size, train.mean, train.std, a.crop_min_scale)
    generator = torch.Generator(device).manual_seed(config.train.seed)

    def epoch(number: int) -> Any:
        for batch in batches.epoch(number):
            yield views(batch.images, generator)

    return epoch, batches.steps_per_epoch


def lightly_views(config: Config, train: Dataset) -> tuple[Any, int]:
    """(x0, x1) of every batch of an epoch as lightly's benchmark makes them: PIL views in DataLoader workers."""
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    transform = SimCLRTransform(input_size=config.data.image_size, cj_strength=0.5, gaussian_blur=0.0)
    images = train.images.permute(0, 2, 3, 1).numpy()

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
            x0, x1 = transform(Image.fromarray(images[index]))
            return x0, x1

    generator = torch.Generator().manual_seed(config.train.seed)
    loader = torch.utils.data.DataLoader(
        Views(), batch_size=config.optim.batch_size, shuffle=True, drop_last=True, num_workers=2,
        generator=generator, persistent_workers=True,
    )  # fmt: skip
    return (lambda epoch: iter(loader)), len(loader)


def supervised(config: Config, train: Dataset, progress: bool) -> tuple[nn.Module, float, nn.Linear]:
    """The ceiling: the encoder and a linear layer trained on every label for the run's epochs."""
    torch.manual_seed(config.train.seed)
    device = torch.device(config.train.device)
    encoder = build_encoder(config.model, in_channels=3).to(device)
    head = nn.Linear(encoder.out_dim, len(train.classes)).to(device)
    batch_size = config.optim.batch_size
    batches = TrainBatches(train, batch_size=batch_size, seed=config.train.seed, device=device)
    view = ViewPipeline(
        dataclasses.replace(LINEAR_EVAL_VIEW, crop_scale=(0.25, 1.0)), config.data.image_size, train.mean, train.std
    )
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1 * batch_size / 128, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = max(1, round(config.train.epochs * batches.steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    generator = torch.Generator(device).manual_seed(config.train.seed)
    start, step = time.perf_counter(), 0
    bar = tqdm(total=total, desc="supervised", disable=not progress)
    for epoch in range(math.ceil(config.train.epochs)):
        for batch in batches.epoch(epoch):
            if step == total:
                break
            loss = nn.functional.cross_entropy(head(encoder(view(batch.images, generator))), batch.labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update()
    bar.close()
    return encoder, time.perf_counter() - start, head


def test_accuracy(encoder: nn.Module, head: nn.Linear, evaluation: FrozenEvaluation) -> float:
    """Top-1 (%) of the supervised network on the test images."""
    encoder.eval()
    _, _, features, labels = evaluation.features(encoder)
    with torch.no_grad():
        return float((head(features).argmax(1) == labels).float().mean() * 100)


def summarize(results: list[dict[str, Any]]) -> str:
    """One row per setting and recipe (and preset, where not the default): mean and range over seeds of kNN and
    linear, the supervised top-1, and each recipe's share of the ceiling (kNN / supervised_top1 at the same
    setting)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in results:
        recipe = r["recipe"] if r["preset"] == PRESET else f"{r['recipe']} (--preset {r['preset']})"
        groups.setdefault((r["depth"], r["width"], r["size"], r["epochs"], recipe), []).append(r)

    def stat(rows: list[dict[str, Any]], key: str) -> str:
        values = [r[key] for r in rows if key in r]
        if not values:
            return "–"
        mean = sum(values) / len(values)
        return f"{mean:.2f}" + (f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else "")

    lines = [
        "| setting | recipe | seeds | kNN top-1 | linear top-1 | supervised top-1 | kNN / ceiling | images/s |",
        "| --- | --- | ---: | --- | --- | --- | ---: | ---: |",
    ]
    for (depth, width, size, epochs, recipe), rows in sorted(groups.items(), key=lambda item: item[0][:4]):
        ceiling = groups.get((depth, width, size, epochs, "supervised"), [])
        top = [r["supervised_top1"] for r in ceiling]
        knn = sum(r["knn_top1"] for r in rows) / len(rows)
        share = f"{100 * knn / (sum(top) / len(top)):.0f}%" if top and recipe != "supervised" else "–"
        speed = sum(r["images_per_s"] for r in rows) / len(rows)
        lines.append(
            f"| ResNet-{depth} w{width:g}, {size} px, {epochs:g} ep | {recipe} | "
            f"{','.join(str(r['seed']) for r in rows)} | {stat(rows, 'knn_top1')} | {stat(rows, 'linear_top1')} | "
            f"{stat(rows, 'supervised_top1')} | {share} | {speed:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=RECIPES)
    parser.add_argument("--preset", default=PRESET, help="byol's preset (all recipes take its network and views)")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--size", type=int, default=20, help="view and evaluation size in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (fp32 on either)")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--summarize", nargs="+", type=Path, help="files of JSON lines: print the Markdown table")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize([json.loads(line) for path in args.summarize for line in path.read_text().splitlines()]))
        return 0
    if args.recipe is None or args.epochs is None or args.data_dir is None:
        parser.error("--recipe, --epochs and --data-dir are required for a run")

    config = byol_config(args)
    train = load_split("cifar10", "train", args.data_dir, args.size)
    result: dict[str, Any] = {"recipe": args.recipe, "preset": args.preset, "epochs": args.epochs,
                              "depth": args.depth, "width": args.width, "size": args.size, "seed": args.seed,
                              "batch_size": config.optim.batch_size}  # fmt: skip
    head = None
    if args.recipe == "byol":
        encoder, seconds = run_byol(config, train, args.progress)
        result["config"] = {
            "optim": dataclasses.asdict(config.optim), "target": dataclasses.asdict(config.target),
            "augment": dataclasses.asdict(config.augment),
        }  # fmt: skip
    elif args.recipe == "supervised":
        encoder, seconds, head = supervised(config, train, args.progress)
    else:
        make = byol_views if args.recipe == "lightly" else lightly_views
        views, steps_per_epoch = make(config, train)
        encoder, seconds = lightly_loop(config, steps_per_epoch, views, args.progress)
    evaluation = FrozenEvaluation.from_config(config, torch.device(config.train.device), train=train)
    encoder.eval()
    knn, linear = evaluation.knn_and_linear(encoder)
    images = len(train) // config.optim.batch_size * config.optim.batch_size * args.epochs
    result.update(
        knn_top1=round(knn["top1"], 2), linear_top1=round(linear["top1"], 2), train_seconds=round(seconds, 1),
        images_per_s=round(images / seconds, 1), cpu=torch.backends.cpu.get_cpu_capability(),
    )  # fmt: skip
    if head is not None:
        result["supervised_top1"] = round(test_accuracy(encoder, head, evaluation), 2)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
