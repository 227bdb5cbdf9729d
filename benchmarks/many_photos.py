"""A large photo folder for the prepared-shards runbook (issue 35): N distinct JPEGs from the real photos.

    PYTHONPATH=.peers .venv/bin/python benchmarks/many_photos.py --out /tmp/many --count 100000

Each file is a random crop (50-100% of the area, aspect 3:4 to 3:2) of one of the source photos that
benchmarks/photos.py uses (scikit-learn's and scikit-image's), resized to a long side drawn from 300-500 px and
saved at a JPEG quality drawn from 85-95: real pixels, no two files alike, ImageNet-sized. They go 1,000 to a
folder (``/tmp/many/000/…``), as a camera roll synced by day would be: a nested, unlabelled folder. Written by
one process per core; files already there are kept, so an interrupted run continues. With `--labels auto`
(the default) the 100 folders read as 100 classes (the layout rule of docs/data.md); `--labels none` reads them as
one unlabelled camera roll.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from photos import _crop, source_photos
from PIL import Image

PER_FOLDER = 1000


def write_folder(args: tuple[Path, int, int]) -> int:
    out, folder, count = args
    rng = np.random.default_rng(folder)
    photos = source_photos()
    target = out / f"{folder:03d}"
    target.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = target / f"IMG_{folder * PER_FOLDER + i:06d}.jpg"
        if path.exists():
            continue
        crop = _crop(photos[rng.integers(len(photos))], rng, 0.5, float(rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2])))
        scale = int(rng.integers(300, 501)) / max(crop.size)
        size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
        crop.resize(size, Image.Resampling.BICUBIC).save(path, quality=int(rng.integers(85, 96)))
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=100_000)
    args = parser.parse_args()
    jobs = [(args.out, f, min(PER_FOLDER, args.count - f * PER_FOLDER)) for f in range(-(-args.count // PER_FOLDER))]
    with ProcessPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        written = sum(pool.map(write_folder, jobs))
    print(f"{written} files in {len(jobs)} folders under {args.out}")


if __name__ == "__main__":
    main()
