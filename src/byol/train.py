"""BYOL pretraining: explicit state, one step function, and the loop (paper section 3, released ``byol_experiment``).

One step (:func:`train_step`):
  1. lr_k from the warm-up + cosine schedule, τ_k from the cosine EMA schedule;
  2. each view goes through the online network on its own, so BN statistics are per view;
  3. the target network runs both views in train mode (batch statistics) under no_grad;
  4. loss = L(p1, sg z'2) + L(p2, sg z'1) (+ the online probe's cross-entropy on stop-gradient y);
     the paper's ablations (section 5, appendices F and I) change this through :class:`Objective`;
  5. a non-finite loss stops the run before the optimizer touches the weights;
  6. LARS step on θ, then ξ ← τ_k·ξ + (1 − τ_k)·θ.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from byol import rundir
from byol.augment import TwoViews, get_views
from byol.checkpoint import atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from byol.config import Config
from byol.data import PRETRAIN_SPLIT, TEST_SPLIT, Batch, Dataset, TrainBatches, load_dataset
from byol.distributed import (
    DistributedContext,
    all_reduce_mean,
    convert_batchnorm,
    current_context,
    init_distributed,
)
from byol.ema import target_ema, update_target
from byol.errors import CheckpointError, ConfigError, NonFiniteError, TrainingError
from byol.loss import closed_form_predictor, collapse_floor, projection_std, unified_loss
from byol.networks import OnlineNetwork, TargetNetwork, ViewOutputs, build_online_network
from byol.optim import LARS, lars_param_groups
from byol.precision import Precision
from byol.schedules import learning_rate

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    return device


@dataclass(frozen=True)
class Schedule:
    """Everything the step needs from the config and the dataset size, counted in optimizer steps."""

    max_steps: int
    warmup_steps: int
    steps_per_epoch: int
    batch_size: int
    base_lr: float
    base_ema: float
    tau_schedule: str = "cosine"

    @classmethod
    def create(cls, config: Config, steps_per_epoch: int) -> Schedule:
        max_steps = config.train.max_steps or max(1, round(config.train.epochs * steps_per_epoch))
        warmup = min(max_steps, round(config.optim.warmup_epochs * steps_per_epoch))
        return cls(
            max_steps,
            warmup,
            steps_per_epoch,
            config.optim.batch_size,
            config.optim.base_lr,
            config.target.base_ema,
            config.target.schedule,
        )


@dataclass(frozen=True)
class Objective:
    """What a step optimises. The defaults are BYOL; the rest are the paper's ablations.

    target_network: ema | online-sg | online (section 5, appendix F.4); predictor: mlp | none | closed-form
    (appendix I.2); beta, temperature: the unified objective's negative-pairs weight and temperature;
    normalize: the ℓ2 normalisation of the regression loss (appendix F.6); accumulation_steps: micro-batches
    per optimizer step (Table 16).
    """

    target_network: str = "ema"
    predictor: str = "mlp"
    beta: float = 0.0
    temperature: float = 0.1
    normalize: bool = True
    accumulation_steps: int = 1

    @classmethod
    def from_config(cls, config: Config) -> Objective:
        loss = config.loss
        return cls(
            config.target.network,
            config.model.predictor,
            loss.beta,
            loss.temperature,
            loss.normalize,
            config.optim.accumulation_steps,
        )


class SiameseForward(nn.Module):
    """Both views through the online network (each its own BN batch) and the online probe on stop-gradient y,
    in ONE forward call: DistributedDataParallel wraps this module and expects one forward per backward."""

    def __init__(self, online: OnlineNetwork, probe: nn.Linear | None) -> None:
        super().__init__()
        self.online = online
        self.probe = probe

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[ViewOutputs, ViewOutputs, Tensor | None]:
        online1, online2 = self.online(view1), self.online(view2)
        logits = self.probe(online1.y.detach()) if self.probe is not None else None
        return online1, online2, logits


@dataclass
class TrainState:
    """Online θ (with the online probe), target ξ (None without a target network), optimizer, step and the
    augmentation RNG, plus how the step runs (objective, precision)."""

    online: OnlineNetwork
    target: TargetNetwork | None
    probe: nn.Linear | None
    optimizer: LARS
    generator: torch.Generator
    step: int = 0
    objective: Objective = field(default_factory=Objective)
    precision: Precision = field(default_factory=Precision)
    forward: nn.Module | None = None  # SiameseForward, wrapped in DistributedDataParallel under torchrun
    target_forward: nn.Module | None = None  # the target, compiled or not

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = SiameseForward(self.online, self.probe)
        if self.target_forward is None:
            self.target_forward = self.target

    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict() if self.target is not None else {},
            "probe": self.probe.state_dict() if self.probe is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        try:
            self.online.load_state_dict(payload["online"])
            if self.target is not None:
                self.target.load_state_dict(payload["target"])
            if self.probe is not None:
                self.probe.load_state_dict(payload["probe"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint does not match this architecture: {first}") from None
        self.generator.set_state(payload["generator"])
        self.step = int(payload["step"])


def create_state(config: Config, in_channels: int, num_classes: int, device: torch.device) -> TrainState:
    """Fresh networks and optimizer, seeded by ``config.train.seed``."""
    torch.manual_seed(config.train.seed)
    m = config.model
    online = build_online_network(
        m.depth,
        m.width,
        m.stem,
        in_channels,
        m.projector_hidden,
        m.projection_dim,
        m.predictor_hidden if m.predictor == "mlp" else None,
        m.zero_init_residual,
        m.projector_depth,
        m.predictor_depth,
    ).to(device)
    target = None
    if config.target.network == "ema":
        target = online.make_target(copy_weights=config.target.init == "copy").to(device)
    context = current_context()
    if context.enabled:  # cross-replica BN everywhere, as the released code; before the optimizer sees θ
        convert_batchnorm(online)
        if target is not None:
            convert_batchnorm(target)
    probe = nn.Linear(online.encoder.out_dim, num_classes).to(device) if config.train.online_probe else None
    modules = nn.ModuleDict({"online": online, **({"probe": probe} if probe is not None else {})})
    groups = lars_param_groups(
        modules,
        config.optim.weight_decay,
        {
            "online.predictor": config.optim.predictor_lr_scale,
            "online.projector": config.optim.projector_lr_scale,
        },
    )
    optimizer = LARS(
        groups, weight_decay=config.optim.weight_decay, momentum=config.optim.momentum, eta=config.optim.eta
    )
    generator = torch.Generator(device=device).manual_seed(config.train.seed)
    precision = Precision.create(config.train.precision, config.train.memory_format, device)
    precision.prepare(online)
    if target is not None:
        precision.prepare(target)
    forward: nn.Module = SiameseForward(online, probe)
    if context.enabled:  # gradients averaged across ranks by DDP
        with warnings.catch_warnings():  # broadcast_buffers=False is the portable spelling across torch versions
            warnings.simplefilter("ignore", FutureWarning)
            forward = DistributedDataParallel(
                forward, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        generator.manual_seed(config.train.seed + 1_000_003 * context.rank)  # per-rank augmentations
    if config.train.compile:  # the wrappers share parameters with online / target: checkpoints are unchanged
        forward = torch.compile(forward)  # type: ignore[assignment]
    state = TrainState(
        online, target, probe, optimizer, generator, 0, Objective.from_config(config), precision, forward
    )
    if config.train.compile and target is not None:
        state.target_forward = torch.compile(target)  # type: ignore[assignment]
    return state


def make_views(views: TwoViews, batch: Batch, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    if batch.second_crop is None:
        return views(batch.images, generator)
    return views.t(batch.images, generator, crop=False), views.t_prime(batch.second_crop, generator, crop=False)


def _loss(state: TrainState, view1: Tensor, view2: Tensor) -> tuple[Tensor, ViewOutputs, Tensor | None]:
    """The objective on one (micro-)batch; returns it, the online outputs of view 1 and the probe's logits."""
    objective = state.objective
    assert state.forward is not None
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
        p1,
        p2,
        z1,
        z2,
        beta=objective.beta,
        alpha=objective.temperature,
        normalize=objective.normalize,
        stop_gradient=objective.target_network != "online",
    )
    return loss, online1, logits


def train_step(state: TrainState, view1: Tensor, view2: Tensor, labels: Tensor, schedule: Schedule) -> dict[str, Any]:
    """One optimizer step on a pair of augmented batches; returns the step's metrics (tensors and floats).

    With N accumulation steps the batch is split into N micro-batches whose gradients are averaged; the
    optimizer, the target update and the τ / lr schedules all advance once per call.
    """
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
    distributed = isinstance(state.forward, DistributedDataParallel)
    state.optimizer.zero_grad(set_to_none=True)
    for i, (v1, v2, y) in enumerate(zip(view1.chunk(n), view2.chunk(n), labels.chunk(n), strict=True)):
        # gradients are averaged across ranks once per optimizer step, on the last micro-batch
        sync = contextlib.nullcontext() if not distributed or i == n - 1 else state.forward.no_sync()  # type: ignore[union-attr,operator]
        with sync:
            loss, online1, logits = _loss(state, v1, v2)
            parts = {"byol_loss": loss}
            total = loss
            if logits is not None:
                labelled = y >= 0
                logits = logits.float()
                if bool(labelled.any()):
                    probe_loss = F.cross_entropy(logits[labelled], y[labelled])
                    parts["probe_acc"] = (logits.argmax(1) == y)[labelled].float().mean()
                else:  # unlabelled images (STL-10's 100k): no accuracy; a zero loss keeps DDP's graph complete
                    probe_loss = logits.sum() * 0
                total = total + probe_loss
                parts["probe_loss"] = probe_loss
            # in one process a bad loss stops here; across ranks the gradient check below sees it on every rank
            if not distributed and not torch.isfinite(total):
                raise NonFiniteError(f"non-finite loss ({total.item()}) at step {state.step}; no weights were updated")
            (total / n).backward()
        parts["proj_std"] = projection_std(online1.z)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value.detach() / n
    grads = [p.grad for group in state.optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not torch.isfinite(torch.stack(torch._foreach_norm(grads)).sum()):
        state.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient at step {state.step}; no weights were updated")
    state.optimizer.step()
    if state.target is not None:
        update_target(state.target, state.online, tau)
    state.step += 1
    return {**totals, "lr": lr, "tau": tau}


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every global RNG, as tensors and plain values (loadable with weights_only=True)."""
    _, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(position),
            "gauss": (int(has_gauss), float(cached)),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], *numpy_state["gauss"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


TIMING_KEYS = ("elapsed_s", "images_per_s")  # the only metrics.jsonl fields that depend on the machine's speed


def _truncate_metrics(path: Path, last_step: int) -> float:
    """Drops log records past the resumed checkpoint, so a resumed run's log equals an uninterrupted one
    (but for :data:`TIMING_KEYS`). Returns the training seconds the kept records had reached."""
    if not path.is_file():
        return 0.0
    kept, elapsed = [], 0.0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
            elapsed = record.get("elapsed_s", elapsed)
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
    return float(elapsed)


def checkpoint_payload(state: TrainState, config: Config, epoch_info: dict[str, int]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config.to_dict()),
        "state": state.state_dict(),
        "data": epoch_info,
        "rng": rng_state(),
    }


class KnnMonitor:
    """kNN accuracy of the online encoder every few epochs, on up to 10k training and 10k test images."""

    MAX_IMAGES = 10_000

    def __init__(self, config: Config, train: Dataset, device: torch.device) -> None:
        d = config.data
        test = load_dataset(d.dataset, TEST_SPLIT.get(d.dataset, "test"), d.data_dir, d.image_size)
        generator = torch.Generator().manual_seed(config.train.seed)
        labelled = (train.labels >= 0).nonzero().squeeze(1)
        self.train = train.subset(labelled[torch.randperm(len(labelled), generator=generator)[: self.MAX_IMAGES]])
        self.test = test.subset(torch.randperm(len(test), generator=generator)[: self.MAX_IMAGES])
        self.image_size, self.device = d.image_size, device

    def __call__(self, encoder: nn.Module, precision: Precision) -> float:
        from byol.evaluate.knn import knn_evaluation  # evaluation is optional for the loop

        result = knn_evaluation(
            encoder, self.train, self.test, self.image_size, self.device, progress=False, precision=precision
        )
        return float(result["top1"])


def _generator_states(state: TrainState, context: DistributedContext) -> list[Tensor]:
    """Every rank's augmentation RNG state (each rank draws its own views), gathered for rank 0's checkpoint."""
    local = state.generator.get_state()
    if not context.enabled:
        return [local]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, local)
    return gathered


def _record_environment(run_dir: Path, state: TrainState, device: torch.device, world_size: int, resume: bool) -> None:
    """environment.json: one record per start of the run (a resume may run on another machine), saying
    where it ran and what ``train.precision`` / ``memory_format`` resolved to, and why."""
    path = run_dir / ENVIRONMENT_FILE
    starts = json.loads(path.read_text()) if resume and path.is_file() else []
    starts.append(
        {
            "step": state.step,
            "device": str(device),
            "world_size": world_size,
            "precision": state.precision.name,
            "precision_reason": state.precision.reason,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
    )
    atomic_write(path, lambda f: f.write((json.dumps(starts, indent=2) + "\n").encode()))


class _MetricsLog:
    """metrics.jsonl, written by rank 0 only, one JSON record per line, flushed as it goes."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.file = open(path, "a") if enabled else None  # noqa: SIM115 (closed by close())

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def pretrain(
    config: Config,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    step_seconds_hint: float | None = None,
) -> tuple[TrainState, Dataset]:
    """Runs (or resumes) a pretraining run in ``run_dir``: checkpoints, config.json and metrics.jsonl.

    ``step_seconds_hint`` (a measured step time) gives the progress bar an ETA before its own rate exists.

    Under torchrun every rank runs this function: data are sharded, BN is cross-replica, gradients are
    averaged, and rank 0 alone writes logs, metrics and checkpoints, holding the run directory's lock: a
    second writer is refused.
    """
    with _writer_lock(Path(run_dir)):
        return _pretrain(None if resume else config, Path(run_dir), progress, step_seconds_hint)


def resume(run_dir: str | Path, progress: bool = True) -> tuple[TrainState, Dataset]:
    """Continues the run in ``run_dir`` from its newest readable checkpoint, with the config saved in it."""
    with _writer_lock(Path(run_dir)):
        return _pretrain(None, Path(run_dir), progress, None)


def _writer_lock(run_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """The run directory's lock, taken by the process that writes (rank 0 under torchrun)."""
    writer = int(os.environ.get("RANK", "0")) == 0
    return rundir.exclusive(run_dir, "this run") if writer else contextlib.nullcontext()


def load_resumable(run_dir: Path) -> dict[str, Any]:
    """The newest checkpoint that reads; each unreadable newer one is moved aside (``.unreadable``), not deleted."""
    latest_checkpoint(run_dir)  # its errors: no such directory, no checkpoint
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            log.warning("%s; moved it aside to %s and resuming from the checkpoint before it", e, aside.name)
    raise CheckpointError(f"no checkpoint of {run_dir} can be read (each was moved aside as *.unreadable)")


def _pretrain(
    config: Config | None, run_dir: Path, progress: bool, step_seconds_hint: float | None
) -> tuple[TrainState, Dataset]:
    """The run; ``config`` None resumes it with the config saved in its newest readable checkpoint."""
    resume = config is None
    if config is None:
        payload = load_resumable(run_dir)
        config = Config.from_dict(json.loads(payload["config"]))
    elif list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --run-dir")

    # ---- processes and devices
    device = resolve_device(config.train.device)
    context = init_distributed(device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if config.optim.batch_size % (context.world_size * config.optim.accumulation_steps):
        raise ConfigError(
            f"optim.batch_size = {config.optim.batch_size} must be divisible by the number of ranks "
            f"({context.world_size}) times optim.accumulation_steps ({config.optim.accumulation_steps})"
        )
    _seed_everything(config.train.seed, config.train.deterministic)

    # ---- data
    dataset = load_dataset(
        config.data.dataset,
        PRETRAIN_SPLIT.get(config.data.dataset, "train"),
        config.data.data_dir,
        config.data.image_size,
    )
    view_configs = get_views(config.augment.preset, config.augment.crop_min_scale)
    batches = TrainBatches(
        dataset,
        config.optim.batch_size // context.world_size,
        config.train.seed,
        device,
        view_configs,
        config.data.image_size,
        config.data.num_workers,
        context.rank,
        context.world_size,
    )
    views = TwoViews(
        config.augment.preset, config.data.image_size, dataset.mean, dataset.std, config.augment.crop_min_scale
    )
    schedule = Schedule.create(config, batches.steps_per_epoch)
    if config.target.base_ema < 0.5 and config.target.schedule == "cosine" and context.is_main:
        log.warning(
            "target.base_ema = %g with the cosine schedule: τ rises to 1 (0.5 halfway), a slow moving average "
            "for most of the run; for the paper's stop-gradient of the online network (τ = 0 at every step) "
            "add --target.schedule constant",
            config.target.base_ema,
        )

    # ---- state
    state = create_state(config, dataset.channels, len(dataset.classes), device)
    metrics_path = run_dir / METRICS_FILE
    elapsed_before = 0.0
    if resume:
        state.load_state_dict(payload["state"])
        set_rng_state(payload["rng"])
        generators = payload.get("generators", [])
        if len(generators) == context.world_size:
            state.generator.set_state(generators[context.rank])
        else:
            log.warning("the checkpoint was written by %d rank(s); augmentation RNGs are re-seeded", len(generators))
        if context.is_main:
            elapsed_before = _truncate_metrics(metrics_path, state.step)
        log.info("resuming %s at step %d of %d", run_dir, state.step, schedule.max_steps)
    if context.is_main:
        log.info("precision %s (%s)", state.precision.name, state.precision.reason)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            metrics_path.unlink(missing_ok=True)
        config.save(run_dir / CONFIG_FILE)
        _record_environment(run_dir, state, device, context.world_size, resume)
    knn_monitor = KnnMonitor(config, dataset, device) if config.train.knn_every > 0 and context.is_main else None

    # ---- loop
    floor = collapse_floor(config.model.projection_dim)
    warned_collapse, skipped_files, skipped_steps = False, set[str](), 0
    show = progress and context.is_main
    bar = tqdm(total=schedule.max_steps, initial=state.step, desc="pretrain", unit="step", disable=not show)
    if step_seconds_hint is not None:
        bar.set_postfix_str(f"eta {bar.format_interval((schedule.max_steps - state.step) * step_seconds_hint)}")
    start_time = last_time = time.perf_counter()
    last_step = state.step
    metrics_log = _MetricsLog(metrics_path, context.is_main)
    try:
        if knn_monitor is not None and state.step == 0:  # the starting point: kNN of the initial encoder
            metrics_log.write({"step": 0, "epoch": 0, "knn_top1": knn_monitor(state.online.encoder, state.precision)})
        while state.step < schedule.max_steps:
            epoch, offset = divmod(state.step, schedule.steps_per_epoch)
            for batch in batches.epoch(epoch, offset):
                skipped_files.update(batch.skipped)
                view1, view2 = make_views(views, batch, state.generator)
                try:
                    metrics = train_step(state, view1, view2, batch.labels, schedule)
                except NonFiniteError as e:
                    if config.train.on_nonfinite == "skip" and skipped_steps < config.train.max_skipped_steps:
                        skipped_steps += 1
                        log.warning(
                            "%s: batch skipped (%d of at most %d)", e, skipped_steps, config.train.max_skipped_steps
                        )
                        continue
                    checkpoints = list_checkpoints(run_dir)
                    last = (
                        f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written"
                    )
                    raise TrainingError(f"{e}; the run stopped, {last}") from None
                step = state.step
                bar.update(1)

                if step % config.train.log_every == 0 or step == schedule.max_steps:
                    tensors = all_reduce_mean({k: v for k, v in metrics.items() if isinstance(v, Tensor)})
                    record = {**{k: float(v) for k, v in metrics.items()}, **{k: float(v) for k, v in tensors.items()}}
                    now = time.perf_counter()
                    images_per_s = (step - last_step) * schedule.batch_size / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    record.update(
                        step=step,
                        epoch=step / schedule.steps_per_epoch,
                        elapsed_s=round(elapsed_before + now - start_time, 3),
                        images_per_s=round(images_per_s, 1),
                    )
                    metrics_log.write(record)
                    bar.set_postfix(
                        loss=f"{record['byol_loss']:.3f}",
                        tau=f"{record['tau']:.4f}",
                        lr=f"{record['lr']:.3g}",
                        img_s=f"{images_per_s:.0f}",
                    )
                    if record["proj_std"] < floor and not warned_collapse:
                        log.warning(
                            "collapse warning at step %d: projection std %.4f < 0.1/sqrt(d) = %.4f",
                            step,
                            record["proj_std"],
                            floor,
                        )
                        warned_collapse = True

                epoch_done, epoch_end = divmod(step, schedule.steps_per_epoch)
                if knn_monitor is not None and epoch_end == 0 and epoch_done % config.train.knn_every == 0:
                    knn_top1 = knn_monitor(state.online.encoder, state.precision)
                    metrics_log.write({"step": step, "epoch": epoch_done, "knn_top1": knn_top1})
                    log.info("epoch %d: kNN top-1 %.2f%%", epoch_done, knn_top1)

                if step % config.train.checkpoint_every == 0 or step == schedule.max_steps:
                    generators = _generator_states(state, context)
                    if context.is_main:
                        payload = checkpoint_payload(state, config, {"epoch": step // schedule.steps_per_epoch})
                        payload["generators"] = generators
                        save_checkpoint(run_dir, step, payload, config.train.keep_checkpoints)
                if step >= schedule.max_steps:
                    break
    finally:
        metrics_log.close()
        bar.close()
    if skipped_steps:
        log.warning("%d step(s) with a non-finite loss or gradient were skipped", skipped_steps)
    if skipped_files:
        log.warning(
            "%d unreadable image file(s) were skipped during pretraining (see the warnings above)", len(skipped_files)
        )
    return state, dataset
