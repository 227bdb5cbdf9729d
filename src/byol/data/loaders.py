"""Batches for training and evaluation, one interface over in-memory arrays and image folders.

In-memory datasets live on the training device as uint8 and are gathered by index: cropping and the rest of
the view pipeline then run batched on that device. Image folders and prepared shards go through a DataLoader
whose workers decode and crop. Either way the order of an epoch is a seeded permutation of (seed, epoch), so a run
resumed at step k sees exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byol.augment.pipeline import ViewConfig
from byol.data import decode
from byol.data.arrays import ArrayDataset
from byol.data.decode import FolderCrops, Item
from byol.data.folder import ImageFolder
from byol.data.shards import ShardSet
from byol.errors import DataError
from byol.files import libc
from byol.processes import die_with_parent

Files = (ImageFolder, ShardSet)  # datasets of image files, decoded and cropped by DataLoader workers
Dataset = ArrayDataset | ImageFolder | ShardSet


@dataclass
class Batch:
    """uint8 images (N, C, H, W) on the device and their labels. For image folders, ``images`` is the first
    view's decoded crop and ``second_crop`` the second's; ``skipped`` lists files that could not be read and
    ``indices`` the dataset's indices of the images (None: in order from the batch's start, in-memory data)."""

    images: Tensor
    labels: Tensor
    second_crop: Tensor | None = None
    skipped: tuple[str, ...] = ()
    indices: Tensor | None = None


def epoch_permutation(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> Tensor:
    """The shuffled order of an epoch, identical on every rank; each rank takes every world_size-th index."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)[rank::world_size]


def shard_runs(shard_of: np.ndarray, seed: int, epoch: int, world_size: int) -> list[np.ndarray]:
    """Order ``shards`` before the shuffle within windows: the epoch's permutation of the shards, their images
    in stored order, cut into ``world_size`` contiguous runs of ``n // world_size`` images, one per rank (ranks
    share at most the shard at each cut)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    counts = np.bincount(shard_of)
    shards = torch.randperm(len(counts), generator=generator).numpy()
    by_shard = np.argsort(shard_of, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sequence = np.concatenate([by_shard[starts[s] : starts[s] + counts[s]] for s in shards])
    m = len(shard_of) // world_size
    return [sequence[r * m : (r + 1) * m] for r in range(world_size)]


def shard_permutation(
    shard_of: np.ndarray, seed: int, epoch: int, window: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """This rank's order of an epoch under data.order shards: its run of :func:`shard_runs`, shuffled within
    consecutive windows of ``window`` shards' worth of images. A pure function of (index, seed, epoch, window,
    rank, world size): the same batches from a local copy as from object storage, and on resume."""
    run = shard_runs(shard_of, seed, epoch, world_size)[rank]
    state = np.random.SeedSequence([seed, epoch, rank, world_size]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(state))
    size = max(1, round(window * len(shard_of) / (int(shard_of.max()) + 1)))
    order = torch.from_numpy(run.astype(np.int64))
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        order[start : start + size] = chunk[torch.randperm(len(chunk), generator=generator)]
    return order


def first_uses(shards: np.ndarray) -> list[int]:
    """The distinct shard numbers of a run in the order they are first read."""
    _, first = np.unique(shards, return_index=True)
    return [int(shards[i]) for i in sorted(first)]


@dataclass
class Plan:
    """The shards the ranks of this node read, in order: ``now[r]`` this epoch (local rank r), ``later[r]`` the
    next; ``mine`` this rank's still to read, from position ``first`` of its sequence on, and ``behind`` how many
    shards behind the newest read may still be read."""

    now: list[list[int]]
    later: list[list[int]]
    mine: list[int]
    first: int
    behind: int


@contextlib.contextmanager
def streaming(dataset: Dataset, plan: Plan | None) -> Iterator[Callable[[], None]]:
    """For a prepared set in object storage: tells its cache the node's ``plan`` and yields ``start``, which
    begins fetching this rank's shards ahead of the readers; call it once the DataLoader has forked. The
    prefetchers stop on exit. Elsewhere a no-op."""
    shared = getattr(dataset, "remote", None)
    if shared is None or plan is None:
        yield lambda: None
        return
    entries = shared.entries
    shared.store.client()  # made here, before the workers fork and the prefetch threads start: they inherit it
    digests = [[[entries[s].digest for s in run] for run in runs] for runs in (plan.now, plan.later)]
    shared.cache.plan(digests[0], digests[1], plan.behind)
    positions = [plan.first + i for i in range(len(plan.mine))]
    try:
        yield lambda: shared.cache.prefetch([entries[s] for s in plan.mine], positions)
    finally:
        shared.cache.stop()


MMAP_THRESHOLD = 128 * 1024  # bytes: larger allocations get their own mapping, returned to the system when freed


def steady_heap(worker_id: int = 0) -> None:
    """Fixes glibc's mmap threshold in a DataLoader worker. Left dynamic, glibc raises it after the first large
    free, and from then on the decode buffers (a few hundred KB each) come from the heap, which fragments: a worker
    grew by 55 MB of heap over 1,500 batches. Fixed at 128 KB, its memory stays flat (docs/data.md). A no-op
    where the C library is not glibc."""
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is None:
        return
    mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD (malloc.h); setting it also turns off the dynamic adjustment
    mallopt(-1, MMAP_THRESHOLD)  # M_TRIM_THRESHOLD: give freed heap tops back too


def _start_worker(parent: int, worker_id: int) -> None:
    """A DataLoader worker's first act: end with the process that forked it, however it ends (torch's own check
    of the parent runs every few seconds; this ends it at once), then :func:`steady_heap`."""
    die_with_parent(parent)
    steady_heap(worker_id)


def crops_loader(crops: FolderCrops, num_workers: int, **sampling: Any) -> Iterator:
    """The batches of ``crops`` (``sampling``: the DataLoader's batch_size or batch_sampler, pin_memory) from
    ``num_workers`` workers, each ending with its parent and with :func:`steady_heap`, forked with every object
    that exists now frozen out of the garbage collector (``gc.freeze``). A worker's full collections would
    otherwise write to the header of every object it inherited, copying each page that holds one: measured, 45 MB
    more per worker by the end of a million-image epoch under the command line (docs/data.md). The parent
    unfreezes at once; the workers keep them frozen. Iterate it from the thread that will outlive the loop (the
    main one): a worker ends when the thread that forked it ends."""
    loader = torch.utils.data.DataLoader(
        crops,
        num_workers=num_workers,
        collate_fn=_collate,
        worker_init_fn=partial(_start_worker, os.getpid()),
        **sampling,
    )
    if not num_workers:
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)  # forks the workers
    finally:
        gc.unfreeze()


class BatchOrder:
    """The batches of an epoch's order, (steps, batch) indices, as lists one batch at a time: a million-image
    epoch is never a million Python ints."""

    def __init__(self, order: Tensor) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[list[int]]:
        return (row.tolist() for row in self.order)


class TrainBatches:
    """Shuffled, full batches (the last partial batch of an epoch is dropped) of a dataset."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        device: torch.device,
        views: tuple[ViewConfig, ViewConfig] | None = None,
        image_size: int = 224,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        order: str = "global",
        window: int = 4,
    ) -> None:
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.by_shards, self.window = resolve_order(order, dataset) == "shards", window
        self.steps_per_epoch = len(dataset) // world_size // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"dataset {dataset.name} has {len(dataset)} images, fewer than one batch of "
                f"{batch_size} per rank on {world_size} rank(s); lower optim.batch_size to at most "
                f"{len(dataset) // world_size}"
            )
        if isinstance(dataset, ArrayDataset):
            self.images = dataset.images.to(device)
            self.labels = dataset.labels.to(device)
        else:
            if views is None:
                raise ValueError("image folders need the view configs to crop at decode time")
            self.crops = FolderCrops(dataset, size=image_size, views=views, seed=seed)
        if isinstance(dataset, ShardSet):
            self.shard_of = np.asarray(dataset.index["shard"])
            # the shards behind the newest read that a reader may still be reading: a window, and the batches the
            # DataLoader has in flight (two per worker, torch's prefetch_factor, and the one being consumed)
            in_flight = (2 * num_workers + 1) * batch_size * (int(self.shard_of.max()) + 1) / len(self.shard_of)
            self.behind = window + math.ceil(in_flight)
            check_budget(dataset, self.by_shards, window, self.behind, local_ranks(rank, world_size))

    def order(self, epoch: int) -> Tensor:
        """This rank's (steps_per_epoch, batch_size) dataset indices of ``epoch``. Order global: step s of every
        rank together is images [s·B, (s+1)·B) of the epoch's permutation (B the global batch) whatever the
        world size, so a run resumed on another number of ranks trains on the same batches. Order shards:
        :func:`shard_permutation` (the same batches for the same world size)."""
        if self.by_shards:
            order = shard_permutation(self.shard_of, self.seed, epoch, self.window, self.rank, self.world_size)
        else:
            order = epoch_permutation(len(self.dataset), self.seed, epoch, rank=self.rank, world_size=self.world_size)
        return order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, self.batch_size)

    def plan(self, epoch: int, order: Tensor, start_step: int) -> Plan:
        """The shards each rank of this node reads this epoch and the next, in order, and this rank's from
        ``start_step`` on (see :func:`streaming`); ``order``: this rank's :meth:`order` of ``epoch``."""
        if not self.by_shards:  # every batch reads from every shard
            everything = list(range(len(self.dataset.shards)))  # type: ignore[union-attr]
            return Plan([everything], [everything], everything, 0, len(everything))
        runs_now = shard_runs(self.shard_of, self.seed, epoch, self.world_size)
        runs_later = shard_runs(self.shard_of, self.seed, epoch + 1, self.world_size)
        now, later = [], []
        ranks = local_ranks(self.rank, self.world_size)
        for r in ranks:
            run = order.reshape(-1).numpy() if r == self.rank else runs_now[r]
            now.append(first_uses(self.shard_of[run]))
            later.append(first_uses(self.shard_of[runs_later[r]]))
        mine = first_uses(self.shard_of[order[start_step:].reshape(-1).numpy()])
        sequence = now[self.rank - ranks.start]
        return Plan(now, later, mine, sequence.index(mine[0]) if mine else 0, self.behind)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from its ``start_step``-th on."""
        whole = self.order(epoch)
        order = whole[start_step:]
        if isinstance(self.dataset, ArrayDataset):
            for indices in order.to(self.device):
                yield Batch(self.images[indices], self.labels[indices])
            return
        self.crops.epoch = epoch
        plan = self.plan(epoch, whole, start_step) if isinstance(self.dataset, ShardSet) else None
        with streaming(self.dataset, plan) as start_fetching:
            loader = crops_loader(
                self.crops, self.num_workers, batch_sampler=BatchOrder(order), pin_memory=self.device.type == "cuda"
            )
            start_fetching()
            for crop1, crop2, labels, skipped, indices in loader:
                yield Batch(
                    crop1.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                    second_crop=crop2.to(self.device, non_blocking=True), skipped=skipped, indices=indices,
                )  # fmt: skip


def resolve_order(order: str, dataset: Dataset) -> str:
    """data.order for ``dataset``: auto is shards for a prepared set in object storage and global elsewhere;
    shards needs a prepared set (its index says which shard holds each image)."""
    if order == "auto":
        return "shards" if getattr(dataset, "remote", None) is not None else "global"
    if order == "shards" and not isinstance(dataset, ShardSet):
        raise DataError(
            "data.order shards reads a set `byol prepare` wrote (shard by shard); this dataset is not one: use "
            "data.order global or auto, or prepare the folder"
        )
    return order


def local_ranks(rank: int, world_size: int) -> range:
    """The ranks on this node (torchrun's LOCAL_RANK and LOCAL_WORLD_SIZE; one rank when they are unset)."""
    local = int(os.environ.get("LOCAL_RANK", 0)) if world_size > 1 else 0
    size = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if world_size > 1 else 1
    return range(rank - local, min(world_size, rank - local + size))


def shards_at_once(window: int, behind: int) -> int:
    """The shards one rank of order shards holds in the cache at once: those still being read (``behind``), the
    next window, one being fetched."""
    return behind + window + 1


def check_budget(dataset: ShardSet, by_shards: bool, window: int, behind: int, ranks: range) -> None:
    """A cache that cannot hold what the order reads at once is refused before any step: order global reads
    every shard in every batch (the whole set must fit), order shards :func:`shards_at_once` per rank of the
    node."""
    if dataset.remote is None:
        return
    cache, sizes = dataset.remote.cache, [entry.size for entry in dataset.remote.entries]
    shards = shards_at_once(window, behind)
    need = sum(sizes) if not by_shards else min(sum(sizes), shards * max(sizes) * len(ranks))
    if cache.budget < need:
        what = f"{shards} shards of up to {max(sizes)} bytes per rank on this node"
        if not by_shards:
            what = "the whole set (data.order global reads every shard in every batch)"
        raise DataError(
            f"data.cache_bytes {cache.budget} cannot hold {what}, {need} bytes; raise data.cache_bytes"
            + (", or lower data.shard_window" if by_shards else ", or use data.order shards")
        )


def _collate(items: list[Item]) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], Tensor]:
    """Stacks the items that hold an image (an unreadable one in evaluation holds none and is left out)."""
    kept = [item for item in items if item[0].numel()]
    crop1 = torch.stack([item[0] for item in kept]) if kept else torch.empty(0, dtype=torch.uint8)
    crop2 = torch.stack([item[1] for item in kept]) if kept else crop1
    labels = torch.tensor([item[2] for item in kept], dtype=torch.int64)
    indices = torch.tensor([item[4] for item in kept], dtype=torch.int64)
    return crop1, crop2, labels, tuple(path for item in items for path in item[3]), indices


def eval_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    device: torch.device,
    image_size: int,
    num_workers: int = 0,
    whole: bool = False,
) -> Iterator[Batch]:
    """Every image once, in order, unaugmented (image folders: centre crop at decode time, or the whole image
    with ``whole``; in-memory sets are always whole). An unreadable file
    is left out of its batch (``indices`` says which images a batch holds);
    :data:`~byol.data.decode.MAX_CONSECUTIVE_FAILURES` unreadable files in a row stop with :class:`DataError`."""
    if isinstance(dataset, ArrayDataset):
        for start in range(0, len(dataset), batch_size):
            yield Batch(
                dataset.images[start : start + batch_size].to(device),
                dataset.labels[start : start + batch_size].to(device),
            )
        return
    sequence = first_uses(np.asarray(dataset.index["shard"])) if isinstance(dataset, ShardSet) else []
    with streaming(dataset, Plan([sequence], [], sequence, 0, 1) if sequence else None) as start_fetching:
        crops = FolderCrops(dataset, size=image_size, views=None, whole=whole)
        loader = crops_loader(crops, num_workers, batch_size=batch_size)
        start_fetching()
        failures = 0
        for crop, _, labels, skipped, indices in loader:
            failures = failures + len(skipped) if not len(indices) else len(skipped)
            if failures >= decode.MAX_CONSECUTIVE_FAILURES:
                raise DataError(f"{failures} unreadable images in a row in {dataset.name}: the dataset looks broken")
            if len(indices):
                yield Batch(crop.to(device), labels.to(device), skipped=skipped, indices=indices)
