"""Photo sets for the data-path benchmarks, made from the real photos that scikit-learn and scikit-image ship.

    python benchmarks/photos.py --out /tmp/photos [--count 120]

writes two folders of JPEGs (quality drawn from 85-95, as cameras and web pipelines save):

- ``imagenet-like/``: a random crop (60-100% of the area) of a source photo, resized so its long side is 500 px
  (ImageNet's typical 500x375), so mostly downscaled real pixels;
- ``12mp/``: 4032x3024 phone-sized frames, a 2x2 mosaic of source crops each upscaled to 2016x1512 (the
  sources are at most 741 px wide, so this is 3-5x upscaling) plus Gaussian noise of sigma 3 (sensor noise,
  which keeps the entropy, and so the decode cost, near a real phone photo's: about 3-4 MB a file); every
  third one is stored as a portrait photo is, landscape pixels with EXIF orientation 6.

The sources: scikit-learn's ``china.jpg`` and ``flower.jpg`` (installed with byol[viz]) and scikit-image's
colour photos (astronaut, chelsea, coffee, rocket, motorcycle, hubble, retina, ihc), read from the scikit-image
wheel that ``make peers`` unpacks into .peers/ (its data files only: nothing of it is imported).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")  # fmt: skip
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def source_photos() -> list[np.ndarray]:
    """Every source photo as uint8 RGB."""
    sklearn = importlib.util.find_spec("sklearn")
    paths = []
    if sklearn is not None and sklearn.submodule_search_locations:
        paths += [Path(sklearn.submodule_search_locations[0]) / "datasets" / "images" / n for n in SKLEARN_PHOTOS]
    skimage = Path(__file__).resolve().parent.parent / ".peers" / "skimage" / "data"
    paths += [skimage / n for n in SKIMAGE_PHOTOS]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise SystemExit("no source photos: run `make setup` (scikit-learn) and `make peers` (scikit-image's files)")
    return [np.asarray(Image.open(p).convert("RGB")) for p in found]


def _crop(photo: np.ndarray, rng: np.random.Generator, min_area: float, aspect: float) -> Image.Image:
    h, w = photo.shape[:2]
    area = rng.uniform(min_area, 1.0) * h * w
    ch = min(h, int(np.sqrt(area / aspect)))
    cw = min(w, int(ch * aspect))
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return Image.fromarray(photo[top : top + ch, left : left + cw])


def imagenet_like(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    crop = _crop(photo, rng, 0.6, rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2]))
    scale = 500 / max(crop.size)
    return crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)


def twelve_mp(photos: list[np.ndarray], rng: np.random.Generator) -> Image.Image:
    tiles = [_crop(photos[rng.integers(len(photos))], rng, 0.5, 4 / 3).resize((2016, 1512), Image.Resampling.BICUBIC)
             for _ in range(4)]  # fmt: skip
    canvas = np.concatenate(
        [np.concatenate([np.asarray(tiles[0]), np.asarray(tiles[1])], 1),
         np.concatenate([np.asarray(tiles[2]), np.asarray(tiles[3])], 1)], 0,
    ).astype(np.float32)  # fmt: skip
    canvas += rng.normal(0, 3, canvas.shape).astype(np.float32)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def make_sets(out: Path, count: int, seed: int = 0) -> dict[str, Path]:
    """Writes ``count`` files of each kind under ``out`` (kept if already there) and returns the two folders."""
    rng = np.random.default_rng(seed)
    photos = source_photos()
    folders = {"imagenet-like": out / "imagenet-like", "12mp": out / "12mp"}
    for kind, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"{kind}-{i:04d}.jpg"
            if path.exists():
                continue
            if kind == "12mp":
                image, exif = twelve_mp(photos, rng), Image.Exif()
                if i % 3 == 2:
                    exif[0x0112] = 6  # a portrait photo: landscape pixels, shown rotated
                image.save(path, quality=int(rng.integers(85, 96)), exif=exif)
            else:
                imagenet_like(photos[rng.integers(len(photos))], rng).save(path, quality=int(rng.integers(85, 96)))
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=120)
    args = parser.parse_args()
    for kind, folder in make_sets(args.out, args.count).items():
        files = sorted(folder.glob("*.jpg"))
        sizes = [p.stat().st_size for p in files]
        with Image.open(files[0]) as first:
            shape = first.size
        print(f"{kind}: {len(files)} files in {folder}, e.g. {shape[0]}x{shape[1]}, "
              f"mean {np.mean(sizes) / 1e6:.2f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
