"""byol's index against webdataset's indexed reader ``wids`` on the same prepared shards (issue 35).

    pip install --no-deps --target /tmp/widslib wids==0.1.11      # outside the package's dependencies
    PYTHONPATH=/tmp/widslib .venv/bin/python benchmarks/wids_index.py --shards /tmp/many-shards [--reads 2000]

Both read the JPEG bytes of ``--reads`` images drawn at random (seeded) from the train split of a folder
``byol prepare`` wrote, one process, nothing decoded: ``ShardSet.read`` (one ``pread`` through the memory-mapped
index) and ``wids.ShardListDataset`` over the same tars (its default ``lru_size`` of 10 open shards, and one
holding every shard). Prints the time to open, reads/s, and the Python objects the reader holds afterwards.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import numpy as np

from byol.data import ShardSet
from byol.data.shards import MANIFEST


def objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def timed(name: str, make, read, order) -> None:
    before = objects()
    start = time.perf_counter()
    reader = make()
    opened = time.perf_counter() - start
    start = time.perf_counter()
    for i in order:
        read(reader, int(i))
    seconds = time.perf_counter() - start
    print(f"| {name} | {opened * 1e3:.1f} ms | {len(order) / seconds:,.0f} reads/s | {objects() - before:,} |",
          flush=True)  # fmt: skip


def _wids_read(reader, i: int) -> bytes:
    data = reader[i][".jpg"]
    return data.read() if hasattr(data, "read") else data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    import wids

    train = ShardSet.open(str(args.shards), "train")
    entry = json.loads((args.shards / MANIFEST).read_text())["splits"]["train"]
    shardlist = [{"url": str(args.shards / "train" / s["name"]), "nsamples": s["images"]} for s in entry["shards"]]
    order = np.random.default_rng(0).integers(0, len(train), args.reads)
    print(f"{len(train):,} images in {len(shardlist)} shards, {args.reads:,} random reads of their JPEG bytes")
    print("| reader | open | random reads | Python objects held |\n| --- | ---: | ---: | ---: |")
    timed("byol ShardSet", lambda: ShardSet.open(str(args.shards), "train"), lambda r, i: r.read(i).getvalue(), order)
    for lru in (10, len(shardlist)):
        make = lambda lru=lru: wids.ShardListDataset(shardlist, lru_size=lru)  # noqa: E731
        timed(f"wids, lru_size {lru}", make, _wids_read, order)


if __name__ == "__main__":
    main()
