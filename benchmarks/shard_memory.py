"""Memory of a run's processes against the size of a prepared dataset's index (issue 35), and the time to open it.

    .venv/bin/python benchmarks/photos.py --out /tmp/photos          # real photos, as in data_path.py
    .venv/bin/python benchmarks/shard_memory.py --photos /tmp/photos [--sizes 10000,1000000]

The real shards: ``byol prepare`` of the ImageNet-like photo set at ``--max-side 64`` (small stored images keep
a million decodes to minutes; memory per index entry does not depend on the image size). For each size N, a
prepared folder whose index has N rows cycling over those real images (its shards are links to the real ones)
is read for one whole epoch by ``byol bench data --pass`` in a fresh process: the training DataLoader, 2 workers,
both views' crops at 32 px, batch 256, no training. It prints the time to open the index and the PSS and USS of
the main process and of each worker as the epoch's last batch arrived (Linux's /proc/PID/smaps_rollup).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from byol.choices import PrepareSettings as Settings
from byol.data import ShardSet
from byol.data.shards import INDEX, MANIFEST
from byol.prepare import prepare


def synthetic(real: Path, out: Path, n: int) -> Path:
    """A prepared folder at ``out`` whose train index has ``n`` rows cycling over the rows of ``real``."""
    manifest = json.loads((real / MANIFEST).read_text())
    rows = np.load(real / "train" / INDEX)
    index = rows[np.arange(n) % len(rows)]
    index["key"] = np.arange(n)
    (out / "train").mkdir(parents=True)
    for shard in manifest["splits"]["train"]["shards"]:
        os.symlink(real / "train" / shard["name"], out / "train" / shard["name"])
    np.save(out / "train" / INDEX, index)
    manifest["splits"] = {"train": {**manifest["splits"]["train"], "images": n}}
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, required=True, help="the folder benchmarks/photos.py wrote")
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    byol = [sys.executable, "-m", "byol"]
    with tempfile.TemporaryDirectory() as tmp:
        real = Path(tmp) / "real"
        prepare(args.photos / "imagenet-like", real, Settings(max_side=64), progress=False)
        for n in (int(s) for s in args.sizes.split(",")):
            folder = synthetic(real, Path(tmp) / f"n{n}", n)
            start = time.perf_counter()
            opened = ShardSet.open(str(folder), "train")
            open_s = time.perf_counter() - start
            print(f"## index of {len(opened):,} entries ({(folder / 'train' / INDEX).stat().st_size / 1e6:.1f} MB on "
                  f"disk): opened in {open_s * 1e3:.1f} ms in this process", flush=True)  # fmt: skip
            subprocess.run([*byol, "bench", "data", "--dataset", "imagefolder", "--data-dir", str(folder), "--pass",
                            "--data.image_size", "32", "--optim.batch_size", "256", "--data.num_workers",
                            str(args.workers), "--quiet"], check=True)  # fmt: skip


if __name__ == "__main__":
    main()
