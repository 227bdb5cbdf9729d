"""Prepared shards (issue 35): `byol prepare`, the WebDataset layout, reading by index with the folder path's
crops, resume of a killed prepare and of a killed run, ranks reading disjoint parts, and the output rules."""

import datetime
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import (
    alive,
    assert_all_end,
    assert_same_networks,
    child_pids,
    run_killed_and_resumed,
    start_byol,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import byol.prepare as prepare_module
from byol.augment import get_views
from byol.checkpoint import latest_checkpoint, load_checkpoint
from byol.choices import PrepareSettings as Settings
from byol.cli import main
from byol.data import ShardSet, TrainBatches, image_folder, load_dataset
from byol.data.decode import FolderCrops, pixel_box, random_box
from byol.data.shards import INDEX, MANIFEST
from byol.errors import DataError
from byol.prepare import PARTS, PROGRESS, prepare
from byol.rundir import TIMING_KEYS

CPU = torch.device("cpu")
VIEWS = get_views("byol")


def _jpeg(path: Path, seed: int, size=(40, 30), orientation: int = 1, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], axis=-1)
    pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    image.save(path, "JPEG", quality=90, **save)
    return path


def _by_class(root: Path, per_class: int = 12) -> Path:
    for c, name in enumerate(("cat", "dog", "eel")):
        for i in range(per_class):
            _jpeg(root / name / f"{i:03d}.jpg", 100 * c + i)
    return root


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file below ``root``: size, mtime and content digest (to show a source is left untouched)."""
    return {
        os.fspath(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).digest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_prepare_writes_webdataset_shards_an_index_and_a_manifest_and_names_what_it_left_out(tmp_path):
    src = _by_class(tmp_path / "src")
    _jpeg(src / "dog" / "portrait.jpg", 7, size=(60, 40), orientation=6)  # landscape pixels, stored upright
    _jpeg(src / "cat" / "big.jpg", 8, size=(900, 600))  # above --max-side: stored at 300 x 200
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(src / "eel" / "flat.png")  # re-encoded as JPEG
    (src / "eel" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    before = _tree(src)
    out = tmp_path / "prepared"
    summary = prepare(src, out, Settings(max_side=300, shard_images=5), workers=2, progress=False)
    assert _tree(src) == before  # nothing written into the source
    folder = {split: load_dataset("imagefolder", split, str(src)) for split in ("train", "val")}
    manifest = json.loads((out / MANIFEST).read_text())
    assert summary.unreadable == manifest["unreadable"] == 1
    assert "broken.jpg" in (out / "unreadable.tsv").read_text()
    assert not (out / PARTS).exists() and not (out / PROGRESS).exists()
    assert manifest["classes"] == ["cat", "dog", "eel"] and set(manifest["splits"]) == {"train", "val"}
    for split, entry in manifest["splits"].items():
        shards = ShardSet.open(str(out), split)
        kept = [i for i, p in enumerate(folder[split].paths) if not p.endswith("broken.jpg")]
        assert len(shards) == entry["images"] == len(kept)
        assert shards.labels.tolist() == folder[split].labels[kept].tolist()  # same images, same order
        assert isinstance(shards.index, np.memmap)  # read from its file, no per-image object
        for shard in entry["shards"]:
            data = (out / split / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
        for i in range(len(shards)):
            with Image.open(shards.read(i)) as image:
                assert image.format == "JPEG" and max(image.size) <= 300
                assert image.size == (int(shards.index[i]["width"]), int(shards.index[i]["height"]))
                assert image.getexif().get(0x0112, 1) == 1  # upright: nothing left to rotate
        sources = {os.path.relpath(folder[split].paths[k], folder[split].root): k for k in kept}
        with tarfile.open(out / split / entry["shards"][0]["name"]) as tar:  # plain tar: any tool reads it
            names = tar.getnames()
            about = json.loads(tar.extractfile(names[2]).read())
            assert names[:3] == ["000000000.jpg", "000000000.cls", "000000000.json"]
            assert int(tar.extractfile(names[1]).read()) == folder[split].labels[sources[about["source"]]]
    train = ShardSet.open(str(out), "train")
    rows = {json.loads(_member(out / "train", train, i, "json"))["source"]: i for i in range(len(train))}
    with Image.open(train.read(rows["dog/portrait.jpg"])) as image:
        assert image.size == (40, 60)  # EXIF orientation 6 applied: portrait
    with Image.open(train.read(rows["cat/big.jpg"])) as image:
        assert image.size == (300, 200)
    small = rows["cat/000.jpg"]  # a JPEG small and upright already: stored byte for byte
    assert train.read(small).getvalue() == (src / "cat" / "000.jpg").read_bytes()


def _member(split_dir: Path, shards: ShardSet, i: int, ext: str) -> bytes:
    row = shards.index[i]
    with tarfile.open(split_dir / shards.shards[row["shard"]]) as tar:
        return tar.extractfile(f"{int(row['key']):09d}.{ext}").read()


def test_webdataset_reads_the_shards_with_their_keys_labels_and_images(tmp_path):
    webdataset = pytest.importorskip("webdataset")  # installed by `make setup` (byol[shards])
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src", per_class=4), out, Settings(shard_images=4), workers=1, progress=False)
    shards = ShardSet.open(str(out), "train")
    urls = [str(out / "train" / name) for name in shards.shards]
    stored = list(webdataset.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len({int(s["cls"]) for s in stored[:4]}) > 1  # shards hold a permutation of the class-ordered listing
    samples = sorted(stored, key=lambda s: s["__key__"])  # the index lists them by key: the listing's order
    assert [s["__key__"] for s in samples] == [f"{int(k):09d}" for k in shards.index["key"]]
    assert [int(s["cls"]) for s in samples] == shards.labels.tolist()
    assert all(s["jpg"] == shards.read(i).getvalue() for i, s in enumerate(samples))


def test_shards_give_the_folder_paths_crops(tmp_path):
    """Small upright JPEGs are stored byte for byte: every crop of every index is the folder path's, bit for bit."""
    src = _by_class(tmp_path / "src", per_class=4)
    out = tmp_path / "prepared"
    prepare(src, out, Settings(shard_images=3), workers=1, progress=False)
    folder, shards = load_dataset("imagefolder", "train", str(src)), load_dataset("imagefolder", "train", str(out))
    for views in (VIEWS, None):
        a, b = FolderCrops(folder, size=16, views=views, seed=3), FolderCrops(shards, size=16, views=views, seed=3)
        a.epoch = b.epoch = 2
        for i in range(len(folder)):
            x, y = a[i], b[i]
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and x[2] == y[2]


@settings(max_examples=200, deadline=None)
@given(st.integers(64, 6000), st.integers(64, 6000), st.integers(0, 2**32 - 1), st.integers(64, 1024))
def test_a_box_drawn_on_the_stored_size_covers_the_same_part_of_the_photo(width, height, seed, max_side):
    """The crop law scales with the image: the box a seed draws on the stored (downscaled) image is the one it
    draws on the original, scaled, to within the rounding of the stored size."""
    factor = min(1.0, max_side / max(width, height))
    stored = (max(1, round(width * factor)), max(1, round(height * factor)))
    for view in VIEWS:
        a = random_box(width, height, view, np.random.default_rng((seed, 0, 1)))
        b = random_box(*stored, view, np.random.default_rng((seed, 0, 1)))
        relative_a = np.array(a) / [width, height, width, height]
        relative_b = np.array(b) / [stored[0], stored[1], stored[0], stored[1]]
        assert np.abs(relative_a - relative_b).max() <= 1.0 / min(stored) + 1e-9


def test_a_killed_prepare_resumes_keeping_its_finished_shards_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    src = _by_class(tmp_path / "src")
    whole = tmp_path / "whole"
    prepare(src, whole, Settings(shard_images=4), workers=1, progress=False)
    out = tmp_path / "killed"
    real, calls = prepare_module.encode, []

    def dies_at_the_tenth(path, s):
        calls.append(path)
        if len(calls) == 10:
            raise KeyboardInterrupt  # as a kill would stop it: in the middle of shard 2
        return real(path, s)

    monkeypatch.setattr(prepare_module, "encode", dies_at_the_tenth)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, out, Settings(shard_images=4), workers=1, progress=False)
    monkeypatch.setattr(prepare_module, "encode", real)
    done = sorted((out / "train").glob("shard-*.tar"))
    assert len(done) == 2 and not (out / MANIFEST).exists()  # two finished shards, no half-written one
    kept = {p.name: p.stat().st_ino for p in done}
    (out / "train" / ".shard-000002.tar.tmp-999999999").write_bytes(b"what a killed writer left")
    assert main(["prepare", str(src), "--out", str(out), "--shard-size", "5", "--quiet"]) == 2  # other settings
    assert main(["prepare", str(src), "--out", str(out), "--shard-size", "4", "--quiet"]) == 0
    assert {p.name: p.stat().st_ino for p in done} == kept  # the finished shards were kept, not rewritten
    assert not list((out / "train").glob(".*tmp*"))
    a, b = json.loads((whole / MANIFEST).read_text()), json.loads((out / MANIFEST).read_text())
    assert a["splits"] == b["splits"]  # the same shards, digest for digest
    assert main(["prepare", str(src), "--out", str(out), "--shard-size", "4", "--quiet"]) == 0  # nothing to do


def test_a_sigkilled_prepare_resumes_and_leaves_no_worker_running(tmp_path):
    src = _by_class(tmp_path / "src", per_class=30)
    out = tmp_path / "prepared"
    proc = start_byol(["prepare", str(src), "--out", str(out), "--shard-size", "2", "--workers", "2", "--quiet"])
    parts = out / PARTS / "train"
    assert wait_until(lambda: parts.is_dir() and len(list(parts.iterdir())) >= 3, proc, "three finished shards")
    workers = child_pids(proc.pid)
    assert len(workers) >= 2, workers  # the pool's processes (and its resource tracker, if any)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_all_end(workers, "prepare's pool workers")
    assert main(["prepare", str(src), "--out", str(out), "--shard-size", "2", "--workers", "2", "--quiet"]) == 0
    whole = tmp_path / "whole"
    assert main(["prepare", str(src), "--out", str(whole), "--shard-size", "2", "--quiet"]) == 0
    assert json.loads((whole / MANIFEST).read_text())["splits"] == json.loads((out / MANIFEST).read_text())["splits"]


_ORPHAN = """
import os, time
import byol.processes as processes
processes.libc = lambda: None  # no prctl, as off Linux: the watch thread alone
parent = os.getpid()
child = os.fork()
if child == 0:
    processes.die_with_parent(parent)
    time.sleep(600)
    os._exit(0)
print(child, flush=True)
time.sleep(600)
"""


def test_a_child_whose_parent_is_killed_ends_without_the_kernels_signal():
    """die_with_parent's watch thread: a forked child ends once its parent is gone, where no parent-death signal
    comes (no prctl, as off Linux)."""
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert alive(child)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_all_end([child], "the child of a SIGKILLed parent")


def test_prepare_refuses_outputs_it_may_not_write_in_one_line(tmp_path, capsys):
    src = _by_class(tmp_path / "src", per_class=2)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("a user's file")
    cases = {
        "inside the source": src / "cat" / "shards",
        "the source is inside": tmp_path,
        "not empty": foreign,
        "is a file": foreign / "mine.txt",
    }
    before = _tree(tmp_path)
    for what, out in cases.items():
        capsys.readouterr()
        assert main(["prepare", str(src), "--out", str(out), "--quiet"]) == 2, what
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--out" in err, (what, err)
    assert main(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert _tree(tmp_path) == before and not (tmp_path / "x").exists()


def test_a_prepared_folder_is_read_where_an_image_folder_is(tmp_path):
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src"), out, Settings(shard_images=8), workers=1, progress=False)
    run = tmp_path / "run"
    tiny = ["--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(out), "--data.image_size", "16",
            "--optim.batch_size", "8", "--train.max_steps", "3", "--quiet"]  # fmt: skip
    assert main(["pretrain", *tiny, "--run-dir", str(run), "--train.knn_every", "1"]) == 0
    assert any("knn_top1" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    assert main(["knn", str(run), "--quiet", "--k", "3"]) == 0
    features = tmp_path / "features.npz"
    assert main(["embed", str(run), "--out", str(features), "--split", "val", "--quiet"]) == 0
    saved = np.load(features)
    val = ShardSet.open(str(out), "val")
    assert saved["features"].shape[0] == len(val) and saved["labels"].tolist() == val.labels.tolist()
    assert all(":" in p and p.endswith(".jpg") for p in saved["paths"])  # shard and member of each row


@pytest.mark.parametrize("edit", ["swap", "shift"])
def test_an_index_without_its_digest_never_reads_from_wrong_offsets(prepared_twice, tmp_path, monkeypatch, edit):
    """A folder prepared before the manifest held the index's digest: an index swapped for the other split's or
    with shifted offsets is caught row by row, by the tar header in front of each image (its member name and
    size): every row gives its own image's bytes or a one-line error naming the index, never another image."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = tmp_path / "prepared"
    shutil.copytree(prepared_twice, out)
    truth = ShardSet.open(str(out), "train")
    good = [truth.read(i).getvalue() for i in range(len(truth))]
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["splits"]["train"]["index_sha256"]
    (out / MANIFEST).write_text(json.dumps(manifest))
    if edit == "swap":
        shutil.copy(out / "val" / INDEX, out / "train" / INDEX)
    else:
        rows = np.load(out / "train" / INDEX)
        rows["offset"][1:] = rows["offset"][:-1].copy()
        np.save(out / "train" / INDEX, rows)
    damaged, refused = ShardSet.open(str(out), "train"), 0
    for i in range(len(damaged)):
        try:
            assert damaged.read(i).getvalue() == good[i]
        except DataError as e:
            assert INDEX in str(e) and "\n" not in str(e)
            refused += 1
    assert refused > 0


def test_a_shard_cut_after_it_was_opened_is_named_when_read(tmp_path):
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src", per_class=3), out, Settings(shard_images=50), workers=1, progress=False)
    train = ShardSet.open(str(out), "train")
    with open(out / "train" / "shard-000000.tar", "r+b") as f:
        f.truncate(1024)
    with pytest.raises(OSError, match="early"):
        train.read(len(train) - 1)


@pytest.fixture(scope="module")
def prepared_twice(tmp_path_factory):
    """A prepared folder with a train and a val split of the same size, several shards each."""
    root = tmp_path_factory.mktemp("damage")
    src = root / "src"
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            for i in range(6):
                _jpeg(src / split / name / f"{i}.jpg", 10 * c + i + 100 * len(split))
    prepare(src, root / "prepared", Settings(shard_images=4), workers=1, progress=False)
    return root / "prepared"


DAMAGES = ("flip a byte", "cut a shard", "delete a shard", "swap the index", "edit the index", "cut the manifest",
           "drop a manifest key")  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damage=st.sampled_from(DAMAGES), split=st.sampled_from(("train", "val")), where=st.floats(0, 1),
       shard=st.integers(0, 2), keep_times=st.booleans())  # fmt: skip
def test_damaged_prepared_data_is_named_in_one_line_before_it_is_read(
    prepared_twice, tmp_path_factory, monkeypatch, damage, split, where, shard, keep_times
):  # fmt: skip
    """Flipped bytes (even with the file's times put back), a cut or missing shard, an index swapped for the
    other split's or edited, a manifest cut or without one of its keys: opening the split (what every command
    does before a step) names the damaged file in one line, from the manifest's sizes and SHA-256 digests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # its verifications are its own
    out = tmp_path_factory.mktemp("copy") / "prepared"
    shutil.copytree(prepared_twice, out)
    assert image_folder(str(out), split, "auto") is not None  # whole: it reads (and remembers the verification)
    target = out / split / f"shard-{shard:06d}.tar"
    times = target.stat()
    if damage == "flip a byte":
        data = bytearray(target.read_bytes())
        data[int(where * (len(data) - 1))] ^= 0x40
        target.write_bytes(bytes(data))
        if keep_times:
            os.utime(target, ns=(times.st_atime_ns, times.st_mtime_ns))
        named = target.name
    elif damage == "cut a shard":
        with open(target, "r+b") as f:
            f.truncate(int(where * (times.st_size - 1)))
        named = target.name
    elif damage == "delete a shard":
        target.unlink()
        named = target.name
    elif damage in ("swap the index", "edit the index"):
        index = out / split / INDEX
        if damage == "swap the index":
            shutil.copy(out / ({"train", "val"} - {split}).pop() / INDEX, index)
        else:
            rows = np.load(index)
            rows[int(where * (len(rows) - 1))]["offset"] += 512
            np.save(index, rows)
        named = INDEX
    else:
        manifest = out / MANIFEST
        text = manifest.read_text()
        if damage == "cut the manifest":
            manifest.write_text(text[: int(where * (len(text) - 2))])  # the closing brace goes at least
        else:
            data = json.loads(text)
            del data[("splits", "classes", "layout")[shard]]
            manifest.write_text(json.dumps(data))
        named = MANIFEST
    with pytest.raises(DataError) as caught:
        image_folder(str(out), split, "auto")
    message = str(caught.value)
    assert named in message and "\n" not in message, message


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 400), st.integers(1, 8), st.integers(1, 6), st.integers(0, 5))
def test_every_world_size_trains_on_the_same_batches(n_per_step, per_rank, world, epoch):
    """A run resumed on another number of ranks (same global batch) takes the same images at every step:
    the data is re-split exactly, never refused."""
    batch = per_rank * world
    n = n_per_step + batch
    dataset = load_dataset("synthetic", "train", image_size=4)
    dataset = dataset.subset(torch.arange(min(n, len(dataset))))
    if len(dataset) < batch:
        return

    def steps(world_size: int) -> list[set[int]]:
        ranks = [TrainBatches(dataset, batch_size=batch // world_size, seed=5, device=CPU, rank=r,
                              world_size=world_size).order(epoch) for r in range(world_size)]  # fmt: skip
        return [set(torch.cat([r[s] for r in ranks]).tolist()) for s in range(len(ranks[0]))]

    one = steps(1)
    assert steps(world) == one and all(len(s) == batch for s in one)


def _rank_reads(rank, port, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    shards = load_dataset("imagefolder", "train", out)
    read = []
    original = ShardSet.read

    def logged(self, index):
        read.append(index)
        return original(self, index)

    ShardSet.read = logged
    batches = TrainBatches(shards, batch_size=4, seed=1, device=CPU, views=VIEWS, image_size=16, num_workers=0,
                           rank=rank, world_size=2)  # fmt: skip
    seen = [b.indices.tolist() for b in batches.epoch(0)]
    gathered = [None, None]
    dist.all_gather_object(gathered, (seen, read))
    if rank == 0:
        torch.save(gathered, result)
    dist.barrier()
    dist.destroy_process_group()


# two spawned gloo ranks (about 7 s): `make test-slow`. The default suite checks the same split in one process, for
# any world size (test_every_world_size_trains_on_the_same_batches), and ranks reading a store
# (tests/test_objectstore.py)
@pytest.mark.slow
def test_two_ranks_read_disjoint_parts_of_each_epoch(tmp_path):
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src", per_class=8), out, Settings(shard_images=5), workers=1, progress=False)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_reads, args=(port, str(out), str(tmp_path / "reads.pt")), nprocs=2, join=True)
    (seen0, read0), (seen1, read1) = torch.load(tmp_path / "reads.pt")
    n = len(ShardSet.open(str(out), "train"))
    flat0, flat1 = [i for batch in seen0 for i in batch], [i for batch in seen1 for i in batch]
    assert set(read0).isdisjoint(read1) and sorted(read0) == sorted(flat0) and sorted(read1) == sorted(flat1)
    assert len(read0 + read1) == n // 8 * 8  # every full global batch of the epoch, each image once


# each about 10 s: `make test-slow` runs them; the default suite's kill-and-resume is test_reliability's
@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_on_shards_killed_and_resumed_is_bit_identical(tmp_path, workers):
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src", per_class=10), out, Settings(shard_images=6), workers=1, progress=False)
    args = ["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(out), "--data.image_size",
            "16", "--optim.batch_size", "8", "--epochs", "3", "--train.checkpoint_every", "1", "--quiet",
            "--train.deterministic", "true", "--data.num_workers", str(workers)]  # fmt: skip
    reference, run, _ = run_killed_and_resumed(args, tmp_path, kill_at_step=4, resume=("--resume", "--quiet"))
    a, b = load_checkpoint(latest_checkpoint(reference))["state"], load_checkpoint(latest_checkpoint(run))["state"]
    assert a["step"] == 9
    assert_same_networks(a, b)
    logs = [[{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
             for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (reference, run)]  # fmt: skip
    assert logs[0] == logs[1]  # every logged loss, bit for bit


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([1, 2, 4, 8]), st.data())
def test_a_box_is_cut_at_whole_decoded_pixels_within_half_a_pixel_of_where_it_was_drawn(width, height, scale, data):
    wide, high = -(-width // scale), -(-height // scale)  # what a decode at 1/scale gives
    left = data.draw(st.floats(0, width - 1e-3))
    top = data.draw(st.floats(0, height - 1e-3))
    right = data.draw(st.floats(left + 1e-3, width))
    bottom = data.draw(st.floats(top + 1e-3, height))
    cut = pixel_box((left, top, right, bottom), scale, wide, high)
    assert all(isinstance(c, int) for c in cut)
    assert 0 <= cut[0] < cut[2] <= wide and 0 <= cut[1] < cut[3] <= high  # inside, at least one pixel each way
    if (right - left) / scale < 2 or (bottom - top) / scale < 2:
        return  # a box under two decoded pixels may be widened to the one-pixel minimum
    for got, wanted, limit in zip(cut, (left, top, right, bottom), (wide, high, wide, high), strict=True):
        if wanted / scale <= limit:
            assert abs(got - wanted / scale) <= 0.5 + 1e-9


def test_bench_data_reads_a_prepared_folder_per_core_and_for_a_whole_epoch(tmp_path, capsys):
    out = tmp_path / "prepared"
    prepare(_by_class(tmp_path / "src", per_class=8), out, Settings(shard_images=5), workers=1, progress=False)
    common = ["bench", "data", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(out),
              "--data.image_size", "16"]  # fmt: skip
    assert main([*common, "--images", "5"]) == 0
    assert "prepared, by class" in capsys.readouterr().out
    assert main([*common, "--pass", "--optim.batch_size", "4", "--data.num_workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    train = len(ShardSet.open(str(out), "train"))
    assert f"one epoch, {train // 4 * 4} images (full batches of 4)" in printed
    assert "memory of main" in printed and "memory of worker 1" in printed


@settings(max_examples=8, deadline=None)
@given(st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
def test_prepare_keeps_file_names_that_are_not_utf8(tmp_path_factory, raw):
    """Names of any bytes (old disks, archives: Latin-1, Shift-JIS) are prepared, and each image's .json member
    is valid JSON that reads back as the very name the file system gives."""
    tmp_path = tmp_path_factory.mktemp("names")
    src = _by_class(tmp_path / "src", per_class=2)
    name = os.fsdecode(raw.lstrip(b".") or b"x") + ".jpg"
    _jpeg(src / "cat" / name, 7)
    out = tmp_path / "prepared"
    assert main(["prepare", str(src), "--out", str(out), "--quiet"]) == 0
    sources = []
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            sources += [json.loads(tar.extractfile(m).read())["source"] for m in tar if m.name.endswith(".json")]
    assert f"cat/{name}" in sources
