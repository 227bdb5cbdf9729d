"""Batches for training and evaluation, one interface over in-memory arrays and image folders.

In-memory datasets live on the training device as uint8 and are gathered by index: cropping and the rest of
the view pipeline then run batched on that device. Image folders and prepared shards go through a DataLoader
whose workers decode and crop. Either way the order of an epoch is a seeded permutation of (seed, epoch), so a run
resumed at step k sees exactly the batches it would have seen.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

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
    ) -> None:
        self.dataset, self.batch_size, self.seed, self.device = dataset, batch_size, seed, device
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
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

    def order(self, epoch: int) -> Tensor:
        """This rank's (steps_per_epoch, batch_size) dataset indices of ``epoch``. Step s of every rank together
        is images [s·B, (s+1)·B) of the epoch's permutation (B the global batch) whatever the world size, so a
        run resumed on another number of ranks trains on the same batches."""
        order = epoch_permutation(len(self.dataset), self.seed, epoch, rank=self.rank, world_size=self.world_size)
        return order[: self.steps_per_epoch * self.batch_size].view(self.steps_per_epoch, self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from its ``start_step``-th on."""
        order = self.order(epoch)[start_step:]
        if isinstance(self.dataset, ArrayDataset):
            for indices in order.to(self.device):
                yield Batch(self.images[indices], self.labels[indices])
            return
        self.crops.epoch = epoch
        loader = crops_loader(
            self.crops, self.num_workers, batch_sampler=BatchOrder(order), pin_memory=self.device.type == "cuda"
        )
        for crop1, crop2, labels, skipped, indices in loader:
            yield Batch(
                crop1.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                second_crop=crop2.to(self.device, non_blocking=True), skipped=skipped, indices=indices,
            )  # fmt: skip


def _collate(items: list[Item]) -> tuple[Tensor, Tensor, Tensor, tuple[str, ...], Tensor]:
    """Stacks the items that hold an image (an unreadable one in evaluation holds none and is left out)."""
    kept = [item for item in items if item[0].numel()]
    crop1 = torch.stack([item[0] for item in kept]) if kept else torch.empty(0, dtype=torch.uint8)
    crop2 = torch.stack([item[1] for item in kept]) if kept else crop1
    labels = torch.tensor([item[2] for item in kept], dtype=torch.int64)
    indices = torch.tensor([item[4] for item in kept], dtype=torch.int64)
    return crop1, crop2, labels, tuple(path for item in items for path in item[3]), indices


def eval_batches(
    dataset: Dataset, *, batch_size: int, device: torch.device, image_size: int, num_workers: int = 0
) -> Iterator[Batch]:
    """Every image once, in order, unaugmented (image folders: centre crop at decode time). An unreadable file
    is left out of its batch (``indices`` says which images a batch holds);
    :data:`~byol.data.decode.MAX_CONSECUTIVE_FAILURES` unreadable files in a row stop with :class:`DataError`."""
    if isinstance(dataset, ArrayDataset):
        for start in range(0, len(dataset), batch_size):
            yield Batch(
                dataset.images[start : start + batch_size].to(device),
                dataset.labels[start : start + batch_size].to(device),
            )
        return
    loader = crops_loader(FolderCrops(dataset, size=image_size, views=None), num_workers, batch_size=batch_size)
    failures = 0
    for crop, _, labels, skipped, indices in loader:
        failures = failures + len(skipped) if not len(indices) else len(skipped)
        if failures >= decode.MAX_CONSECUTIVE_FAILURES:
            raise DataError(f"{failures} unreadable images in a row in {dataset.name}: the dataset looks broken")
        if len(indices):
            yield Batch(crop.to(device), labels.to(device), skipped=skipped, indices=indices)
