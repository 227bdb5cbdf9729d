"""`byol prepare`: an image folder once into shards that training, the evaluations and `embed` read."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byol.choices import LABELS, UNREADABLE, PrepareSettings
from byol.commands.common import directory, number, quiet_flag
from byol.config import data_location
from byol.errors import ConfigError

DEFAULTS = PrepareSettings()


def add_prepare(sub: Any) -> None:
    p = sub.add_parser(
        "prepare",
        help="store an image folder once as WebDataset tar shards with an index, for fast and flat-memory reading",
        description="Reads SRC as the folder reader does (flat, nested or one folder per class, with its val/ and "
        "test/ folders) and writes DIR: tar shards in WebDataset's layout (<key>.jpg upright with its long side at "
        "most --max-side, <key>.cls, <key>.json), one index.npy per split and manifest.json (settings, counts, "
        "a SHA-256 per shard). Use DIR wherever an image folder goes: --dataset imagefolder --data-dir DIR. "
        "Parallel over processes; a killed run resumes with the same command, keeping finished shards. "
        "Unreadable files are left out and listed in DIR/unreadable.tsv. Nothing is written into SRC.",
    )
    p.add_argument("source", type=directory, help="folder of images")
    p.add_argument(
        "--out", type=output_place, required=True,
        help="new or empty folder for the shards, or s3://BUCKET/PREFIX (gs://…) to upload them to",
    )  # fmt: skip
    side = number(int, 32, 8192, "a side in [32, 8192] px")
    p.add_argument("--max-side", type=side, default=DEFAULTS.max_side,
                   help=f"longest side an image is stored at (default: {DEFAULTS.max_side})")  # fmt: skip
    quality = number(int, 50, 100, "a JPEG quality in [50, 100]")
    p.add_argument("--quality", type=quality, default=DEFAULTS.quality,
                   help=f"JPEG quality of re-encoded images (default: {DEFAULTS.quality})")  # fmt: skip
    images = number(int, 1, 10**6, "an image count in [1, 1e6]")
    p.add_argument("--shard-size", type=images, default=DEFAULTS.shard_images,
                   help=f"images per shard (default: {DEFAULTS.shard_images})")  # fmt: skip
    p.add_argument(
        "--labels",
        choices=LABELS,
        default=DEFAULTS.labels,
        help="auto: class folders where the source is laid out by class; folders; none (default: auto)",
    )
    p.add_argument(
        "--no-shuffle", action="store_true",
        help="store images in the listing's order (default: a seeded permutation, so that each shard holds every "
        "class and a reader of a few shards at a time sees a mixed sample)",
    )  # fmt: skip
    p.add_argument("--workers", type=number(int, 0, 1024, "a process count in [0, 1024]"), default=0,
                   help="processes (default 0: one per core)")  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=prepare)


def output_place(text: str) -> Path | str:
    """An argparse type: --out of prepare, a local folder (:func:`directory`) or a prepared set's URL in object
    storage (s3://, gs://), kept as text."""
    from byol.choices import URL

    if not URL.match(text):
        return directory(text)
    try:
        data_location(text, "--out")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def prepare(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.prepare import prepare as run

    settings = PrepareSettings(args.max_side, args.quality, args.shard_size, args.labels, not args.no_shuffle)
    if isinstance(args.out, str):  # object storage
        from byol.prepare import prepare_to_store

        s = prepare_to_store(Path(args.source), args.out, settings, workers=args.workers, progress=not args.quiet)
    else:
        s = run(Path(args.source), args.out, settings, workers=args.workers, progress=not args.quiet)
    counts = ", ".join(f"{split} {n}" for split, n in s.images.items())
    if s.already:
        print(f"{s.out} is already prepared from this source with these settings ({counts}); nothing to do")
        return 0
    left_out = f"; {s.unreadable} unreadable file(s) left out, listed in {s.out}/{UNREADABLE}" if s.unreadable else ""
    print(
        f"prepared {sum(s.images.values())} images ({counts}) into {s.shards} shard(s), {s.bytes / 1e6:.1f} MB, "
        f"in {s.seconds:.1f} s{left_out}; read it with --dataset imagefolder --data-dir {s.out}"
    )
    return 0
