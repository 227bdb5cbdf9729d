"""What data.order shards does to shuffling, against data.order global, on CIFAR-10's train split as a class
folder lists it (50,000 images, 5,000 per class, in class order), prepared in shards of ``--shard-images``
either in listing order (``byol prepare --no-shuffle``) or shuffled (the default).

    .venv/bin/python benchmarks/shard_order.py [--shard-images 2000] [--batch 256] [--epochs 3]

Per batch: the number of classes it holds (of 10), and the total-variation distance of its class histogram from
the split's (0: the proportions of the whole set; 0.9: one class). The orders are the package's own functions
(byol.data.loaders), so this measures exactly what training would read; no image is decoded.
"""

from __future__ import annotations

import argparse

import numpy as np

from byol.data.loaders import epoch_permutation, shard_permutation


def batch_stats(labels: np.ndarray, order: np.ndarray, batch: int) -> tuple[float, float]:
    """(mean classes per batch, mean total-variation distance from the set's class proportions)."""
    steps = len(order) // batch
    batches = labels[order[: steps * batch]].reshape(steps, batch)
    classes = int(labels.max()) + 1
    whole = np.bincount(labels, minlength=classes) / len(labels)
    counts = np.stack([np.bincount(b, minlength=classes) for b in batches]) / batch
    return float((counts > 0).sum(1).mean()), float(0.5 * np.abs(counts - whole).sum(1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shard-images", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    labels = np.repeat(np.arange(10), 5000)  # the listing of a class folder: class by class
    n = len(labels)
    placements = {
        "listing order (--no-shuffle)": np.arange(n),
        "shuffled (default)": np.random.default_rng(n).permutation(n),  # byol.prepare.plan's permutation
    }
    print(f"CIFAR-10 train, {n} images in shards of {args.shard_images}, batches of {args.batch}, "
          f"{args.epochs} epochs; classes per batch (of 10) / distance from the set's class mix")  # fmt: skip
    print(f"{'prepared':<30} {'order':<18} {'classes':>8} {'distance':>9}")
    for name, stored in placements.items():
        shard_of = np.empty(n, dtype=np.int64)
        shard_of[stored] = np.arange(n) // args.shard_images  # image stored[j] sits in shard j // shard_images
        rows = [("global", None)] + [(f"shards, window {w}", w) for w in (1, 2, 4, 8)]
        for label, window in rows:
            stats = []
            for epoch in range(args.epochs):
                if window is None:
                    order = epoch_permutation(n, 0, epoch).numpy()
                else:
                    order = shard_permutation(shard_of, 0, epoch, window).numpy()
                stats.append(batch_stats(labels, order, args.batch))
            classes, distance = np.mean(stats, axis=0)
            print(f"{name:<30} {label:<18} {classes:8.2f} {distance:9.3f}")


if __name__ == "__main__":
    main()
