"""Training-step throughput of byol and its peers on one GPU, side by side (issue 16). Prints, asserts nothing.

Each gets the same encoder (torchvision's ResNet; for 32 px the cifar stem: 3x3/1 convolution, no max-pool),
heads 4096 → 256, bf16 autocast, channels_last, momentum SGD, and a batch of images already in GPU memory:

- byol, full step: our views (T, T') made on the GPU during the previous step's backward, two online passes,
  two target passes, LARS, EMA (``byol.bench.bench_step``); and the bare network work inside it.
- lightly: the BYOL loop of lightly's documentation (its heads, ``update_momentum``,
  ``NegativeCosineSimilarity``) on two pre-made views: lightly makes views with PIL in DataLoader workers,
  so this is its network step alone, the most it can reach.
- byol-pytorch (lucidrains): ``BYOL(net, image_size)``, whose forward makes its views on the GPU with
  torchvision transforms (one draw per batch), simplicial embeddings off (plain BYOL).

The peers are not dependencies of byol: install them on the GPU machine from carried wheels, e.g.
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` and ``PYTHONPATH=src:/tmp/site``.

    python3 benchmarks/peers_step.py --model resnet18 --size 32 --batch 512
    python3 benchmarks/peers_step.py --model resnet50 --size 224 --batch 256
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn


def encoder(model: str, size: int) -> nn.Module:
    net = getattr(torchvision.models, model)()
    if size <= 64:  # the cifar stem, as byol's cifar10-resnet18 preset
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def images_per_s(step: Callable[[], object], batch: int, repeats: int) -> float:
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def lightly_step(model: str, size: int, batch: int) -> Callable[[], object]:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum

    backbone = encoder(model, size)
    dim = 512 if model in ("resnet18", "resnet34") else 2048
    heads = {"projector": BYOLProjectionHead(dim, 4096, 256), "predictor": BYOLPredictionHead(256, 4096, 256)}
    online = nn.ModuleDict({"backbone": backbone, **heads}).cuda().to(memory_format=torch.channels_last)
    target = copy.deepcopy(online)
    deactivate_requires_grad(target)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD(online.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    x0, x1 = (torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last) for _ in range(2))

    def forward(net: nn.ModuleDict, x: torch.Tensor, predict: bool) -> torch.Tensor:
        z = net["projector"](net["backbone"](x).flatten(1))
        return net["predictor"](z) if predict else z

    def step() -> None:
        update_momentum(online, target, m=0.99)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            p0, p1 = forward(online, x0, True), forward(online, x1, True)
            with torch.no_grad():
                z0, z1 = forward(target, x0, False), forward(target, x1, False)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def byol_pytorch_step(model: str, size: int, batch: int) -> Callable[[], object]:
    from byol_pytorch import BYOL

    net = encoder(model, size).cuda()
    learner = BYOL(net, image_size=size, hidden_layer="avgpool", use_simplicial_embeddings=False)
    learner = learner.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)
    images = torch.rand(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = learner(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        learner.update_moving_average()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True

    from byol.bench import bench_step
    from byol.config import apply_overrides, get_preset

    preset = "cifar10-resnet18" if args.size <= 64 else "imagenet-300ep"
    config = apply_overrides(get_preset(preset), {
        "model.depth": args.model.removeprefix("resnet"), "data.image_size": str(args.size),
        "optim.batch_size": str(args.batch), "train.device": "cuda",
    })  # fmt: skip
    ours = bench_step(config, args.repeats)
    rows = [
        ("byol: full step (views included)", args.batch / ours.step_s),
        ("byol: bare network work", args.batch / ours.network_s),
    ]
    for name, make in (("lightly: network step on pre-made views", lightly_step),
                       ("byol-pytorch: step with its GPU views", byol_pytorch_step)):  # fmt: skip
        try:
            rows.append((name, images_per_s(make(args.model, args.size, args.batch), args.batch, args.repeats)))
        except ImportError as e:
            print(f"{name}: not installed ({e})")
        torch.cuda.empty_cache()
    print(f"{args.model}, {args.size} px, batch {args.batch}, {torch.cuda.get_device_name()}, bf16 + channels_last:")
    for name, rate in rows:
        print(f"  {name:<42} {rate:9.0f} images/s")
    print(f"  byol full step / bare network: {ours.network_s / ours.step_s:.3f}")


if __name__ == "__main__":
    main()
