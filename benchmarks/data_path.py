"""The image-folder data path per core (issue 34): what a DataLoader worker does for a photo, byol beside lightly.

    make peers && .venv/bin/python benchmarks/photos.py --out /tmp/photos
    PYTHONPATH=.peers .venv/bin/python benchmarks/data_path.py --photos /tmp/photos [--images 120]

One process, one thread (``torch.set_num_threads(1)``; Pillow decodes on the calling thread), the same files
for every row, best of ``--repeats`` passes after one warm-up image. Per photo set and view size it prints
images/s of:

- ``byol``: the worker's work today, decode at the size the views need (``byol.data.decode``) + both views'
  crops, EXIF orientation applied;
- ``byol, full decode``: the same crops from a decode of the whole file (the path before issue 34);
- ``lightly``: lightly's ``BYOLTransform`` on the PIL image (open + RGB as torchvision's loader does, then both
  views: crop, flip, colour jitter, grey, blur, solarise, to tensor, normalise): everything, on the worker;
- ``decode``, ``decode + draft``: Pillow's decode alone, in full and with ``draft`` to the view size.

A second table gives how far byol's crops are from the same boxes cut from a full decode (mean absolute
difference per pixel, of 255 levels) and how many images each JPEG decode scale served.

byol's worker leaves flip, colour, grey, blur and solarise to batched work on the training device; the last
column, ``CPU cost``, adds that work's per-image time on this CPU (``byol.augment.TwoViews`` on a batch of 64
crops, one thread) so that byol's rows compare with lightly's whole pipeline when the device is the CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from byol.augment import TwoViews, get_views
from byol.data import ImageFolder, load_dataset
from byol.data.decode import FolderCrops, decode_scale, oriented_size


def best_rate(work: Callable[[int], object], count: int, repeats: int) -> float:
    """Images/s of ``work(i)`` over i in [0, count), best of ``repeats`` passes, after one warm-up call."""
    work(0)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            work(i)
        best = min(best, time.perf_counter() - start)
    return count / best


def batched_views_seconds(preset: str, size: int, repeats: int) -> float:
    """Seconds per image of byol's batched view work (flip, colour, grey, blur, solarise) for both views."""
    views = TwoViews(preset, size, mean=[0.5] * 3, std=[0.25] * 3)
    crops = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)

    def both(_: int) -> None:
        views.t(crops, generator, crop=False)
        views.t_prime(crops, generator, crop=False)

    return 1 / (64 * best_rate(both, 1, repeats))  # one call handles 64 images


def measure(folder: ImageFolder, count: int, size: int, repeats: int, lightly: Callable) -> dict[str, float]:
    """Images/s of each row's work on the first ``count`` files of ``folder`` at view size ``size``."""
    paths = folder.paths[:count]
    views = get_views("byol")
    ours = FolderCrops(folder, size=size, views=views)
    full = FolderCrops(folder, size=size, views=views, reduced=False)

    def lightly_item(i: int) -> object:
        with open(paths[i], "rb") as f:
            return lightly(Image.open(f).convert("RGB"))

    def decode(i: int) -> object:
        with Image.open(paths[i]) as image:
            return image.convert("RGB")

    def draft(i: int) -> object:
        with Image.open(paths[i]) as image:
            image.draft("RGB", (size, size))
            return image.convert("RGB")

    work = {"byol": ours.__getitem__, "full": full.__getitem__, "lightly": lightly_item, "decode": decode,
            "draft": draft}  # fmt: skip
    return {name: best_rate(fn, count, repeats) for name, fn in work.items()}


def fidelity(folder: ImageFolder, count: int, size: int) -> tuple[float, float, dict[int, int]]:
    """Mean and largest per-image mean absolute difference (of 255 levels) between the crops decoded at the size
    the views need and the same boxes from a full decode, and how many images each decode scale served."""
    views = get_views("byol")
    ours = FolderCrops(folder, size=size, views=views)
    full = FolderCrops(folder, size=size, views=views, reduced=False)
    errors, scales = [], dict.fromkeys((1, 2, 4, 8), 0)
    for i in range(count):
        with Image.open(folder.paths[i]) as image:
            scales[decode_scale(ours.boxes(i)(*oriented_size(image)), size)] += 1
        for a, b in zip(ours[i][:2], full[i][:2], strict=True):
            errors.append((a.float() - b.float()).abs().mean().item())
    return sum(errors) / len(errors), max(errors), scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="the folder benchmarks/photos.py wrote")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="224,96")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, one thread")
    print("| files | view | byol | byol, full decode | lightly | decode | decode + draft | byol / lightly | "
          "byol / full | CPU cost byol (worker + batched views) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    fidelities = []
    for kind in ("imagenet-like", "12mp"):
        folder = load_dataset("imagefolder", "train", str(args.photos / kind))
        count = min(args.images, len(folder))
        for size in (int(s) for s in args.sizes.split(",")):
            rates = measure(folder, count, size, args.repeats, BYOLTransform(
                BYOLView1Transform(input_size=size), BYOLView2Transform(input_size=size)))  # fmt: skip
            views_s = batched_views_seconds("byol", size, args.repeats)
            cost_ms = 1e3 / rates["byol"] + 1e3 * views_s
            with Image.open(folder.paths[0]) as first:
                shape = f"{first.width}x{first.height}"
            print(f"| {kind} ({shape}) | {size} | {rates['byol']:.1f} | {rates['full']:.1f} | {rates['lightly']:.1f} | "
                  f"{rates['decode']:.1f} | {rates['draft']:.1f} | {rates['byol'] / rates['lightly']:.2f}x | "
                  f"{rates['byol'] / rates['full']:.2f}x | {cost_ms:.2f} ms = {1e3 / cost_ms:.1f} img/s "
                  f"(lightly {1e3 / rates['lightly']:.2f} ms) |", flush=True)  # fmt: skip
            fidelities.append((kind, size, *fidelity(folder, count, size)))
    print("\n| files | view | mean abs. difference to the full decode (of 255) | largest (one crop) | "
          "images by decode scale |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | --- |")
    for kind, size, mean, largest, scales in fidelities:
        shares = ", ".join(f"1/{s}: {n}" for s, n in scales.items() if n)
        print(f"| {kind} | {size} | {mean:.2f} | {largest:.2f} | {shares} |")


if __name__ == "__main__":
    main()
