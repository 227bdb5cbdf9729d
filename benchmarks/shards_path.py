"""Prepared shards against the image-folder path per core (issue 35), on the photo sets of benchmarks/photos.py.

    make peers && .venv/bin/python benchmarks/photos.py --out /tmp/photos
    PYTHONPATH=.peers .venv/bin/python benchmarks/shards_path.py --photos /tmp/photos [--images 120]

Each photo set is first prepared (``byol prepare``, default settings: long side <= 512, JPEG quality 90, a JPEG
already that small stored byte for byte) into a temporary folder. Then, one process and one thread, the same
images and crop boxes for every row, best of ``--repeats`` passes, images/s of a worker's decode + both views'
crops:

- ``folder, before``: the folder path as it was before issue 35: decode at the size the views need, each box
  resized by Pillow's bicubic ``resize(box=...)`` (written out here, it is no longer the package's);
- ``folder``: the folder path today (the same decode, each box resized by torch's uint8 antialiased bicubic);
- ``shards``: the same from the prepared shards (one ``pread`` per image from an open shard, no file open, no
  EXIF to apply: the stored image is upright);
- ``lightly``: lightly's ``BYOLTransform`` on the source file (open + RGB + both views), as in data_path.py.

``CPU cost`` adds byol's batched view work (flip, colour, grey, blur, solarise) per image on this CPU to the
shards row, which then compares with lightly's whole pipeline where the training device is the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_path import batched_views_seconds, best_rate

from byol.augment import get_views
from byol.data import load_dataset
from byol.data.decode import TRANSPOSED, FolderCrops, _decode, decode_scale, orientation
from byol.prepare import prepare


def pillow_crops(crops: FolderCrops, index: int) -> list[torch.Tensor]:
    """The worker's work before issue 35: the same decode, Pillow's bicubic resize of each (fractional) box."""
    path = crops.folder.read(index)
    with Image.open(path) as image:
        turn = orientation(image)
        width, height = image.size
        boxes = crops.boxes(index)(*((height, width) if turn in TRANSPOSED else (width, height)))
        rgb, scale = _decode(image, decode_scale(boxes, crops.size) if image.format == "JPEG" else 1, turn)
    size = crops.size
    return [
        torch.from_numpy(np.asarray(
            rgb.resize((size, size), Image.Resampling.BICUBIC, box=tuple(c / scale for c in box))).copy()
        ).permute(2, 0, 1)
        for box in boxes
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="the folder benchmarks/photos.py wrote")
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="224,96")
    args = parser.parse_args()
    from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    views = get_views("byol")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, one thread")
    print("| files | view | folder, before | folder | shards | lightly | shards / folder before | shards / folder | "
          "shards / lightly | CPU cost, shards + batched views |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("imagenet-like", "12mp"):
            source = args.photos / kind
            summary = prepare(source, Path(tmp) / kind, workers=0, progress=False)
            torch.set_num_threads(1)
            folder = load_dataset("imagefolder", "train", str(source))
            shards = load_dataset("imagefolder", "train", str(Path(tmp) / kind))
            assert len(shards) == len(folder), (len(shards), len(folder))
            count = min(args.images, len(folder))
            for size in (int(s) for s in args.sizes.split(",")):
                from_folder = FolderCrops(folder, size=size, views=views)
                from_shards = FolderCrops(shards, size=size, views=views)
                lightly = BYOLTransform(BYOLView1Transform(input_size=size), BYOLView2Transform(input_size=size))

                def lightly_item(i: int, lightly: BYOLTransform = lightly, paths: tuple = folder.paths) -> object:
                    with open(paths[i], "rb") as f:
                        return lightly(Image.open(f).convert("RGB"))

                rates = {
                    "before": best_rate(lambda i, c=from_folder: pillow_crops(c, i), count, args.repeats),
                    "folder": best_rate(from_folder.__getitem__, count, args.repeats),
                    "shards": best_rate(from_shards.__getitem__, count, args.repeats),
                    "lightly": best_rate(lightly_item, count, args.repeats),
                }
                cost_ms = 1e3 / rates["shards"] + 1e3 * batched_views_seconds("byol", size, args.repeats)
                stored = f"{summary.bytes / 1e6 / len(shards):.3f} MB/image stored"
                print(f"| {kind} ({stored}) | {size} | {rates['before']:.1f} | {rates['folder']:.1f} | "
                      f"{rates['shards']:.1f} | {rates['lightly']:.1f} | {rates['shards'] / rates['before']:.2f}x | "
                      f"{rates['shards'] / rates['folder']:.2f}x | {rates['shards'] / rates['lightly']:.2f}x | "
                      f"{cost_ms:.2f} ms = {1e3 / cost_ms:.1f} img/s (lightly {1e3 / rates['lightly']:.2f} ms) |",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
