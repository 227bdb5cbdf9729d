"""`byol prepare`: an image folder, once, into the shards of :mod:`byol.data.shards`.

The source is read as the folder reader reads it (flat, nested or by class; its train split and its val/ and
test/ folders, or the held-out tenth of a labelled folder without them), so a prepared folder has the splits,
labels and image order the folder path would have. Each image is stored once, upright (EXIF orientation
applied), as a JPEG whose long side is at most ``max_side``: a JPEG that already is one (upright, RGB or grey,
small enough) is stored byte for byte; anything else is decoded at the JPEG scale nearest above that size, resized
(Lanczos) and encoded at ``quality``. A file that cannot be decoded is left out and named in ``unreadable.tsv``.

Shard k of a split holds images [k·n, (k+1)·n) of a seeded permutation of its listing (n = ``shard_images``;
with ``shuffle`` off, of the listing itself), each under its key, its place in the listing; the index lists them
by key, so image i of a prepared set is image i of the folder. Shards are written in parallel, one process each,
and independently. A shard is done once its tar and its part file (its index rows,
digest and unreadable files) are in place, both written atomically; a killed run resumes where it stopped with
the same command, keeping finished shards. Nothing is written into the source; the output folder must be new,
empty, or one this command started from the same source and settings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from byol import __version__
from byol.choices import UNREADABLE, PrepareSettings
from byol.data.decode import DECODE_ERRORS, SCALES, load_oriented, open_image, orientation, oriented_size
from byol.data.folder import ImageFolder
from byol.data.shards import FORMAT, INDEX, MANIFEST, ROW, SHARD, file_digest, key_name, read_manifest
from byol.errors import ConfigError, DataError, quoted
from byol.files import atomic_write, remove_debris, write_json
from byol.outputs import Output, check_outputs
from byol.processes import die_with_parent

log = logging.getLogger(__name__)

PROGRESS = "prepare.json"  # the settings of a prepare under way: what makes an unfinished output folder ours
PARTS = "parts"  # per split, one JSON per finished shard until the manifest is written
EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Job:
    """One shard to write: the images of ``split``'s listing at ``keys`` (their places in the listing)."""

    split: str
    number: int
    keys: tuple[int, ...]
    paths: tuple[str, ...]
    relative: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Summary:
    out: Path | str  # a folder, or the URL of a set in object storage
    images: dict[str, int]  # per split, stored
    shards: int
    bytes: int
    unreadable: int
    seconds: float
    already: bool = False  # the folder was prepared before: nothing was done


def source_splits(source: Path, labels: str) -> dict[str, ImageFolder]:
    """The splits of ``source`` the folder reader sees: train, and val/test where the folder has them (a labelled
    folder without them: val, its held-out tenth)."""
    train = ImageFolder.scan(os.fspath(source), "train", labels)
    present = [name for name in EVAL_SPLITS if (source / name).is_dir()]
    splits = {"train": train, **{name: ImageFolder.scan(os.fspath(source), name, labels) for name in present}}
    if train.classes and not present:
        try:
            splits["val"] = ImageFolder.scan(os.fspath(source), "val", labels)
        except DataError:  # too few images for the held-out tenth to hold one
            log.warning("prepare: %s is too small to hold images out for evaluation; only train is prepared", source)
    return splits


def plan(splits: dict[str, ImageFolder], settings: PrepareSettings) -> list[Job]:
    """The shards of each split: ``shard_images`` images each, in the listing's order, or (``shuffle``) in a
    seeded permutation of it, so that a shard of a folder laid out by class holds every class (what a reader that
    streams a few shards at a time needs: data.order shards, webdataset)."""
    jobs = []
    for split, folder in splits.items():
        n = settings.shard_images
        order = np.arange(len(folder))
        if settings.shuffle:
            order = np.random.default_rng(len(folder)).permutation(len(folder))
        for number, first in enumerate(range(0, len(folder), n)):
            keys = order[first : first + n].tolist()
            paths = tuple(folder.paths[k] for k in keys)
            jobs.append(Job(
                split, number, tuple(keys), paths, tuple(os.path.relpath(p, folder.root) for p in paths),
                tuple(int(folder.labels[k]) for k in keys), folder.classes,
            ))  # fmt: skip
    return jobs


def listing_digest(splits: dict[str, ImageFolder]) -> str:
    """A digest of what each split lists (paths and labels): a resume must see the same source."""
    digest = hashlib.sha256()
    for split, folder in splits.items():
        digest.update(f"{split}\0{len(folder)}\0".encode())
        for path, label in zip(folder.paths, folder.labels.tolist(), strict=True):
            digest.update(os.fsencode(path) + f"\0{label}\0".encode())
    return digest.hexdigest()


def encode(path: str, settings: PrepareSettings) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """The JPEG stored for the image at ``path``, its (width, height) and the source's (oriented) size."""
    with open_image(path) as image:
        width, height = oriented_size(image)
        if (image.format == "JPEG" and orientation(image) == 1 and image.mode in ("RGB", "L")
                and max(width, height) <= settings.max_side):  # fmt: skip
            image.load()  # a file that does not decode in full is not stored
            return Path(path).read_bytes(), (width, height), (width, height)
        is_jpeg = image.format == "JPEG"
    long_side = max(width, height)
    scale = next((s for s in SCALES if long_side / s >= settings.max_side), 1) if is_jpeg else 1
    rgb = load_oriented(path, scale)
    if max(rgb.size) > settings.max_side:
        factor = settings.max_side / max(rgb.size)
        size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=settings.quality)
    return buffer.getvalue(), rgb.size, (width, height)


_done: Any = None  # images finished, shared by the worker processes (for the progress bar)


def _start_worker(counter: Any, parent: int) -> None:
    """A pool worker's first act: end with the parent however it ends (SIGKILL included), share the counter."""
    global _done
    die_with_parent(parent)
    _done = counter


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Adds a member; returns the offset of its data in the tar (a member's data is padded to 512-byte blocks)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644  # mtime 0, no owner: the same images give the same shard
    tar.addfile(info, io.BytesIO(data))
    return tar.offset - -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def write_shard(job: Job, out: Path, settings: PrepareSettings) -> dict[str, Any]:
    """Writes shard ``job.number`` of ``job.split`` and then its part file; returns the part."""
    rows: list[tuple[int, ...]] = []
    unreadable: list[tuple[str, str]] = []
    path = out / job.split / SHARD.format(job.number)

    def write(file: Any) -> None:
        with tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for place, source, relative, label in zip(job.keys, job.paths, job.relative, job.labels, strict=True):
                key = key_name(place)
                try:
                    data, (width, height), original = encode(source, settings)
                except DECODE_ERRORS as e:
                    unreadable.append((relative, str(e).replace("\t", " ").replace("\n", " ")))
                else:
                    offset = _member(tar, f"{key}.jpg", data)
                    rows.append((job.number, offset, len(data), label, width, height, place))
                    about = {"source": relative, "width": original[0], "height": original[1]}
                    if label >= 0:  # a labelled set: the class index as WebDataset's .cls, its name in .json
                        _member(tar, f"{key}.cls", str(label).encode())
                        about["class"] = job.classes[label]
                    # a name that is not UTF-8 (bytes kept as surrogates) goes in as its \udcXX escapes: valid JSON
                    # that reads back as the same name
                    _member(
                        tar, f"{key}.json", json.dumps(about, ensure_ascii=False).encode("utf-8", "backslashreplace")
                    )
                if _done is not None:
                    with _done.get_lock():
                        _done.value += 1

    atomic_write(path, write)
    part = {
        "name": path.name, "images": len(rows), "bytes": path.stat().st_size, "sha256": file_digest(path),
        "rows": rows, "unreadable": unreadable,
    }  # fmt: skip
    write_json(_part_path(out, job), part)
    return part


def _part_path(out: Path, job: Job) -> Path:
    return out / PARTS / job.split / f"{SHARD.format(job.number)}.json"


def _finished(out: Path, job: Job) -> dict[str, Any] | None:
    """The part of a shard an earlier run finished (its tar still the size it recorded), else None."""
    try:
        part = json.loads(_part_path(out, job).read_text())
        if (out / job.split / part["name"]).stat().st_size == part["bytes"]:
            return dict(part)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _check_paths(source: Path, out: Path) -> None:
    """The output rules every command follows (``byol.outputs``: not the source, not around it, not a file, not a
    run's files), and one of its own: nothing goes inside the source."""
    if not source.is_dir():
        raise DataError(f"source {quoted(source)} is not a directory of images")
    check_outputs([Output(out, "--out", folder=True)], [source])
    if source.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {quoted(out)} is inside the source {quoted(source)}; name a folder outside it")


def _start(out: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """Makes ``out`` ours for this prepare; its manifest when it is already prepared from the same source and
    settings. Refuses a folder holding anything else, or a prepare of another source or with other settings."""
    manifest = read_manifest(out)
    if manifest is not None:
        if {key: manifest.get(key) for key in identity} == identity:
            return manifest
        raise ConfigError(
            f"--out {quoted(out)} holds a folder prepared from another source or with other settings; "
            "name another --out"
        )
    progress = out / PROGRESS
    if progress.is_file():
        try:
            earlier = json.loads(progress.read_text())
        except ValueError:
            earlier = None
        if earlier != identity:
            raise ConfigError(
                f"--out {quoted(out)} holds an unfinished prepare of another source or with other settings "
                f"(or the source changed since); name another --out, or run it with its own source and settings"
            )
        return None
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {quoted(out)} exists and is not empty; name a new or empty folder")
    write_json(progress, identity)
    return None


def prepare(
    source: Path, out: Path, settings: PrepareSettings = PrepareSettings(), *, workers: int = 0, progress: bool = True
) -> Summary:
    """Prepares ``source`` into ``out`` (see the module's docstring); ``workers``: processes (0: one per core)."""
    started = time.perf_counter()
    _check_paths(source, out)
    splits = source_splits(source, settings.labels)
    identity = _identity(source, settings, splits)
    if (done := _start(out, identity)) is not None:
        return Summary(out, {n: s["images"] for n, s in done["splits"].items()}, 0, 0, 0, 0.0, True)
    for split in splits:  # what killed writers left (their processes gone)
        remove_debris(out / split)
    jobs = plan(splits, settings)
    parts: dict[tuple[str, int], dict[str, Any]] = {}
    for job in jobs:
        if (part := _finished(out, job)) is not None:
            parts[job.split, job.number] = part
    todo = [job for job in jobs if (job.split, job.number) not in parts]
    if parts:
        log.info("prepare: resuming, %d of %d shards already written", len(parts), len(jobs))
    total = sum(len(job.paths) for job in todo)
    for job, part in _run(todo, out, settings, workers or _cores(), total, progress):
        parts[job.split, job.number] = part
    return _finish(out, identity, splits, jobs, parts, time.perf_counter() - started)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _run(
    jobs: list[Job], out: Path, settings: PrepareSettings, workers: int, total: int, progress: bool
) -> Iterator[tuple[Job, dict[str, Any]]]:
    """Each job's part as its shard is finished, over ``workers`` processes (one: in this process)."""
    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="preparing", disable=not progress, dynamic_ncols=True) as bar:
        if workers == 1 or len(jobs) <= 1:
            for job in jobs:
                part = write_shard(job, out, settings)
                bar.update(len(job.paths))
                yield job, part
            return
        context = multiprocessing.get_context("fork")
        counter = context.Value("q", 0)
        with ProcessPoolExecutor(
            min(workers, len(jobs)), context, initializer=_start_worker, initargs=(counter, os.getpid())
        ) as pool:
            pending: dict[Future, Job] = {pool.submit(write_shard, job, out, settings): job for job in jobs}
            try:
                while pending:
                    done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    bar.update(counter.value - bar.n)
                    for future in done:
                        yield pending.pop(future), future.result()
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def _save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


def _finish(
    out: Path, identity: dict[str, Any], splits: dict[str, ImageFolder], jobs: list[Job],
    parts: dict[tuple[str, int], dict[str, Any]], seconds: float,
) -> Summary:  # fmt: skip
    """The index of each split, the unreadable files, then the manifest (which marks the folder prepared)."""
    train = splits["train"]
    entries: dict[str, Any] = {}
    unreadable: list[str] = []
    for split, folder in splits.items():
        mine = [parts[job.split, job.number] for job in jobs if job.split == split]
        rows = np.sort(np.array([tuple(row) for part in mine for row in part["rows"]], dtype=ROW), order="key")
        unreadable += [f"{split}/{path}\t{why}" for part in mine for path, why in part["unreadable"]]
        if not len(rows):
            raise DataError(f"no image of the {split} split of {quoted(folder.root)} could be read")
        _save(out / split / INDEX, rows)
        entries[split] = {
            "images": len(rows), "note": folder.split_note, "bytes": sum(p["bytes"] for p in mine),
            "index_sha256": file_digest(out / split / INDEX),
            "shards": [{key: p[key] for key in ("name", "images", "bytes", "sha256")} for p in mine],
        }  # fmt: skip
    if unreadable:
        atomic_write(out / UNREADABLE, lambda f: f.write(("\n".join(["file\treason", *unreadable]) + "\n").encode()))
    manifest = {
        **identity, "byol": __version__, "layout": train.layout, "classes": list(train.classes),
        "unreadable": len(unreadable), "seconds": round(seconds, 1), "splits": entries,
    }  # fmt: skip
    write_json(out / MANIFEST, manifest)
    with contextlib.suppress(OSError):
        shutil.rmtree(out / PARTS)
        (out / PROGRESS).unlink()
    return Summary(
        out, {split: entry["images"] for split, entry in entries.items()}, len(jobs),
        sum(entry["bytes"] for entry in entries.values()), len(unreadable), seconds,
    )  # fmt: skip


def prepare_to_store(
    source: Path, url: str, settings: PrepareSettings = PrepareSettings(), *, workers: int = 0,
    progress: bool = True,
) -> Summary:  # fmt: skip
    """Prepares ``source`` into object storage at ``url``: first into a staging folder of this package's cache
    (``~/.cache/byol/prepare/<digest of url>``, resumable as a local prepare is), then uploaded: ``prepare.json``
    (what makes the prefix ours), each shard once and whole (a multipart upload appears complete or not at
    all; one already there at its size is not sent again), the indexes, and the manifest last, so a reader
    never sees a half-written set. The staging folder goes once the manifest is up. A prefix holding anything
    but this prepare's own objects is refused."""
    from byol.data import remote
    from byol.files import user_cache_dir

    store = remote.Store(remote.parse(url, "--out"))
    if not source.is_dir():
        raise DataError(f"source {quoted(source)} is not a directory of images")
    present = store.listing()
    stage = user_cache_dir() / "prepare" / hashlib.sha256(store.location.url().encode()).hexdigest()[:16]
    if MANIFEST in present:
        earlier = json.loads(store.get(MANIFEST))
        splits = source_splits(source, settings.labels)
        identity = _identity(source, settings, splits)
        if {key: earlier.get(key) for key in identity} == identity:
            images = {name: entry["images"] for name, entry in earlier["splits"].items()}
            return Summary(url, images, 0, 0, 0, 0.0, True)
        raise ConfigError(
            f"--out {url} holds a set prepared from another source or with other settings; name another prefix"
        )
    if present and PROGRESS not in present:
        raise ConfigError(f"--out {url} holds objects that are not a prepared set; name a new or empty prefix")
    summary = prepare(source, stage, settings, workers=workers, progress=progress)
    manifest = json.loads((stage / MANIFEST).read_text())
    identity = {key: manifest[key] for key in ("format", "source", "settings", "listing")}
    if PROGRESS in present and json.loads(store.get(PROGRESS)) != identity:
        raise ConfigError(
            f"--out {url} holds an unfinished upload of another source or with other settings; name another prefix"
        )
    store.put(PROGRESS, json.dumps(identity).encode())
    from tqdm import tqdm

    files = [f"{split}/{shard['name']}" for split, entry in manifest["splits"].items() for shard in entry["shards"]]
    files += [f"{split}/{INDEX}" for split in manifest["splits"]] + ([UNREADABLE] if manifest["unreadable"] else [])
    total = sum((stage / name).stat().st_size for name in files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="uploading", disable=not progress) as bar:
        for name in files:
            size = (stage / name).stat().st_size
            if present.get(name) != size:
                store.upload(stage / name, name)
            bar.update(size)
    store.put(MANIFEST, (stage / MANIFEST).read_bytes())
    store.delete(PROGRESS)
    shutil.rmtree(stage, ignore_errors=True)
    return dataclasses.replace(summary, out=url)


def _identity(source: Path, settings: PrepareSettings, splits: dict[str, ImageFolder]) -> dict[str, Any]:
    """What makes two prepares the same: format, source, settings and what the source lists."""
    return {
        "format": FORMAT, "source": os.fspath(source.resolve()), "settings": dataclasses.asdict(settings),
        "listing": listing_digest(splits),
    }  # fmt: skip
