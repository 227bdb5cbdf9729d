"""Prepared sets in object storage (issue 50): `byol prepare --out s3://…`, reading through the node's shard
cache with the local copy's batches bit for bit, the cache's budget and eviction, faults of the store and the
network, and bad input. Against a real S3 API: moto's server behind the fault-injecting proxy of s3server.py."""

import hashlib
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_all_end, assert_same_networks, child_pids, logged_steps, start_byol, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from s3server import S3_ENV, make_bucket, s3_server

from byol.augment import get_views
from byol.checkpoint import latest_checkpoint, load_checkpoint
from byol.choices import PrepareSettings
from byol.cli import main
from byol.data import TrainBatches, load_split, use_cache
from byol.data.cache import LOCK, OWN_NAME, Entry, ShardCache
from byol.data.loaders import shard_permutation, shard_runs
from byol.data.remote import Store, parse
from byol.errors import DataError
from byol.prepare import prepare, prepare_to_store

CPU = torch.device("cpu")
VIEWS = get_views("byol")
SETTINGS = PrepareSettings(shard_images=8)


def _photos(root: Path, per_class: int = 20) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (24 + i % 5, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(endpoint, faults, client, source folder, its local prepared copy) with the set uploaded to s3://bkt/set."""
    root = tmp_path_factory.mktemp("s3")
    source = _photos(root / "photos")
    local = root / "local"
    prepare(source, local, SETTINGS, workers=1, progress=False)
    with pytest.MonkeyPatch.context() as patch, s3_server() as (endpoint, faults):
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "XDG_CACHE_HOME": str(root / "home")}.items():
            patch.setenv(key, value)
        client = make_bucket(endpoint, "bkt")
        prepare_to_store(source, "s3://bkt/set", SETTINGS, workers=1, progress=False)
        yield endpoint, faults, client, source, local


@pytest.fixture
def cache(tmp_path):
    use_cache(str(tmp_path / "cache"), 0)
    yield tmp_path / "cache"
    use_cache("", 0)


def _epoch(data_dir, order, workers=0, epoch=0, window=2):
    dataset = load_split("imagefolder", "pretrain", str(data_dir), 16)
    batches = TrainBatches(
        dataset, batch_size=8, seed=3, device=CPU, views=VIEWS, image_size=16, num_workers=workers, order=order,
        window=window,
    )  # fmt: skip
    return dataset, [(b.images, b.second_crop, b.labels, b.indices) for b in batches.epoch(epoch)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(x, y, strict=True))


def test_prepare_uploads_a_set_that_lists_as_the_local_one_and_a_second_prepare_does_nothing(store):
    _, _, client, source, local = store
    keys = {o["Key"][len("set/") :]: o["Size"] for o in client.list_objects_v2(Bucket="bkt")["Contents"]}
    expected = {str(p.relative_to(local)): p.stat().st_size for p in local.rglob("*") if p.is_file()}
    assert keys.keys() == expected.keys() and "prepare.json" not in keys  # the progress object went at the end
    assert all(keys[k] == expected[k] for k in keys if k != "manifest.json")
    again = prepare_to_store(source, "s3://bkt/set", SETTINGS, workers=1, progress=False)
    assert again.already


@pytest.mark.parametrize("order", ["shards", "global"])
def test_batches_from_the_store_are_the_local_copys_bit_for_bit_and_the_second_epoch_fetches_nothing(
    store, cache, order
):
    _, faults, _, _, local = store
    _, expected = _epoch(local, order, epoch=1)
    dataset, got = _epoch("s3://bkt/set", order, workers=2, epoch=1)
    _same(got, expected)
    total = sum(entry.size for entry in dataset.remote.entries)
    assert dataset.remote.cache.fetched.value == total  # each shard once
    served, fetched = faults.served, dataset.remote.cache.fetched.value
    _same(_epoch("s3://bkt/set", order, epoch=1)[1], expected)
    assert faults.served == served and dataset.remote.cache.fetched.value == fetched  # the shards: from the cache


def test_the_shard_order_reads_a_window_of_shards_at_a_time_and_ranks_read_disjoint_runs(store, cache):
    _, _, _, _, local = store
    dataset = load_split("imagefolder", "pretrain", str(local), 16)
    shard_of = np.asarray(dataset.index["shard"])
    order = shard_permutation(shard_of, seed=3, epoch=0, window=2).numpy()
    assert sorted(order.tolist()) == list(range(len(shard_of)))
    size = round(2 * len(shard_of) / (shard_of.max() + 1))
    assert all(len(set(shard_of[order[s : s + size]])) <= 3 for s in range(0, len(order), size))
    runs = shard_runs(shard_of, seed=3, epoch=0, world_size=3)
    assert sum(len(r) for r in runs) == len(shard_of) // 3 * 3
    assert all(set(a).isdisjoint(b) for i, a in enumerate(runs) for b in runs[i + 1 :])
    shared = [set(shard_of[a]) & set(shard_of[b]) for i, a in enumerate(runs) for b in runs[i + 1 :]]
    assert all(len(s) <= 1 for s in shared)  # ranks share at most the shard at a cut


def test_faults_of_the_store_are_retried_and_no_wrong_byte_is_read(store, cache, monkeypatch):
    _, faults, _, _, local = store
    monkeypatch.setenv("BYOL_S3_TIMEOUT", "1")
    _, expected = _epoch(local, "shards")
    faults.slow_down, faults.cut, faults.flip, faults.stall, faults.stall_seconds = 3, 2, 2, 1, 3.0
    faults.injected.clear()
    try:
        _, got = _epoch("s3://bkt/set", "shards")
    finally:
        faults.slow_down = faults.cut = faults.flip = faults.stall = 0
    assert faults.injected == {"slow_down": 3, "cut": 2, "flip": 2, "stall": 1}
    _same(got, expected)


def test_a_stalled_part_is_asked_for_again_beside_it_and_the_first_whole_answer_is_used(store, monkeypatch, tmp_path):
    """A hedged request: a GET stalled for longer than its usual time gets a second GET of the same range while the
    first still hangs (the stall lasts until the test ends it, and the client's timeout is a minute, so only a
    hedge asks during it, on a machine of any speed), and the bytes are right and counted for both requests."""
    _, faults, client, _, _ = store
    monkeypatch.setenv("BYOL_S3_TIMEOUT", "60")
    remote = Store(parse("s3://bkt/set"))
    sizes = {name: size for name, size in remote.listing().items() if name.endswith(".tar")}
    name, size = sorted(sizes.items())[0]
    expected = client.get_object(Bucket="bkt", Key=f"set/{name}")["Body"].read()
    fd = os.open(tmp_path / "shard", os.O_RDWR | os.O_CREAT)
    try:
        for _ in range(3):  # the usual time of a part, as the process learns it (a slow machine may hedge one)
            assert remote.fetch(name, size, fd, lambda f: True) in (size, 2 * size)
        faults.stall, faults.stall_seconds, faults.asked_while_stalled = 1, 600.0, 0
        faults.resume = threading.Event()
        faults.injected.clear()
        fetched = remote.fetch(name, size, fd, lambda f: os.pread(f, size + 1, 0) == expected)
    finally:
        faults.stall, faults.stall_seconds = 0, 5.0
        faults.resume.set()  # the stalled GET ends (its answer unused)
        os.close(fd)
    assert faults.injected == {"stall": 1} and faults.asked_while_stalled == 1 and fetched == 2 * size


def test_a_shard_replaced_in_the_store_stops_the_run_naming_it(store, cache, monkeypatch):
    _, _, client, _, _ = store
    monkeypatch.setattr("byol.data.remote.ATTEMPTS", 2)
    dataset = load_split("imagefolder", "pretrain", "s3://bkt/set", 16)
    key = "set/train/shard-000001.tar"
    original = client.get_object(Bucket="bkt", Key=key)["Body"].read()
    client.put_object(Bucket="bkt", Key=key, Body=original[:-1] + bytes([original[-1] ^ 1]))
    try:
        row = int(np.flatnonzero(np.asarray(dataset.index["shard"]) == 1)[0])
        with pytest.raises(DataError, match=r"s3://bkt/set/train/shard-000001.tar could not be fetched intact"):
            dataset.read(row)
        assert not list(cache.rglob("*.part"))  # nothing half-fetched left
    finally:
        client.put_object(Bucket="bkt", Key=key, Body=original)


def _byol(args, capsys):
    """Exit status and the error lines (argparse's usage lines and logged INFO lines left out)."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse's refusal: usage, then one error line
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    return code, [line for line in lines if not line.startswith(("usage:", " ", "INFO", "WARNING"))]


@pytest.mark.parametrize(
    "data_dir, message",
    [
        ("s3://bkt/none", r"s3://bkt/none/manifest.json does not exist"),
        ("s3://no-such-bucket/set", r"bucket 'no-such-bucket' does not exist"),
        ("https://example.com/set", r"only object storage at s3://BUCKET/PREFIX, gs://BUCKET/PREFIX"),
        ("s3://x/set", r"names no valid bucket"),
    ],
)
def test_a_bad_location_is_one_line_exit_2_before_anything_is_written(
    store, cache, tmp_path, capsys, data_dir, message
):
    run = tmp_path / "run"
    code, err = _byol(["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", data_dir,
                       "--run-dir", str(run), "--quiet"], capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and re.search(message, err[0]), err
    assert not run.exists()


def test_no_credentials_is_one_line_exit_2(store, cache, tmp_path, capsys, monkeypatch):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    code, err = _byol(["knn", "--dataset", "imagefolder", "--data-dir", "s3://bkt/set", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1, err
    code, err = _byol(["bench", "data", "--dataset", "imagefolder", "--data-dir", "s3://bkt/set"], capsys)
    assert code == 2 and len(err) == 1 and "no credentials to read s3://bkt/set/manifest.json" in err[0], err


def test_a_cache_too_small_for_the_order_is_refused_before_any_step(store, tmp_path):
    use_cache(str(tmp_path / "cache"), 10_000)
    try:
        dataset = load_split("imagefolder", "pretrain", "s3://bkt/set", 16)
        for order, what in (("global", "the whole set"), ("shards", "11 shards")):
            with pytest.raises(DataError, match=f"data.cache_bytes 10000 cannot hold {what}"):
                TrainBatches(dataset, batch_size=8, seed=0, device=CPU, views=VIEWS, image_size=16, order=order)
    finally:
        use_cache("", 0)


def test_prepare_refuses_a_prefix_holding_other_objects(store, capsys, tmp_path):
    _, _, client, source, _ = store
    client.put_object(Bucket="bkt", Key="other/notes.txt", Body=b"mine")
    code, err = _byol(["prepare", str(source), "--out", "s3://bkt/other", "--quiet"], capsys)
    assert code == 2 and len(err) == 1 and "holds objects that are not a prepared set" in err[0]
    assert client.get_object(Bucket="bkt", Key="other/notes.txt")["Body"].read() == b"mine"


# --- the cache on its own: the budget under any sizes, plans and readers -------------------------------------------
def _entry(data: bytes, log: list) -> Entry:
    def fetch(fd, verify):
        log.append(len(data))
        os.pwrite(fd, data, 0)
        assert verify(fd)
        return len(data)

    return Entry(hashlib.sha256(data).hexdigest(), len(data), fetch)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=2, max_size=12),
    budget_shards=st.integers(1, 6),
    reads=st.lists(st.integers(0, 11), min_size=1, max_size=40),
)
def test_the_cache_never_holds_more_than_its_budget_and_evicts_what_is_needed_last(
    tmp_path_factory, sizes, budget_shards, reads
):
    root = tmp_path_factory.mktemp("cache")
    budget = max(sorted(sizes)[-budget_shards:]) * budget_shards if budget_shards else max(sizes)
    budget = max(budget, max(sizes))
    cache = ShardCache(root, budget)
    log: list[int] = []
    entries = [_entry(bytes([i]) * size, log) for i, size in enumerate(sizes)]
    sequence = [r % len(entries) for r in reads]
    cache.plan([[entries[i].digest for i in sequence]], [], window=0)
    peak = 0
    for position, i in enumerate(sequence):
        cache.advance(position)
        with cache.opened(entries[i]) as fd:
            assert os.pread(fd, entries[i].size, 0) == bytes([i]) * sizes[i]
            peak = max(peak, cache.usage())
    assert peak <= budget and sum(log) == cache.fetched.value


@settings(max_examples=25, deadline=None)
@given(
    foreign=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_.-]{1,70}", fullmatch=True).filter(
            lambda name: name not in (".", "..", LOCK) and not OWN_NAME.fullmatch(name)
        ),
        st.integers(0, 20000),
        max_size=5,
    ),
    sizes=st.lists(st.integers(1, 3000), min_size=2, max_size=6),
)
def test_files_the_cache_did_not_write_are_neither_counted_nor_evicted(tmp_path_factory, foreign, sizes):
    """A user-named data.cache_dir whose objects/ already holds files: they stay, byte for byte, and the budget
    is the cache's own bytes (a foreign file larger than the budget leaves room for the shards)."""
    root = tmp_path_factory.mktemp("cache")
    (root / "objects").mkdir()
    for name, size in foreign.items():
        (root / "objects" / name).write_bytes(name.encode()[:1] * size)
    cache = ShardCache(root, max(sizes))  # room for one shard at a time: every read evicts
    entries = [_entry(bytes([i]) * size, []) for i, size in enumerate(sizes)]
    cache.plan([[entry.digest for entry in entries]], [], window=0)
    for position, entry in enumerate(entries):
        cache.advance(position)
        with cache.opened(entry) as fd:
            assert os.pread(fd, entry.size, 0) == bytes([position]) * sizes[position]
        assert cache.usage() <= max(sizes)
    for name, size in foreign.items():
        assert (root / "objects" / name).read_bytes() == name.encode()[:1] * size


def test_readers_in_several_processes_fetch_a_shard_once(tmp_path):
    import multiprocessing

    data = os.urandom(300_000)
    entry = Entry(hashlib.sha256(data).hexdigest(), len(data), _slow_fetch(data))
    cache = ShardCache(tmp_path, 10**6)
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_read_once, args=(cache, entry, data)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    assert cache.fetched.value == len(data) and cache.usage() == len(data)


def _slow_fetch(data):
    def fetch(fd, verify):
        for start in range(0, len(data), 50_000):
            os.pwrite(fd, data[start : start + 50_000], start)
            threading.Event().wait(0.01)
        assert verify(fd)
        return len(data)

    return fetch


def _read_once(cache, entry, data):
    with cache.opened(entry) as fd:
        assert os.pread(fd, len(data), 0) == data


# --- a run from the store killed and resumed, with the cache kept or emptied -----------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("cache_kept", [True, False], ids=["warm", "cold"])
def test_a_run_from_the_store_killed_and_resumed_ends_with_the_uninterrupted_weights(store, tmp_path, cache_kept):
    args = ["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", "s3://bkt/set",
            "--data.image_size", "16", "--optim.batch_size", "8", "--epochs", "3", "--train.checkpoint_every", "1",
            "--quiet", "--train.deterministic", "true", "--data.num_workers", "2", "--data.cache_dir",
            str(tmp_path / "cache"), "--data.shard_window", "1"]  # fmt: skip
    reference, run = tmp_path / "reference", tmp_path / "killed"
    proc = start_byol([*args, "--run-dir", str(reference)])
    assert proc.wait() == 0, proc.stderr.read()
    shutil.rmtree(tmp_path / "cache")
    proc = start_byol([*args, "--run-dir", str(run)])
    assert wait_until(lambda: logged_steps(run) >= 4, proc, "step 4"), proc.stderr.read()
    children = child_pids(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_all_end(children, "the killed run's workers")
    if not cache_kept:
        shutil.rmtree(tmp_path / "cache")
    proc = start_byol(["pretrain", "--run-dir", str(run), "--resume", "--quiet"])
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr
    a, b = load_checkpoint(latest_checkpoint(reference))["state"], load_checkpoint(latest_checkpoint(run))["state"]
    assert a["step"] == 3 * 7  # 57 train images, batches of 8
    assert_same_networks(a, b)
    assert json.loads((run / "config.json").read_text())["data"]["order"] == "auto"


def test_a_process_forked_while_another_thread_holds_the_cache_lock_does_not_inherit_it(tmp_path):
    """A DataLoader forks its workers while the prefetch threads work: a flock lives as long as any copy of its
    descriptor, so a child that kept the copy would hold the cache's lock for good (every reader then waits)."""
    import multiprocessing

    cache = ShardCache(tmp_path, 10**6)
    holding, release = threading.Event(), threading.Event()

    def hold():
        with cache._locked():
            holding.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    child = multiprocessing.get_context("fork").Process(target=_lock_and_exit, args=(cache,))
    child.start()
    release.set()
    thread.join()
    child.join(timeout=20)
    assert child.exitcode == 0  # it took the lock once the parent's thread let it go


def _lock_and_exit(cache):
    with cache._locked():
        pass


@pytest.mark.slow  # end to end, about 3 s: the default suite reads the store through the loaders above
def test_a_run_pretrained_from_the_store_is_evaluated_and_embedded_from_it(store, cache, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", "s3://bkt/set",
                 "--data.image_size", "16", "--optim.batch_size", "8", "--epochs", "1", "--run-dir", str(run),
                 "--quiet", "--data.cache_dir", str(cache)]) == 0  # fmt: skip
    assert main(["knn", str(run), "--quiet"]) == 0
    assert main(["embed", str(run), "--out", str(tmp_path / "e.npz")]) == 0
    embedded = np.load(tmp_path / "e.npz")
    _, _, _, _, local = store
    assert len(embedded["features"]) == len(load_split("imagefolder", "test", str(local), 16))
    capsys.readouterr()
