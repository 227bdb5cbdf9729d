"""The demo recipe at a fixed number of steps: pretrain `cpu-demo` with overrides, then the demo's protocols.

    python benchmarks/demo_recipe.py NAME '{"train.seed": 1, "train.max_steps": 780}' pretrained,random

Prints one JSON line: the overrides, the pretraining seconds, and (kNN top-1, linear top-1) for each encoder
asked for (``pretrained``: the run's online encoder; ``random``: the same architecture and seed untrained).
Runs go to runs/recipe/NAME. fp32 + channels_last, the pair the demo picks on an AVX2 CPU. A benchmark: it
prints numbers and asserts nothing (docs/benchmarks.md, "The demo recipe on an AVX2 CPU").
"""

import json
import sys
import time
from pathlib import Path

import torch

from byol.config import apply_overrides, get_preset, validate
from byol.evaluate.common import load_encoder_from_run
from byol.evaluate.frozen import FrozenEvaluation
from byol.train import pretrain


def main(name: str, overrides: dict[str, object], inits: list[str]) -> None:
    base = {"train.precision": "fp32", "train.memory_format": "channels_last"}
    config = validate(apply_overrides(get_preset("cpu-demo"), {**base, **overrides}))
    run = Path("runs/recipe") / name
    start = time.perf_counter()
    pretrain(config, run, progress=False)
    seconds = time.perf_counter() - start
    frozen = FrozenEvaluation.from_config(config, torch.device("cpu"))
    results = {}
    for init in inits:
        knn, linear = frozen.knn_and_linear(load_encoder_from_run(run, init).encoder)
        results[init] = (round(knn["top1"], 2), round(linear["top1"], 2))
    print(json.dumps({"name": name, "overrides": overrides, "pretrain_s": round(seconds), **results}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print("usage: python benchmarks/demo_recipe.py NAME OVERRIDES_JSON [pretrained,random]", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",") if len(sys.argv) > 3 else ["pretrained"])
