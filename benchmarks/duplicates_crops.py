"""An experiment for `byol duplicates` (issue 53), not yet in the package: matching an image against crops of the
other, on the planted sets of benchmarks/curation.py.

    .venv/bin/python benchmarks/duplicates_crops.py --encoder RUN --work /tmp/cur [--set scoring --threshold T]

The encoder's features of a 90% crop move far from the full image's (recall of crops alone: 13% at the plain
threshold), so a pair is scored by the best of: full · full, and full · each of 49 crops of the other (90% of the
side at a 7x7 grid of positions, cut from the stored pixels and resized to the encoder's input with antialiasing;
cutting them from the input-size image instead blurs them: F1 0.82). Without ``--threshold`` the best-F1 threshold
of the set is printed; give the calibration set's to score the scoring set at it. Groups are connected components,
as `byol duplicates` makes them.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from curation import group_scores  # benchmarks/curation.py: scored as `byol duplicates` groups
from PIL import Image

from byol.export import load_pretrained

OFFSETS = np.linspace(0.0, 0.1, 7)  # of the side: every crop that keeps 90% of it, in steps of 1/60
SIDE = 0.9
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="the folder benchmarks/curation.py duplicates used")
    parser.add_argument("--set", default="calibration", choices=("calibration", "scoring"))
    parser.add_argument("--threshold", type=float)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pretrained = load_pretrained(args.encoder)
    encoder, size = pretrained.encoder.eval(), pretrained.config.data.image_size
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)  # the statistics the encoder was pretrained with
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    folder = args.work / f"dups-{args.set}"
    names = sorted(p.name for p in folder.glob("*.png"))
    pixels = np.stack([np.asarray(Image.open(folder / n).convert("RGB")) for n in names])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255

    def embed(x: torch.Tensor) -> np.ndarray:
        out = []
        with torch.no_grad():
            for start in range(0, len(x), 1000):
                batch = torch.nn.functional.interpolate(
                    x[start : start + 1000], size=(size, size), mode="bilinear", antialias=True, align_corners=False
                )
                out.append(encoder((batch - mean) / std))
        features = torch.cat(out).numpy()
        return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)

    full = embed(images)
    side = images.shape[-1]
    scores = full @ full.T
    best_of_crops = np.full_like(scores, -1.0)
    for oy, ox in itertools.product(OFFSETS, OFFSETS):
        top, left, length = round(oy * side), round(ox * side), round(SIDE * side)
        crops = embed(images[:, :, top : top + length, left : left + length])
        against = full @ crops.T
        best_of_crops = np.maximum(best_of_crops, np.maximum(against, against.T))
    pairs = json.loads((args.work / f"dups-{args.set}.json").read_text())
    where = {n: i for i, n in enumerate(names)}
    planted = np.array([[where[a], where[b]] for a, b in pairs])
    for name, s in (("plain cosine", scores), ("with crops", np.maximum(scores, best_of_crops))):
        np.fill_diagonal(s, -1.0)
        if args.threshold is not None:
            thresholds = [args.threshold]
        else:
            thresholds = np.quantile(s[np.triu_indices(len(s), 1)][::97], 1 - np.logspace(-6.5, -3, 40))
        rows = [(2 * p * r / max(p + r, 1e-9), t, p, r) for t, p, r, _ in group_scores(s, planted, thresholds)]
        f1, t, p, r = max(rows)
        print(f"{args.set} set, {name}: threshold {t:.4f}: precision {p:.3f}, recall {r:.3f} (F1 {f1:.3f})")


if __name__ == "__main__":
    main()
