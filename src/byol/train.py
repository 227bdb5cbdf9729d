"""BYOL pretraining: explicit state, one step function, and the loop (paper section 3, released ``byol_experiment``).

One step (:func:`train_step`):
  1. lr_k from the warm-up + cosine schedule, τ_k from the cosine EMA schedule;
  2. each view goes through the online network on its own, so BN statistics are per view;
  3. the target network runs both views in train mode (batch statistics) under no_grad;
  4. loss = L(p1, sg z'2) + L(p2, sg z'1) (+ the online probe's cross-entropy on stop-gradient y);
     the paper's ablations (section 5, appendices F and I) change this through :class:`Objective`;
  5. a non-finite loss stops the run before the optimizer touches the weights;
  6. LARS step on θ, then ξ ← τ_k·ξ + (1 − τ_k)·θ.

The loop (:func:`pretrain`, :func:`resume`) feeds it batches and applies the run's policies
(:class:`byol.policies.Policies`): what a non-finite step does, what is logged, when the kNN monitor runs, when a
checkpoint is written. The state a step works on (:class:`TrainState`, its :class:`Schedule` and
:class:`Objective`) is ``byol.state``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from byol import compiling, distributed, policies, rundir
from byol.augment import TwoViews, get_views
from byol.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_resumable,
    run_config,
)
from byol.config import Config, apply_overrides, validate
from byol.data import Batch, Dataset, TrainBatches, labelled, load_split, use_cache
from byol.distributed import DistributedContext, convert_batchnorm, current_context
from byol.ema import target_ema, update_target
from byol.errors import CheckpointError, ConfigError, NonFiniteError, first_line, quoted
from byol.loss import closed_form_predictor, projection_std, unified_loss
from byol.networks import ViewOutputs, build_online_network, input_channels
from byol.optim import LARS, lars_param_groups
from byol.policies import Policies
from byol.precision import Precision, flush_denormals
from byol.schedules import learning_rate
from byol.seeding import seed_everything, set_rng_state
from byol.state import Objective, Schedule, SiameseForward, TrainState

log = logging.getLogger(__name__)


def create_state(
    config: Config, *, in_channels: int, num_classes: int, device: torch.device, schedule: Schedule
) -> TrainState:
    """Fresh networks and optimizer, seeded by ``config.train.seed``, that step along ``schedule``."""
    torch.manual_seed(config.train.seed)
    online = build_online_network(config.model, in_channels).to(device)
    ema_target = config.target.network == "ema"
    target = online.make_target(copy_weights=config.target.init == "copy").to(device) if ema_target else None
    networks = [online] if target is None else [online, target]
    context, precision = current_context(), Precision.for_run(config.train, device)
    for network in networks:  # cross-replica BN under torchrun, as the released code; before the optimizer sees θ
        precision.prepare(convert_batchnorm(network) if context.enabled else network)
    # the online probe: on the labelled images of the batches, where there are classes (num_classes 0: none)
    with_probe = config.train.online_probe and num_classes > 0
    probe = nn.Linear(online.encoder.out_dim, num_classes).to(device) if with_probe else None
    modules = nn.ModuleDict({"online": online, **({"probe": probe} if probe is not None else {})})
    o = config.optim
    scales = {"online.predictor": o.predictor_lr_scale, "online.projector": o.projector_lr_scale}
    groups = lars_param_groups(
        modules, o.weight_decay, scales, adaptation=o.optimizer == "lars", exclude=o.exclude_bias_and_norm
    )
    optimizer = LARS(groups, weight_decay=o.weight_decay, momentum=o.momentum, eta=o.eta)
    generator = torch.Generator(device=device).manual_seed(config.train.seed)
    forward: nn.Module = SiameseForward(online, probe)
    if context.enabled:  # gradients averaged across ranks by DDP
        with warnings.catch_warnings():  # broadcast_buffers=False is the portable spelling across torch versions
            warnings.simplefilter("ignore", FutureWarning)
            forward = DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        generator.manual_seed(config.train.seed + 1_000_003 * context.rank)  # per-rank augmentations
    objective = Objective.from_config(config)
    state = TrainState(
        online=online, target=target, probe=probe, optimizer=optimizer, generator=generator, schedule=schedule,
        objective=objective, precision=precision, forward=forward, target_forward=target,
    )  # fmt: skip
    if config.train.compile == "true":  # "auto" is the loop's to decide (byol.compiling.RunCompiler)
        compile_networks(state)
    return state


def compile_networks(state: TrainState) -> None:
    """The two-view forward and the target compiled (:class:`byol.compiling.CompiledOrEager`); the wrappers share
    their parameters with ``online`` / ``target``, so checkpoints are unchanged. Idempotent."""
    if not isinstance(state.forward, compiling.CompiledOrEager):
        state.forward = compiling.CompiledOrEager(state.forward, "online network")
    if state.target is not None and not isinstance(state.target_forward, compiling.CompiledOrEager):
        state.target_forward = compiling.CompiledOrEager(state.target, "target network")


def _ddp(state: TrainState) -> DistributedDataParallel | None:
    """The run's DistributedDataParallel module (under torchrun), compiled or not; None otherwise."""
    forward = state.forward.eager if isinstance(state.forward, compiling.CompiledOrEager) else state.forward
    return forward if isinstance(forward, DistributedDataParallel) else None


class ViewBatch(NamedTuple):
    """What one step consumes: the two augmented views of a batch (T and T') and its labels (−1: none)."""

    view1: Tensor
    view2: Tensor
    labels: Tensor


def make_views(views: TwoViews, batch: Batch, generator: torch.Generator) -> ViewBatch:
    if batch.second_crop is None:
        return ViewBatch(*views(batch.images, generator), batch.labels)
    view1 = views.t(batch.images, generator, crop=False)
    return ViewBatch(view1, views.t_prime(batch.second_crop, generator, crop=False), batch.labels)


class ViewPrefetch:
    """Batches and their views, the next batch's views made while the current step runs.

    :meth:`prepare` is ``train_step``'s ``overlap``: it runs once the step's backward pass is queued, and
    queues the next batch's views, on a GPU on a side CUDA stream that the device runs beside the backward.
    The views are drawn from the run's generator in the order a sequential loop draws them, so runs and
    resumes are the same; :meth:`generator_state` is the generator as the next batch's views found it
    (what a checkpoint saves).
    """

    def __init__(self, views: TwoViews, generator: torch.Generator, device: torch.device) -> None:
        self.views, self.generator = views, generator
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.source: Iterator[Batch] = iter(())
        self.next: tuple[Batch, ViewBatch, Tensor] | None = None
        self.wait_s = 0.0  # seconds spent waiting for batches, summed; the loop's log reads and resets it

    def epoch(self, batches: Iterable[Batch]) -> Iterator[tuple[Batch, ViewBatch]]:
        self.source, self.next = iter(batches), None
        while self.prepare():  # queued during the last step, or now
            assert self.next is not None
            batch, views, _ = self.next
            self.next = None
            if self.stream is not None:  # the step's kernels wait for its views' kernels
                torch.cuda.current_stream(self.stream.device).wait_stream(self.stream)
            yield batch, views

    def prepare(self) -> bool:
        """Queues the views of the source's next batch unless they are queued already; False at its end."""
        if self.next is not None:
            return True
        started = policies.clock()
        batch = next(self.source, None)
        self.wait_s += policies.clock() - started  # the loop waiting for its data (decode, workers)
        if batch is None:
            return False
        state = self.generator.get_state()
        if self.stream is None:
            self.next = (batch, make_views(self.views, batch, self.generator), state)
            return True
        main = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(main)  # the batch was gathered or copied on the main stream
        with torch.cuda.stream(self.stream):
            views = make_views(self.views, batch, self.generator)
        for tensor in (batch.images, batch.second_crop):  # made on one stream, used on the other: the
            if tensor is not None:  # allocator must not reuse their memory before both are done
                tensor.record_stream(self.stream)
        for tensor in views[:2]:
            tensor.record_stream(main)
        self.next = (batch, views, state)
        return True

    def generator_state(self) -> Tensor:
        return self.next[2] if self.next is not None else self.generator.get_state()


def _loss(state: TrainState, view1: Tensor, view2: Tensor) -> tuple[Tensor, ViewOutputs, Tensor | None]:
    """The objective on one (micro-)batch; returns it, the online outputs of view 1 and the probe's logits."""
    objective = state.objective
    with state.precision.context(view1.device):
        online1, online2, logits = state.forward(view1, view2)  # each view is its own BN batch
        if state.target_forward is not None:
            with torch.no_grad():  # the target runs in train mode: batch statistics, as the online network
                z1, z2 = state.target_forward(view1), state.target_forward(view2)
        else:  # no target network: the online projections (stop-gradient or not, decided by the loss)
            z1, z2 = online1.z, online2.z
    p1, p2 = online1.p.float(), online2.p.float()
    z1, z2 = z1.float(), z2.float()
    if objective.predictor == "closed-form":
        # one linear map for both view orders, regressing each view's target on the other's projection
        weight = closed_form_predictor(torch.cat((p1, p2)), torch.cat((z2, z1)))
        p1, p2 = p1 @ weight.T, p2 @ weight.T
    loss = unified_loss(
        p1, p2, z1, z2, beta=objective.beta, alpha=objective.temperature, normalize=objective.normalize,
        stop_gradient=objective.target_network != "online",
    )  # fmt: skip
    return loss, online1, logits


def _probe(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The online probe's cross-entropy and accuracy over the labelled images (label ≥ 0), computed without
    asking the host how many there are: no labelled image gives a zero loss (DDP's graph stays complete) and a
    NaN accuracy, which the log leaves out."""
    labelled = labels >= 0
    count = labelled.sum()
    loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * labelled).sum() / count.clamp_min(1)
    return loss, ((logits.argmax(1) == labels) & labelled).sum() / count


def train_step(state: TrainState, batch: ViewBatch, overlap: Callable[[], object] | None = None) -> dict[str, Any]:
    """One optimizer step on a pair of augmented batches; returns the step's metrics (tensors and floats).

    With N accumulation steps the batch is split into N micro-batches whose gradients are averaged; the
    optimizer, the target update and the τ / lr schedules all advance once per call. The step synchronises
    with the host once, to stop a non-finite step before any weight changes; ``overlap`` runs just before,
    while the device still works on the backward pass (the loop prepares the next batch's views there).
    """
    schedule, (view1, view2, labels) = state.schedule, batch
    lr = learning_rate(state.step, schedule.base_lr, schedule.batch_size, schedule.max_steps, schedule.warmup_steps)
    tau = target_ema(state.step, schedule.base_ema, schedule.max_steps, schedule.tau_schedule)
    for group in state.optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    state.online.train()
    if state.target is not None:
        state.target.train()
    view1, view2 = state.precision.input(view1), state.precision.input(view2)

    n = state.objective.accumulation_steps
    totals: dict[str, Tensor] = {}
    loss_finite = torch.ones((), dtype=torch.bool, device=view1.device)
    ddp = _ddp(state)
    distributed = ddp is not None
    state.optimizer.zero_grad(set_to_none=True)
    for i, (v1, v2, y) in enumerate(zip(view1.chunk(n), view2.chunk(n), labels.chunk(n), strict=True)):
        # gradients are averaged across ranks once per optimizer step, on the last micro-batch
        sync = contextlib.nullcontext() if ddp is None or i == n - 1 else ddp.no_sync()
        with sync:
            loss, online1, logits = _loss(state, v1, v2)
            parts, total = {"byol_loss": loss}, loss
            if logits is not None:  # on the labelled images (−1: unlabelled, e.g. STL-10's 100k)
                parts["probe_loss"], parts["probe_acc"] = _probe(logits.float(), y)
                total = total + parts["probe_loss"]
            loss_finite &= torch.isfinite(total)
            (total / n).backward()
        parts["proj_std"] = projection_std(online1.z)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value.detach() / n
    grads = [p.grad for group in state.optimizer.param_groups for p in group["params"] if p.grad is not None]
    grad_finite = torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum())
    if overlap is not None:  # the device still runs the backward: the host prepares what comes next
        overlap()
    # under DDP only the all-reduced gradients decide, so that every rank takes the same path
    finite = torch.stack((grad_finite,) if distributed else (loss_finite, grad_finite))
    if not finite.all().item():  # the step's one host synchronisation
        state.optimizer.zero_grad(set_to_none=True)
        loss_value = float(totals["byol_loss"] + totals.get("probe_loss", 0.0))
        what = "gradient" if distributed or finite[0] else f"loss ({loss_value})"
        raise NonFiniteError(f"non-finite {what} at step {state.step}; no weights were updated")
    state.optimizer.step()
    if state.target is not None:
        update_target(state.target, state.online, tau)
    state.step += 1
    return {**totals, "lr": lr, "tau": tau}


class Resize(Protocol):
    """Sizes a run once, after ``at_step`` steps, from the loop's own seconds per step: returns its epochs.
    Called at the end of warm-up, the learning rate is the same whatever length it returns; τ_k has moved
    from τ_base by a few 1e-5 at most (the demo's time budget, byol/demo.py)."""

    at_step: int

    def __call__(self, seconds_per_step: float) -> float: ...


def pretrain(
    config: Config,
    run_dir: str | Path,
    progress: bool = True,
    step_seconds_hint: float | None = None,
    resize: Resize | None = None,
    restart: bool = False,
) -> tuple[TrainState, Dataset]:
    """Runs a new pretraining run in ``run_dir``: checkpoints, config.json, environment.json and metrics.jsonl.

    A directory that holds an earlier run's history (logged steps, evaluations, a report) but no checkpoint is
    refused: its files would be replaced, or kept beside the new run's as if they were its own. ``restart``: the
    caller owns the directory and starts it over (the ablation runner's cell killed before its first checkpoint).

    ``step_seconds_hint`` (a measured step time) gives the progress bar an ETA before its own rate exists;
    ``resize`` may change ``train.epochs`` once, from the loop's speed (config.json and later checkpoints
    hold the new length).

    Under torchrun every rank runs this function: data are sharded, BN is cross-replica, gradients are
    averaged, and rank 0 alone writes logs, metrics and checkpoints, holding the run directory's lock: a
    second writer is refused.
    """
    run_dir = Path(run_dir)
    with rundir.writer_lock(run_dir):
        if list_checkpoints(run_dir):
            raise ConfigError(
                f"{quoted(run_dir)} already holds a run; pass --resume to continue it or choose another --run-dir"
            )
        history = [] if restart else rundir.earlier_history(run_dir)
        if history:
            raise ConfigError(
                f"{quoted(run_dir)} holds an earlier run's history ({', '.join(history)}) and no checkpoint to resume "
                "from; a new run would replace it: choose another --run-dir, or delete this one to start over"
            )
        return _run(config, run_dir, progress=progress, step_seconds_hint=step_seconds_hint, resize=resize)


def resume(
    run_dir: str | Path, progress: bool = True, compile: str | None = None, expect: Config | None = None
) -> tuple[TrainState, Dataset]:
    """Continues the run in ``run_dir`` from its newest readable checkpoint, with the config saved in it;
    ``compile``: another ``train.compile`` (a speed switch: compiled and eager checkpoints resume into each other).
    ``expect``: the config the caller would start the run with (`--resume auto`), refused where the checkpoint's
    differs in anything but a speed switch, naming each key."""
    run_dir = Path(run_dir)
    latest_checkpoint(run_dir)  # refused before anything is written: no such directory, or no checkpoint in it
    with rundir.writer_lock(run_dir, create=False):
        payload = load_resumable(run_dir, check=_check_resumable)
        config = run_config(payload, run_dir)
        rundir.check_unchanged(run_dir, config)
        if expect is not None:
            rundir.check_same_run(run_dir, config, expect)
            compile = expect.train.compile
        if compile is not None:
            config = validate(apply_overrides(config, {"train.compile": compile}))
        return _run(config, run_dir, payload=payload, progress=progress)


# What a resume reads from a checkpoint besides the networks, as paths of keys into it.
RESUME_PARTS = (
    ("state", "step"), ("state", "generator"), ("state", "optimizer", "state"), ("state", "optimizer", "param_groups"),
    ("rng", "torch"), ("rng", "python"), ("rng", "numpy", "keys"),
)  # fmt: skip


def _check_resumable(payload: dict[str, Any], path: Path) -> None:
    """Refuses a checkpoint that would not load completely: a config byol cannot use, a missing part, or an online
    network that does not fit the architecture its config describes (checked on the meta device, where nothing is
    allocated)."""
    config = run_config(payload, path)
    try:
        for keys in RESUME_PARTS:
            functools.reduce(operator.getitem, keys, payload)
        online = payload["state"]["online"]
        in_channels = input_channels(online)
        with torch.device("meta"):
            expected = build_online_network(config.model, in_channels).state_dict()
        if not _same_shapes(online, expected):
            raise ValueError("its online network does not fit the architecture of its config")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path} is not a complete byol checkpoint ({first_line(e)})") from None


def _run(
    config: Config,
    run_dir: Path,
    *,
    payload: dict[str, Any] | None = None,
    progress: bool,
    step_seconds_hint: float | None = None,
    resize: Resize | None = None,
) -> tuple[TrainState, Dataset]:
    """The run, from scratch or (``payload``: a checkpoint) resumed."""
    device, context = distributed.setup(config.train.device)
    _check_config(config, context)
    seed_everything(config.train.seed, config.train.deterministic)
    d = config.data
    use_cache(d.cache_dir, d.cache_bytes)
    dataset = load_split(d.dataset, "pretrain", d.data_dir, d.image_size, d.labels)
    if config.train.online_probe and not labelled(dataset) and context.is_main:
        log.info("online probe skipped: %s has no labels (pretraining needs none)", _describe(dataset))
    a = config.augment
    batches = TrainBatches(
        dataset, batch_size=config.optim.batch_size // context.world_size, seed=config.train.seed, device=device,
        views=get_views(a.preset, a.crop_min_scale), image_size=d.image_size, num_workers=d.num_workers,
        rank=context.rank, world_size=context.world_size, order=d.order, window=d.shard_window,
    )  # fmt: skip
    views = TwoViews(a.preset, d.image_size, mean=dataset.mean, std=dataset.std, crop_min_scale=a.crop_min_scale)
    schedule = Schedule.create(config, batches.steps_per_epoch)
    state = create_state(
        config, in_channels=dataset.channels, num_classes=len(dataset.classes) if labelled(dataset) else 0,
        device=device, schedule=schedule,
    )  # fmt: skip
    if payload is None and config.model.init:
        _start_from(state, config)
    if payload is not None:
        _restore(state, payload, context)
        log.info("resuming %s at step %d of %d", run_dir, state.step, schedule.max_steps)
    prefetch = ViewPrefetch(views, state.generator, device)
    policy = Policies(
        config, run_dir, state, dataset=dataset, device=device, context=context, resumed=payload is not None,
        progress=progress, prefetch=prefetch,
    )  # fmt: skip
    policy.show_eta(step_seconds_hint)
    last: list[Batch] = []  # the batch of the step just taken: what the compiler times the views on
    compiler = _run_compiler(config, state, views, device, context, policy, lambda: last[0])
    with flush_denormals(device), contextlib.closing(policy):
        policy.monitor(start=True)
        while state.step < state.schedule.max_steps:
            epoch, offset = divmod(state.step, state.schedule.steps_per_epoch)
            for batch, view_batch in prefetch.epoch(batches.epoch(epoch, offset)):
                policy.skipped_files.update(batch.skipped)
                started = policies.clock()
                try:
                    metrics = train_step(state, view_batch, overlap=prefetch.prepare)
                except NonFiniteError as e:
                    policy.non_finite(e)
                    continue
                last[:] = [batch]
                compiler.after_step(policies.clock() - started, state.schedule.max_steps - state.step)
                policy.log(metrics)
                if resize is not None and state.step == resize.at_step:
                    policy.resize(resize(policy.seconds_per_step()))
                policy.monitor()
                policy.checkpoint()
                if state.step >= state.schedule.max_steps:
                    break
    return state, dataset


def _run_compiler(
    config: Config, state: TrainState, views: TwoViews, device: torch.device, context: DistributedContext,
    policy: Policies, batch: Callable[[], Batch],
) -> compiling.RunCompiler:  # fmt: skip
    """What the run compiles (``train.compile``; ``byol.compiling`` has the rule), for the loop to step."""

    def views_seconds() -> float:  # one batch's views on a copy of the run's generator: its draws stay the run's
        generator = torch.Generator(device=device)
        generator.set_state(state.generator.get_state())
        synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        synchronize()
        started = policies.clock()
        make_views(views, batch(), generator)
        synchronize()
        return policies.clock() - started

    def agree(decisions: Any) -> Any:  # every rank compiles what rank 0 decided: their graphs and speeds match
        if context.enabled:
            chosen = [decisions]
            torch.distributed.broadcast_object_list(chosen, src=0)
            return chosen[0]
        return decisions

    parts = {
        "networks": _networks_part(state),
        "views": compiling.Part("views", lambda: views.compile(_compile_views), views.eager),
    }
    return compiling.RunCompiler(
        config.train.compile, parts, compile_keys(config, state.precision.name, device, context.world_size),
        device=device, views_seconds=views_seconds, agree=agree,
        report=lambda records: policy.note_environment(compile=records), settled=policy.restart_clock,
        keeps_history=context.is_main, channels_last=state.precision.channels_last,
    )  # fmt: skip


def _networks_part(state: TrainState) -> compiling.Part:
    """The networks as a part the run switches (eager and compiled in turn while it times them): the compiled
    wrappers, and so their graphs, are made once and kept."""
    eager = (state.forward, state.target_forward)
    compiled: list[tuple[nn.Module, nn.Module | None]] = []

    def use_compiled() -> None:
        if not compiled:
            compile_networks(state)
            compiled.append((state.forward, state.target_forward))
        state.forward, state.target_forward = compiled[0]

    def use_eager() -> None:
        state.forward, state.target_forward = eager

    return compiling.Part("networks", use_compiled, use_eager)


def compile_keys(config: Config, precision: str, device: torch.device, world_size: int = 1) -> dict[str, str]:
    """The :func:`byol.compiling.fingerprint` of each part's graphs: what the compile history is kept under."""
    d = config.data
    shape = [config.optim.batch_size // world_size, d.image_size, device.type]
    networks = [dataclasses.asdict(config.model), precision, Objective.from_config(config), world_size]
    return {
        "networks": compiling.fingerprint("networks", networks, shape),
        "views": compiling.fingerprint("views", config.augment.preset, d.dataset, shape),
    }


def _compile_views(function: Callable[..., None]) -> Callable[..., None]:
    return compiling.CompiledOrEager(function, "views")


def _describe(dataset: Dataset) -> str:
    """A dataset as a message names it: image folders by their folder and layout."""
    root = getattr(dataset, "root", None)
    return f"{dataset.name} {quoted(root)} ({getattr(dataset, 'layout', '')})" if root is not None else dataset.name


def _check_config(config: Config, context: DistributedContext) -> None:
    """What a run refuses, or warns about, once it knows its ranks."""
    o = config.optim
    if o.batch_size % (context.world_size * o.accumulation_steps):
        raise ConfigError(
            f"optim.batch_size = {o.batch_size} must be divisible by the number of ranks "
            f"({context.world_size}) times optim.accumulation_steps ({o.accumulation_steps})"
        )
    if config.target.base_ema < 0.5 and config.target.schedule == "cosine" and context.is_main:
        log.warning(
            "target.base_ema = %g with the cosine schedule: τ rises to 1 (0.5 halfway), a slow moving average "
            "for most of the run; for the paper's stop-gradient of the online network (τ = 0 at every step) "
            "add --target.schedule constant",
            config.target.base_ema,
        )


def _same_shapes(found: dict[str, Tensor], expected: dict[str, Tensor]) -> bool:
    """Whether a state dict has exactly the keys of ``expected``, each of the same shape."""
    return found.keys() == expected.keys() and all(found[k].shape == expected[k].shape for k in expected)


def _start_from(state: TrainState, config: Config) -> None:
    """The online encoder (and a target that starts as its copy) from ``model.init``'s weights."""
    from byol.export import load_encoder  # local: only a run that starts from a file needs the export readers

    m = config.model
    encoder = load_encoder(m.init)
    meta: dict[str, Any] = getattr(encoder, "metadata", {})
    wanted, found = state.online.encoder, encoder.state_dict()
    if not _same_shapes(found, wanted.state_dict()):
        raise ConfigError(
            f"model.init {quoted(m.init)} holds a ResNet-{meta.get('depth')} of width {meta.get('width', 0):g} "
            f"({meta.get('stem')} stem, {meta.get('in_channels')} input channels), not the config's "
            f"ResNet-{m.depth} of width {m.width:g} ({m.stem} stem, {input_channels(state.online.state_dict())} "
            "input channels); set --model.depth, --model.width and --model.stem to match it"
        )
    wanted.load_state_dict(found)
    if state.target is not None and config.target.init == "copy":
        state.target.encoder.load_state_dict(found)
    log.info("online encoder initialised from %s", quoted(m.init))


def _restore(state: TrainState, payload: dict[str, Any], context: DistributedContext) -> None:
    """The networks, optimizer, step and every RNG as the checkpoint saved them."""
    state.load_state_dict(payload["state"])
    set_rng_state(payload["rng"])
    generators = payload.get("generators", [])
    if len(generators) == context.world_size:
        state.generator.set_state(generators[context.rank])
    else:
        log.warning("the checkpoint was written by %d rank(s); augmentation RNGs are re-seeded", len(generators))
