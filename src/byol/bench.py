"""Benchmarks: they print numbers and assert nothing. Timings are medians over rounds, after warm-up; what is
compared (eager and compiled, a step and its bare network) is timed in turn within each round (:func:`interleaved`).

``bench_augment`` times the view pipeline alone (256 images at 32, 96 and 224 px) and its share of a full
training step of a preset. ``bench_step`` (issue 7) splits a step into network work and everything else.
``bench_data`` times what a DataLoader worker does for an image folder or a prepared one (decode and both
views' crops) on one core, and says how many workers a step of a given length needs; ``bench_pass`` reads a whole
epoch of one through the training DataLoader (no training) and reports its rate and its processes' memory.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from byol.augment import TwoViews, get_views
from byol.compiling import CompiledOrEager
from byol.config import Config, apply_overrides
from byol.data import Batch, Files, ImageFolder, ShardSet, TrainBatches, load_split, use_cache
from byol.data.decode import FolderCrops
from byol.distributed import resolve_device
from byol.errors import ConfigError
from byol.precision import flush_denormals
from byol.train import Schedule, ViewPrefetch, compile_networks, create_state, train_step

# (channels, native size) of the in-memory datasets, so benchmarks need no files: inputs are random bytes.
NATIVE_SHAPE = {"fashion-mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32), "stl10": (3, 96)}
AUGMENT_SIZES = (32, 96, 224)  # the view sizes of CIFAR, STL-10 and ImageNet


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timed:
    """Median seconds eager, and compiled with the seconds its compiling took (None: not compiled)."""

    eager_s: float
    compiled_s: float | None = None
    compile_s: float | None = None


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall seconds of each of ``fns``, called in turn, one call each per round, after ``warmup`` calls each;
    synchronising the device, with denormals flushed on a CPU, as the training loop runs
    (:func:`byol.precision.flush_denormals`).

    On a machine whose speed drifts (a shared VM: one command measured the same step at 65 and at 100 ms a
    minute apart), timing one function after the other compares them on different machines; in turn, every
    round compares them on the same one, and :func:`paired_ratio` keeps that."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    with flush_denormals(device):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return times


def step_times(fn: Callable[[], object], device: torch.device, repeats: int = 10, warmup: int = 2) -> list[float]:
    """Wall seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls (:func:`interleaved`, alone)."""
    return interleaved({"fn": fn}, device, repeats, warmup)["fn"]


def first_call_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``: for a compiled ``fn`` its first call, which compiles."""
    return step_times(fn, device, repeats=1, warmup=0)[0]


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over rounds of one function's seconds over another's in the same round (:func:`interleaved`)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def timed(times: dict[str, list[float]], name: str, first_s: dict[str, float]) -> Timed:
    """``name``'s medians from :func:`interleaved`, eager and, where ``compiled name`` was timed, compiled (its
    compile seconds: its first call's less a compiled call's)."""
    result = Timed(statistics.median(times[name]))
    if f"compiled {name}" in times:
        result.compiled_s = statistics.median(times[f"compiled {name}"])
        result.compile_s = max(first_s[f"compiled {name}"] - result.compiled_s, 0.0)
    return result


def _compile_views(views: TwoViews) -> TwoViews:
    torch._dynamo.reset()  # each size its own graphs: the shared function's recompile limit counts every size
    views.compile(lambda function: CompiledOrEager(function, "views"))
    return views


@dataclass
class AugmentTiming:
    image_size: int
    pairs: Timed

    @property
    def pairs_per_s(self) -> float:
        return 256 / self.pairs.eager_s


def bench_augment(config: Config, repeats: int = 10) -> tuple[list[AugmentTiming], Timed, Timed]:
    """Pairs/s of the T/T' pipeline on 256 RGB images per size, eager and (unless ``train.compile false``)
    compiled; then, for the preset's own batch, the seconds of the views and of a whole training step (views
    included), the same two ways."""
    device = resolve_device(config.train.device)
    generator = torch.Generator(device=device).manual_seed(0)
    compiled = config.train.compile != "false"
    timings = []
    for size in AUGMENT_SIZES:
        images = torch.randint(0, 256, (256, 3, size, size), dtype=torch.uint8, device=device)
        pipeline = functools.partial(TwoViews, config.augment.preset, size, mean=[0.5] * 3, std=[0.25] * 3)
        fns: dict[str, Callable[[], object]] = {"views": functools.partial(pipeline(), images, generator)}
        first_s = {}
        if compiled:  # a second pipeline, compiled
            fns["compiled views"] = functools.partial(_compile_views(pipeline()), images, generator)
            first_s["compiled views"] = first_call_seconds(fns["compiled views"], device)
        timings.append(AugmentTiming(size, timed(interleaved(fns, device, repeats), "views", first_s)))

    f = StepFixture(config, device, generator)
    fns, first_s = {"views": f.views_only, "step": f.step}, {}
    if compiled:
        c = StepFixture(config, device, generator, compiled=True)
        fns.update({"compiled views": c.views_only, "compiled step": c.step})
        first_s = {name: first_call_seconds(fns[name], device) for name in ("compiled views", "compiled step")}
    times = interleaved(fns, device, repeats)
    view, step = timed(times, "views", first_s), timed(times, "step", first_s)
    return timings, view, step


@dataclass
class StepTiming:
    device: str
    precision: str
    step: Timed
    network_s: float
    views: Timed
    ratio: float  # full step / bare network, the median of per-round ratios (:func:`paired_ratio`)
    compiled_ratio: float | None = None  # compiled full step / bare eager network, the same way
    rounds: int = 0


class StepFixture:
    """A preset's training state and one batch of random images of its dataset's shape; ``compiled``: its networks
    and views compiled."""

    def __init__(
        self, config: Config, device: torch.device, generator: torch.Generator, compiled: bool = False
    ) -> None:
        channels, native = NATIVE_SHAPE.get(config.data.dataset, (3, config.data.image_size))
        batch = config.optim.batch_size
        self.images = torch.randint(0, 256, (batch, channels, native, native), dtype=torch.uint8, device=device)
        self.labels = torch.randint(0, 10, (batch,), device=device)
        a = config.augment
        self.views = TwoViews(a.preset, config.data.image_size, mean=[0.5] * channels, std=[0.25] * channels,
                              crop_min_scale=a.crop_min_scale)  # fmt: skip
        self.generator = generator
        # the config's own lr, τ and schedules, far from their end; no warm-up, so the first step's lr is not 0
        endless = apply_overrides(config, {"train.max_steps": 1_000_000, "optim.warmup_epochs": 0})
        schedule = Schedule.create(endless, steps_per_epoch=1000)
        self.state = create_state(config, in_channels=channels, num_classes=10, device=device, schedule=schedule)
        if compiled:
            compile_networks(self.state)
            _compile_views(self.views)
        self.prefetch = ViewPrefetch(self.views, generator, device)
        self.batches = self.prefetch.epoch(itertools.repeat(Batch(self.images, self.labels)))

    def views_only(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views(self.images, self.generator)

    def step(self) -> dict[str, Any]:
        """A step as the training loop runs it: the next batch's views are made during this one."""
        _, view_batch = next(self.batches)
        return train_step(self.state, view_batch, overlap=self.prefetch.prepare)


def bench_step(config: Config, repeats: int = 30) -> StepTiming:
    """Median seconds of the full step and of the view pipeline, eager and (unless ``train.compile false``)
    compiled, and of the bare eager network work inside the step."""
    device = resolve_device(config.train.device)
    eager = apply_overrides(config, {"train.compile": "false"})
    f = StepFixture(eager, device, torch.Generator(device=device).manual_seed(0))
    state = f.state
    v1, v2 = (state.precision.input(v) for v in f.views_only())
    target = state.target if state.target is not None else state.online

    def network() -> None:
        with state.precision.context(device):
            out1, out2 = state.online(v1), state.online(v2)
            with torch.no_grad():
                target(v1), target(v2)
        (out1.p.float().sum() + out2.p.float().sum()).backward()

    fns: dict[str, Callable[[], object]] = {"step": f.step, "network": network, "views": f.views_only}
    first_s = {}
    if config.train.compile != "false":
        c = StepFixture(eager, device, torch.Generator(device=device).manual_seed(0), compiled=True)
        for name, fn in (("compiled views", c.views_only), ("compiled step", c.step)):  # views, then networks
            fns[name], first_s[name] = fn, first_call_seconds(fn, device)
    times = interleaved(fns, device, repeats)
    step, views = timed(times, "step", first_s), timed(times, "views", first_s)
    ratios = {name: paired_ratio(times[name], times["network"]) for name in ("step", "compiled step") if name in times}
    return StepTiming(
        device=str(device),
        precision=state.precision.name,
        step=step,
        network_s=statistics.median(times["network"]),
        views=views,
        ratio=ratios["step"],
        compiled_ratio=ratios.get("compiled step"),
        rounds=repeats,
    )


def _side_by_side(t: Timed, per: int, unit: str) -> str:
    text = f"{t.eager_s * 1e3:8.1f} ms {per / t.eager_s:9.0f} {unit} eager"
    if t.compiled_s is not None:
        text += (f" | {t.compiled_s * 1e3:8.1f} ms {per / t.compiled_s:9.0f} {unit} compiled "
                 f"({t.eager_s / t.compiled_s:.2f}x, compiled in {t.compile_s:.1f} s)")  # fmt: skip
    return text


def format_augment(config: Config, preset: str, timings: list[AugmentTiming], view: Timed, step: Timed) -> str:
    batch = config.optim.batch_size
    lines = [
        f"view pipeline (T and T', preset {config.augment.preset!r}), 256 RGB images, "
        f"device {resolve_device(config.train.device)}:",
        *(f"  {t.image_size:>4} px: {_side_by_side(t.pairs, 256, 'view pairs/s')}" for t in timings),
        f"preset {preset!r} ({config.data.dataset}, {config.data.image_size} px, batch {batch}):",
        f"  views:      {_side_by_side(view, batch, 'images/s')}",
        f"  whole step: {_side_by_side(step, batch, 'images/s')}",
        f"  view pipeline share of the step: {100 * view.eager_s / step.eager_s:.1f}% eager"
        + (f", {100 * view.compiled_s / step.compiled_s:.1f}% compiled" if view.compiled_s and step.compiled_s
           else ""),
    ]  # fmt: skip
    return "\n".join(lines)


def format_step(config: Config, preset: str, r: StepTiming) -> str:
    batch = config.optim.batch_size
    lines = [
        f"training step, preset {preset!r}, batch {batch}, {config.data.image_size} px, device {r.device}, "
        f"precision {r.precision}:",
        f"  full step (views + step): {_side_by_side(r.step, batch, 'images/s')}",
        f"  bare network work:        {r.network_s * 1e3:8.1f} ms {batch / r.network_s:9.0f} images/s eager",
        f"  view pipeline:            {_side_by_side(r.views, batch, 'images/s')}",
        f"  full step / bare eager network: {r.ratio:.3f} eager"
        + (f", {r.compiled_ratio:.3f} compiled" if r.compiled_ratio is not None else "")
        + f" (the median of {r.rounds} rounds' ratios: each round times every line once, in turn)",
    ]  # fmt: skip
    return "\n".join(lines)


@dataclass
class DataTiming:
    folder: ImageFolder | ShardSet
    scan_s: float  # the folder scan (walking the tree, sorting, labels)
    images: int  # images timed
    reduced_s: float  # seconds for them, decoded at the size the views need
    full_s: float  # the same images, every file decoded in full

    def per_core(self, seconds: float) -> float:
        return self.images / seconds


def _open_files(config: Config) -> tuple[ImageFolder | ShardSet, float]:
    """The config's pretraining split, an image folder or a prepared one, and the seconds it took to open."""
    d = config.data
    start = time.perf_counter()
    use_cache(d.cache_dir, d.cache_bytes)
    folder = load_split(d.dataset, "pretrain", d.data_dir, d.image_size, d.labels)
    if not isinstance(folder, Files):
        raise ConfigError(f"bench data reads image folders (--dataset imagefolder --data-dir DIR), not {d.dataset}")
    return folder, time.perf_counter() - start


def bench_data(config: Config, images: int = 200, full: bool = True) -> DataTiming:
    """A worker's decode + both views' crops for ``images`` files of the config's image folder (seeded sample),
    on one thread, after one warm-up image; ``full``: the same files decoded in full too."""
    d = config.data
    folder, scan_s = _open_files(config)
    chosen = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[:images].tolist()
    views = get_views(config.augment.preset, config.augment.crop_min_scale)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = {}
        for reduced in (True, False) if full else (True,):
            crops = FolderCrops(folder, size=d.image_size, views=views, seed=config.train.seed, reduced=reduced)
            crops[chosen[0]]  # warm-up: the first decode loads libraries and fills caches
            start = time.perf_counter()
            for index in chosen:
                crops[index]
            seconds[reduced] = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return DataTiming(folder, scan_s, len(chosen), seconds[True], seconds.get(False, math.nan))


def workers_needed(images_per_s: float, batch: int, step_s: float) -> int:
    """DataLoader workers (one core each) that decode a batch of ``batch`` images within ``step_s`` seconds."""
    return max(1, math.ceil(batch / (images_per_s * step_s)))


def format_data(config: Config, t: DataTiming, step_ms: tuple[float, ...], world_size: int = 1) -> str:
    d, batch = config.data, config.optim.batch_size // world_size
    rate = t.per_core(t.reduced_s)
    lines = [
        f"{_what(t.folder)}: opened in {t.scan_s:.2f} s",
        f"decode + both views' crops at {d.image_size} px (augment preset {config.augment.preset!r}), one process, "
        f"one thread, {t.images} images:",
        f"  decoded at the size the views need: {rate:8.1f} images/s per core ({1e3 / rate:.1f} ms an image)",
    ]
    if math.isfinite(t.full_s):
        full = t.per_core(t.full_s)
        lines.append(f"  every file decoded in full:        {full:8.1f} images/s per core ({rate / full:.2f}x slower)")
    lines.append(f"workers that keep a step of batch {batch} fed (data.num_workers; each takes one core):")
    lines += [f"  a {ms:g} ms step: {workers_needed(rate, batch, ms / 1e3)}" for ms in step_ms]
    return "\n".join(lines)


@dataclass
class PassTiming:
    folder: ImageFolder | ShardSet
    open_s: float  # reading the folder's listing or index
    images: int  # images read and cropped (the epoch's full batches)
    seconds: float
    skipped: int  # unreadable files passed over
    workers: int
    memory: dict[str, tuple[float, float]]  # process -> (PSS, USS) in MB, as the epoch's last batch arrived


def memory_mb(pid: int | str = "self") -> tuple[float, float]:
    """(PSS, USS) of a process in MB from /proc/PID/smaps_rollup (Linux); NaNs where that cannot be read."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
    except (OSError, ValueError):
        return math.nan, math.nan
    kb = {key: int(value.split()[0]) for key, value in fields.items()}
    return kb["Pss"] / 1024, (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024


def children() -> list[int]:
    """The process ids of this process's children (its DataLoader workers), Linux; empty elsewhere."""
    found: list[int] = []
    for task in os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ():
        try:
            found += [int(pid) for pid in Path(f"/proc/self/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def bench_pass(config: Config, progress: bool = True) -> PassTiming:
    """One epoch of the pretraining split through the training DataLoader (``data.num_workers`` workers, both
    views' crops, no training), on the CPU; the memory of this process and of each worker as its last batch
    arrives."""
    from tqdm import tqdm

    d = config.data
    folder, open_s = _open_files(config)
    batches = TrainBatches(
        folder, batch_size=config.optim.batch_size, seed=config.train.seed, device=torch.device("cpu"),
        views=get_views(config.augment.preset, config.augment.crop_min_scale), image_size=d.image_size,
        num_workers=d.num_workers, order=d.order, window=d.shard_window,
    )  # fmt: skip
    images = skipped = 0
    memory: dict[str, tuple[float, float]] = {}
    start = time.perf_counter()
    with tqdm(total=batches.steps_per_epoch, unit="batch", desc="reading", disable=not progress) as bar:
        for step, batch in enumerate(batches.epoch(0)):
            images, skipped = images + len(batch.images), skipped + len(batch.skipped)
            if step == batches.steps_per_epoch - 1:
                memory["main"] = memory_mb()
                memory.update({f"worker {i}": memory_mb(pid) for i, pid in enumerate(children())})
            bar.update()
    return PassTiming(folder, open_s, images, time.perf_counter() - start, skipped, d.num_workers, memory)


def format_pass(config: Config, t: PassTiming) -> str:
    lines = [
        f"{_what(t.folder)}: opened in {t.open_s:.2f} s",
        f"one epoch, {t.images} images (full batches of {config.optim.batch_size}), both views' crops at "
        f"{config.data.image_size} px, {t.workers} worker(s), no training: {t.seconds:.1f} s, "
        f"{t.images / t.seconds:.1f} images/s" + (f"; {t.skipped} unreadable file(s) passed over" if t.skipped else ""),
    ]
    lines += [f"  memory of {name}: PSS {pss:.1f} MB, USS {uss:.1f} MB" for name, (pss, uss) in t.memory.items()]
    return "\n".join(lines)


def _what(folder: ImageFolder | ShardSet) -> str:
    return f"image folder {folder.root} ({folder.layout}, {len(folder)} images{_classes(folder)})"


def _classes(folder: ImageFolder | ShardSet) -> str:
    return f", {len(folder.classes)} classes" if folder.classes else ", unlabelled"
