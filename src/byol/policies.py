"""What the training loop does around each step (``byol.train``): the run directory's files, logging, the kNN
monitor, checkpoints, and what a non-finite step does.

Rank 0 alone writes. The loop's clock is :data:`clock` (a test runs the loop on a clock of its own).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from byol import length, rundir
from byol.checkpoint import CHECKPOINT_FORMAT, list_checkpoints, save_checkpoint
from byol.config import Config, flatten
from byol.data import Dataset
from byol.distributed import DistributedContext, all_reduce_mean
from byol.errors import NonFiniteError, TrainingError
from byol.evaluate.frozen import KnnMonitor
from byol.loss import collapse_floor
from byol.seeding import rng_state
from byol.state import Schedule, TrainState
from byol.visualize import image_grid, view_samples

log = logging.getLogger("byol.train")  # what the loop says is the training's, wherever it is decided

clock = time.perf_counter
DATA_BOUND_SHARE = 0.1  # a step that waits longer than this share of its time for its batch is data-bound


class Prefetch(Protocol):
    """What the policies read of the loop's batch source (``byol.train.ViewPrefetch``)."""

    wait_s: float

    def generator_state(self) -> Tensor: ...


def generator_states(local: Tensor, context: DistributedContext) -> list[Tensor]:
    """Every rank's augmentation RNG state (each rank draws its own views), gathered for rank 0's checkpoint."""
    if not context.enabled:
        return [local]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, local)
    return gathered


class Policies:
    """The run directory's files and what the loop does around each step: skip or stop on a non-finite step,
    log every ``log_every`` steps (and warn once of collapse), run the kNN monitor every ``knn_every`` epochs,
    checkpoint every ``checkpoint_every`` steps and at the end. Rank 0 alone writes."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        state: TrainState,
        *,
        dataset: Dataset,
        device: torch.device,
        context: DistributedContext,
        resumed: bool,
        progress: bool,
        prefetch: Prefetch,
    ) -> None:
        self.config, self.run_dir, self.state, self.context, self.prefetch = config, run_dir, state, context, prefetch
        self.elapsed_before, self.config_saved = 0.0, True
        if context.is_main:
            log.info("precision %s (%s)", state.precision.name, state.precision.reason)
            if resumed:
                self.elapsed_before = rundir.truncate_metrics(run_dir, state.step)
            else:
                rundir.remove_logs(run_dir)  # of an earlier start that wrote no checkpoint
            config.save(run_dir / rundir.CONFIG_FILE)
            precision = state.precision
            rundir.record_environment(
                run_dir, resumed, step=state.step, device=str(device), world_size=context.world_size,
                precision=precision.name, precision_reason=precision.reason,
            )  # fmt: skip
        self.knn = (
            KnnMonitor.create(config, dataset, device) if config.train.knn_every > 0 and context.is_main else None
        )
        self.floor = collapse_floor(config.model.projection_dim)
        self.warned_collapse, self.warned_data, self.skipped_steps, self.skipped_files = False, False, 0, set[str]()
        self.bar = tqdm(
            total=self.state.schedule.max_steps, initial=state.step, desc="pretrain", unit="step",
            disable=not (progress and context.is_main),
        )  # fmt: skip
        self.start_time = self.last_time = clock()
        self.last_step = state.step
        self.rate_since = self.start_time, state.step  # (time, step) that seconds_per_step counts from
        self.metrics = rundir.MetricsLog(
            run_dir, context.is_main, tensorboard=config.train.tensorboard, first_step=state.step,
            loggers=config.train.loggers, params=None if resumed else flatten(config.to_dict()),
        )  # fmt: skip
        if not resumed and self.metrics.events is not None:  # what T and T' do to a few images, seeded
            self.metrics.image("views", image_grid(view_samples(config, dataset)), 0)

    def show_eta(self, step_seconds: float | None) -> None:
        """An ETA on the progress bar from a measured step time, before the bar has a rate of its own."""
        if step_seconds is not None:
            eta = (self.state.schedule.max_steps - self.state.step) * step_seconds
            self.bar.set_postfix_str(f"eta {self.bar.format_interval(eta)}")

    def seconds_per_step(self) -> float:
        """The loop's own seconds per step since it started or since :meth:`restart_clock` (logging and checkpoints
        included)."""
        return (clock() - self.rate_since[0]) / max(self.state.step - self.rate_since[1], 1)

    def restart_clock(self) -> None:
        """The loop's speed changed (the run compiled): :meth:`seconds_per_step` counts from here."""
        self.rate_since = clock(), self.state.step

    def note_environment(self, **record: Any) -> None:
        """Adds ``record`` to this start's entry of environment.json (rank 0)."""
        if self.context.is_main:
            rundir.note_environment(self.run_dir, **record)

    def resize(self, epochs: float) -> None:
        """``train.epochs`` from now on (at least the steps done), the settings that follow it moved along: in the
        schedules and the bar now, in config.json with the next checkpoint (which holds the same config)."""
        if self.context.enabled:  # every rank takes rank 0's length: each timed itself, and the ranks' schedules
            chosen = [epochs]  # and collectives must not part
            dist.broadcast_object_list(chosen, src=0)
            epochs = chosen[0]
        state, steps_per_epoch = self.state, self.state.schedule.steps_per_epoch
        # τ_base and the lr follow the new length (byol.length); the warm-up already run and the optimizer's
        # weight decay stay as they are
        self.config = length.follow(
            self.config, max(epochs, state.step / steps_per_epoch), hold=("optim.warmup_epochs", "optim.weight_decay")
        )[0]
        state.schedule = Schedule.create(self.config, steps_per_epoch)
        self.config_saved = False  # config.json follows with the next checkpoint (a resume compares the two)
        log.info("run resized at step %d to %g epochs (%d steps)", state.step, self.config.train.epochs,
                 state.schedule.max_steps)  # fmt: skip
        self.bar.total = state.schedule.max_steps
        self.bar.refresh()

    def non_finite(self, error: NonFiniteError) -> None:
        """Skips the batch (``train.on_nonfinite skip``, up to ``max_skipped_steps``) or stops the run."""
        t = self.config.train
        if t.on_nonfinite == "skip" and self.skipped_steps < t.max_skipped_steps:
            self.skipped_steps += 1
            log.warning("%s: batch skipped (%d of at most %d)", error, self.skipped_steps, t.max_skipped_steps)
            return
        checkpoints = list_checkpoints(self.run_dir)
        last = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written"
        raise TrainingError(f"{error}; the run stopped, {last}") from None

    def log(self, metrics: dict[str, Any]) -> None:
        step = self.state.step
        self.bar.update(1)
        if step % self.config.train.log_every and step != self.state.schedule.max_steps:
            return
        tensors = all_reduce_mean({k: v for k, v in metrics.items() if isinstance(v, Tensor)})
        record = {**{k: float(v) for k, v in metrics.items()}, **{k: float(v) for k, v in tensors.items()}}
        if math.isnan(record.get("probe_acc", 0.0)):  # no labelled image in the batch
            del record["probe_acc"]
        now = clock()
        steps, seconds = max(step - self.last_step, 1), max(now - self.last_time, 1e-9)
        images_per_s = (step - self.last_step) * self.state.schedule.batch_size / seconds
        data_wait = self.prefetch.wait_s / steps  # per step, over the steps since the last record
        self.prefetch.wait_s = 0.0
        self.last_time, self.last_step = now, step
        record.update(
            step=step,
            epoch=step / self.state.schedule.steps_per_epoch,
            elapsed_s=round(self.elapsed_before + now - self.start_time, 3),
            images_per_s=round(images_per_s, 1),
            data_wait_s=round(data_wait, 6),
        )
        self.metrics.write(record)
        postfix = {"loss": f"{record['byol_loss']:.3f}", "tau": f"{record['tau']:.4f}", "lr": f"{record['lr']:.3g}",
                   "img_s": f"{images_per_s:.0f}"}  # fmt: skip
        share = data_wait * steps / seconds
        if share > DATA_BOUND_SHARE:
            postfix["data_wait"] = f"{100 * share:.0f}%"
            if not self.warned_data:
                log.warning(
                    "step %d: %.0f%% of each step waits for its batch (%.3f s of %.3f): the run is data-bound; "
                    "more data.num_workers (now %d) or a smaller data.image_size would feed it faster "
                    "(`byol bench data` says how many workers a step needs)",
                    step, 100 * share, data_wait, seconds / steps, self.config.data.num_workers,
                )  # fmt: skip
                self.warned_data = True
        self.bar.set_postfix(postfix)
        if record["proj_std"] < self.floor and not self.warned_collapse:
            log.warning(
                "collapse warning at step %d: projection std %.4f < 0.1/sqrt(d) = %.4f",
                step, record["proj_std"], self.floor,
            )  # fmt: skip
            self.warned_collapse = True

    def monitor(self, start: bool = False) -> None:
        """kNN of the online encoder at the end of every ``knn_every``-th epoch and of the run (``start``: before
        step 0)."""
        if self.knn is None:
            return
        if start:
            if self.state.step == 0:  # the starting point: kNN of the initial encoder
                self.metrics.write({"step": 0, "epoch": 0, "knn_top1": self.knn(self.state.online.encoder)})
            return
        epoch, within = divmod(self.state.step, self.state.schedule.steps_per_epoch)
        if (
            within == 0 and epoch % self.config.train.knn_every == 0
        ) or self.state.step == self.state.schedule.max_steps:
            top1 = self.knn(self.state.online.encoder)
            epoch_now = self.state.step / self.state.schedule.steps_per_epoch
            self.metrics.write({"step": self.state.step, "epoch": epoch_now, "knn_top1": top1})
            log.info("epoch %g: kNN top-1 %.2f%%", round(epoch_now, 2), top1)

    def checkpoint(self) -> None:
        step = self.state.step
        if step % self.config.train.checkpoint_every and step != self.state.schedule.max_steps:
            return
        generators = generator_states(self.prefetch.generator_state(), self.context)  # every rank gathers
        if self.context.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "config": json.dumps(self.config.to_dict()),
                "state": self.state.state_dict(),
                "data": {"epoch": step // self.state.schedule.steps_per_epoch},
                "rng": rng_state(),
                "generators": generators,
            }
            save_checkpoint(self.run_dir, step, payload, self.config.train.keep_checkpoints)
            if not self.config_saved:
                self.config.save(self.run_dir / rundir.CONFIG_FILE)
                self.config_saved = True

    def close(self) -> None:
        self.metrics.close()
        self.bar.close()
        if self.skipped_steps:
            log.warning("%d step(s) with a non-finite loss or gradient were skipped", self.skipped_steps)
        if self.skipped_files:
            log.warning(
                "%d unreadable image file(s) were skipped during pretraining (see the warnings above)",
                len(self.skipped_files),
            )
