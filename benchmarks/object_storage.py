"""Prepared shards read from object storage against the same shards on local disk (issue 50), in one process.

    .venv/bin/python benchmarks/object_storage.py [--images 4000] [--workers 2]

The photos: ``--images`` ImageNet-like JPEGs (random crops of scikit-learn's and, where ``make peers`` unpacked
them, scikit-image's photos, long side 500 px; benchmarks/photos.py), prepared with ``byol prepare`` at
``--max-side 320`` in shards of ``--shard-images`` (64) images, once locally and once uploaded
(``byol prepare --out s3://…``) to
moto's S3 server on 127.0.0.1 behind the fault-injecting proxy of tests/s3server.py, set to 50 ms per request
and 100 MB/s for everything. Both run in a child process, on the same two cores as the reader: a real store
costs the reader nothing of its CPU, so the remote figures here are, if anything, low. ``--split-cores`` gives
the store a core of its own, as a store on another machine would have, and the reader (and its DataLoader workers)
the rest, in every pass, local ones included.

Each pass is one epoch of the training DataLoader (``--workers`` workers, both views' crops at 112 px, data.order
shards with a window of 2 shards, batches of 32, no training: the data path alone, the hardest case for hiding a fetch):

An untimed local pass comes first (what a process pays once: the first fork of workers, the page cache). Each pass
records the CPU time of the store's process and of the reader (this process, its fetching threads and its DataLoader
workers).

- local: the prepared folder on disk;
- cold: the store, an empty cache able to hold the set (first epoch); img/s over the whole epoch and from the
  first batch on (the fetch of the first window is the time to the first batch), bytes fetched; local and cold
  run ``--repeats`` times in turns, and their medians are compared;
- warm: the same again, the cache full (second epoch): bytes fetched;
- quarter: an empty cache of a quarter of the set's bytes: the most bytes it held, polled every 5 ms under the
  cache's lock (the polling costs this pass some of its speed; the other passes are not polled);
- faults: an empty cache, with one GET in every ``--fault-every`` (7) answered 503 SlowDown, cut short, stalled
  3 s (the client gives up after 1 s) or given a flipped byte, in turns: the batches are compared with the local
  pass's, bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent / "tests")]
from photos import imagenet_like, source_photos  # noqa: E402
from s3server import S3_ENV, ServerProcess, make_bucket  # noqa: E402

from byol.augment import get_views  # noqa: E402
from byol.choices import PrepareSettings  # noqa: E402
from byol.data import TrainBatches, load_split, use_cache  # noqa: E402
from byol.data.loaders import shards_at_once  # noqa: E402
from byol.prepare import prepare, prepare_to_store  # noqa: E402

SHARD_IMAGES = 64  # far smaller than `byol prepare`'s default (2000): many shards, many requests, the hard case
SIZE, BATCH, WINDOW = 112, 32, 2


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used: what the emulated store takes from the 2 cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photo_folder(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    photos = source_photos()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo-{i:05d}.jpg"
        if not path.exists():
            imagenet_like(photos[rng.integers(len(photos))], rng).save(path, quality=int(rng.integers(85, 96)))
    return folder


def train_batches(data_dir: str, workers: int) -> TrainBatches:
    """The training loader every pass reads (its cache's budget checked against what it holds at once)."""
    dataset = load_split("imagefolder", "pretrain", data_dir, SIZE)
    return TrainBatches(
        dataset, batch_size=BATCH, seed=0, device=torch.device("cpu"), views=get_views("byol"), image_size=SIZE,
        num_workers=workers, order="shards", window=WINDOW,
    )  # fmt: skip


def epoch(data_dir: str, workers: int, usage_of: Path | None = None) -> dict[str, object]:
    """One epoch; img/s overall and from the first batch on, seconds to the first batch, each batch's digest,
    and (``usage_of``: a cache folder) the most bytes in its objects/ folder while it ran."""
    batches = train_batches(data_dir, workers)
    dataset = batches.dataset
    peak, done = [0], threading.Event()

    def poll() -> None:  # under the cache's lock: a snapshot between two of its changes
        cache = dataset.remote.cache if dataset.remote is not None else None
        while usage_of is not None and cache is not None and not done.is_set():
            with cache._locked():
                peak[0] = max(peak[0], cache.usage())
            done.wait(0.005)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    digests, images = [], 0
    start = time.perf_counter()
    first = 0.0
    for batch in batches.epoch(0):
        if not digests:
            first = time.perf_counter() - start
        digest = hashlib.sha256(batch.images.numpy().tobytes() + batch.second_crop.numpy().tobytes())
        digests.append(digest.hexdigest())
        images += len(batch.images)
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    after_first = (images - BATCH) / (seconds - first)
    return {"images": images, "seconds": seconds, "img_s": images / seconds, "after_first_img_s": after_first,
            "first_batch_s": first, "digests": digests, "peak": peak[0], "dataset": dataset}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="local and cold passes, taken in turns")
    parser.add_argument(
        "--shard-images", type=int, default=SHARD_IMAGES, help="images per shard (prepare's default: 2000)"
    )
    parser.add_argument("--fault-every", type=int, default=7, help="one GET in this many gets a fault")
    split = "the store on the last core, the reader and its workers on the others (every pass)"
    parser.add_argument("--split-cores", action="store_true", help=split)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "byol-object-storage")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = photo_folder(args.work / "photos", args.images)
    settings = PrepareSettings(max_side=320, shard_images=args.shard_images)
    local = args.work / f"local-{args.shard_images}"
    if not (local / "manifest.json").exists():
        prepare(source, local, settings, workers=0, progress=False)
    shard_bytes = [p.stat().st_size for p in (local / "train").glob("*.tar")]
    total = sum(shard_bytes)
    print(f"{args.images} photos prepared: {total / 1e6:.1f} MB in {len(shard_bytes)} "
          f"train shards; CPU: {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores")  # fmt: skip
    os.environ.update(S3_ENV, BYOL_S3_TIMEOUT="1")
    cores = sorted(os.sched_getaffinity(0))
    store_cores = {cores[-1]} if args.split_cores else None
    with ServerProcess(store_cores) as server:
        if args.split_cores:  # as a store on another machine would: it takes none of the reader's cores
            os.sched_setaffinity(0, set(cores[:-1]))
            print(f"store on core {cores[-1]}, reader and its workers on {cores[:-1]}")
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        make_bucket(server.endpoint, "bench")
        prepare_to_store(source, "s3://bench/photos", settings, workers=0, progress=False)
        server.set(latency=0.05, bandwidth=100e6)
        rows = []

        def run(name: str, data_dir: str, cache: Path | None, budget: int = 0, fresh: bool = True) -> dict[str, object]:
            if cache is not None:
                if fresh:
                    shutil.rmtree(cache, ignore_errors=True)
                use_cache(str(cache), budget)
            served, busy, mine = server.stats()["served"], cpu_seconds(server.process.pid), os.times()
            result = epoch(data_dir, args.workers, cache if budget else None)  # the budget's passes: polled
            result["fetched"] = server.stats()["served"] - served
            result["store_cpu"] = cpu_seconds(server.process.pid) - busy
            after = os.times()  # this process (its fetching threads) and its DataLoader workers, ended with the epoch
            result["reader_cpu"] = sum(after[:4]) - sum(mine[:4])
            rows.append((name, result))
            return result

        epoch(str(local), args.workers)  # untimed: what a process pays once (the first fork, the page cache)
        for repeat in range(args.repeats):  # local and cold in turns: the machine's drift touches both alike
            run("local", str(local), None)
            run("cold (1st epoch)", "s3://bench/photos", args.work / f"cache-{repeat}")
        warm = run("warm (2nd epoch)", "s3://bench/photos", args.work / f"cache-{args.repeats - 1}", fresh=False)
        least = shards_at_once(WINDOW, train_batches(str(local), args.workers).behind) * max(shard_bytes)
        budget = max(total // 4, min(total, least))  # a quarter, or the least the loader accepts (large shards)
        quarter = run("quarter budget", "s3://bench/photos", args.work / "cache-quarter", budget)
        server.set(slow_down=10**6, cut=10**6, stall=10**6, flip=10**6, every=args.fault_every, stall_seconds=3.0)
        faulty = run("faults", "s3://bench/photos", args.work / "cache-faults", 2 * total)
        server.set(slow_down=0, cut=0, stall=0, flip=0)
        injected = server.stats()["injected"]

    base = rows[0][1]
    local_rate = float(np.median([r["after_first_img_s"] for n, r in rows if n == "local"]))
    cold_rate = float(np.median([r["after_first_img_s"] for n, r in rows if n.startswith("cold")]))
    cold_whole = float(np.median([r["img_s"] for n, r in rows if n.startswith("cold")]))
    local_whole = float(np.median([r["img_s"] for n, r in rows if n == "local"]))
    print(f"\n{'pass':<18} {'img/s':>7} {'after 1st':>9} {'1st batch s':>11} {'fetched/set':>11} {'peak cache MB':>13} "
          f"{'store CPU s':>11} {'reader CPU s':>12}")  # fmt: skip
    for name, r in rows:
        print(f"{name:<18} {r['img_s']:7.1f} {r['after_first_img_s']:9.1f} {r['first_batch_s']:11.2f} "
              f"{r['fetched'] / total:11.3f} {r['peak'] / 1e6:13.1f} {r['store_cpu']:11.2f} "
              f"{r['reader_cpu']:12.2f}")  # fmt: skip
    wrong = sum(a != b for a, b in zip(faulty["digests"], base["digests"], strict=True))
    print(f"\ncold / local (medians of {args.repeats}) from the first batch on: {cold_rate / local_rate:.3f}; "
          f"whole epoch: {cold_whole / local_whole:.3f}")  # fmt: skip
    print(f"warm epoch fetched {warm['fetched']} bytes; budget {budget} bytes ({budget / total:.2f} of the set), "
          f"peak {quarter['peak']}")  # fmt: skip
    print(f"faults injected {injected}; batches differing from the local read: {wrong} of {len(base['digests'])}; "
          f"faults / clean cold throughput: {faulty['img_s'] / cold_whole:.3f}")  # fmt: skip
    same = all(r["digests"] == base["digests"] for _, r in rows)
    print(f"every pass read the local pass's batches bit for bit: {same}")


if __name__ == "__main__":
    main()
