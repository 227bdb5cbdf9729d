"""`byol demo`: BYOL on Fashion-MNIST within a time budget, evaluated against a random-init encoder.

1. Time a few training steps of the preset on this machine (in both memory layouts when the layout is
   ``auto``, keeping the one whose steps will be faster, compiled where the run will compile:
   :func:`fastest_layout`).
2. Evaluate a randomly initialised encoder (the architecture and seed of the run, i.e. the online encoder
   before training) with kNN (k = 200, T = 0.1) and linear evaluation on cached features. This comes first
   because the BYOL encoder's evaluation will take as long: the demo knows its cost before it plans.
3. Plan the run: as many epochs as the budget leaves after both evaluations, the kNN monitor's points (timed
   once on the random-init encoder) and the report (a multiple of a tenth of an epoch; ``--epochs`` forces a
   length; with ``train.compile auto`` at the step time compiling will give, its compile time taken off first:
   :func:`planned_compile`). CPUs differ by 10x or more (native bf16 or not, cores), GPUs by more; a
   fixed number of epochs cannot fit them all in the same minutes, a budget can.
4. Pretrain with the ``cpu-demo`` preset (its docstring gives the choices and why). At the end of warm-up the
   run is re-planned once from the loop's own seconds per step (:class:`Replan`): a shared machine may run
   slower or faster than during the few timed steps.
   The kNN monitor measures the online encoder at a few points (:data:`KNN_POINTS`): the report's kNN curve.
5. Evaluate the online encoder with exactly the same protocols, write the report and print the table.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from byol import compiling, length
from byol.bench import StepFixture, step_times
from byol.checkpoint import list_checkpoints
from byol.choices import DEMO_BUDGET_MINUTES
from byol.config import Config, apply_overrides, cpu_demo, validate
from byol.distributed import resolve_device
from byol.errors import ConfigError
from byol.evaluate.common import load_encoder_from_run, random_encoder, write_result
from byol.evaluate.frozen import FrozenEvaluation, KnnMonitor
from byol.files import write_json
from byol.precision import Precision
from byol.rundir import check_run_dir
from byol.train import compile_keys, pretrain

log = logging.getLogger(__name__)

BUDGET_MINUTES = DEMO_BUDGET_MINUTES
EPOCH_QUANTUM = 0.1  # the planned length is a multiple of this: small timing noise rarely changes it
MIN_EPOCHS, MAX_EPOCHS = 1.0, 20.0  # below 1 epoch BYOL has not learned yet; past 20 the demo gains little
RESERVE = 0.05  # of the budget, for checkpoints, logging and the report
LAYOUT_GAIN = 1.05  # the other memory layout is taken only when it is this much faster (timing noise)
# The loop's steps are slower on average than the timed ones (checkpoints, logging, epoch changes and the
# step time drifting with the weights: 3-13% in five 9-minute runs on an AVX2 CPU); the plan assumes this.
LOOP_OVERHEAD = 1.1
# The re-plan measures the loop itself; this margin is for a machine that slows down after it. At 1.05 one
# seed-0 run on a 2-core AVX2 VM re-planned at 0.158 s/step, then the VM slowed to 0.2-0.3 s/step: 612 s wall.
REPLAN_MARGIN = 1.15
MIN_REPLAN_STEP = 50  # without warm-up, the loop's speed is measured over this many steps
# The kNN monitor runs at the start, every ceil(epochs / KNN_POINTS) epochs and at the end: the report's kNN curve.
# Its cost is measured on the random-init encoder (also the curve's first point) and taken off the budget.
KNN_POINTS = 5
# The report with its two t-SNE maps (byol.visualize.MAP_IMAGES points each, 7.7 s each): `byol report` took 28.8 s
# on the demo's run on a 2-core AVX2 CPU.
REPORT_SECONDS = 30.0


def default_run_dir() -> Path:
    return Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class Plan:
    """How long the demo pretrains, and the measurements behind it."""

    epochs: float
    step_seconds: float
    steps_per_epoch: int
    pretrain_budget_s: float
    sized: bool  # False: --epochs forced the length
    compile_s: float = 0.0  # the expected compile time the plan took off the budget (train.compile auto)

    @property
    def steps(self) -> int:
        return round(self.epochs * self.steps_per_epoch)

    def describe(self, budget_minutes: float) -> str:
        minutes = self.steps * self.step_seconds * LOOP_OVERHEAD / 60
        if not self.sized:
            return (
                f"pretraining {self.epochs:g} epochs ({self.steps} steps, forced by --epochs): about {minutes:.1f} min"
            )
        compiled = f", after about {self.compile_s:.0f} s of compiling" if self.compile_s else ""
        text = (
            f"pretraining {self.epochs:g} epochs ({self.steps} steps at {self.step_seconds:.3f} s/step "
            f"{'expected compiled' if self.compile_s else 'measured here'}, +{LOOP_OVERHEAD - 1:.0%} for the loop)"
            f"{compiled}: about {minutes:.1f} min, sized to the {budget_minutes:g}-min budget"
        )
        if self.epochs >= MAX_EPOCHS:
            text += f" (capped at {MAX_EPOCHS:g} epochs)"
        elif self.steps * self.step_seconds * LOOP_OVERHEAD + self.compile_s > self.pretrain_budget_s:
            text += f" (the minimum of {MIN_EPOCHS:g} epoch: this machine is too slow for the budget)"
        return text


def measure_step_seconds(config: Config, device: torch.device, repeats: int = 5) -> float:
    """The fastest of ``repeats`` training steps (views included) of ``config`` on ``device``, after two warm-up
    steps, on a throwaway state (pretraining re-seeds everything, so the run is unaffected). The fastest, not
    the median: on this shared 2-core VM the median of 3 read 0.348 s once against 0.275-0.295 s in six
    other runs (20 px), and that run trained 25% less than it could; the loop's overhead is
    :data:`LOOP_OVERHEAD`."""
    fixture = StepFixture(config, device, torch.Generator(device=device).manual_seed(config.train.seed))
    return min(step_times(fixture.step, device, repeats, warmup=2))


def measure_views_seconds(config: Config, device: torch.device, repeats: int = 5) -> float:
    """The fastest of ``repeats`` calls of the view pipeline on a batch of ``config`` (:func:`measure_step_seconds`)."""
    fixture = StepFixture(config, device, torch.Generator(device=device).manual_seed(config.train.seed))
    return min(step_times(fixture.views_only, device, repeats, warmup=1))


def planned_compile(
    config: Config, device: torch.device, step_seconds: float, steps: int, quiet: bool = False
) -> tuple[float, float]:
    """What ``train.compile auto`` will compile in a run of about ``steps`` steps (the loop's own rule,
    :mod:`byol.compiling`, on the seconds measured here): the expected seconds a step and to compile."""
    if config.train.compile != "auto":  # true: the timed step was compiled (and the cache warmed); false: eager
        return step_seconds, 0.0
    views_s = measure_views_seconds(config, device)
    seconds = {"networks": compiling.networks_seconds(step_seconds, views_s, device), "views": views_s}
    precision = Precision.for_run(config.train, device)
    keys = compile_keys(config, precision.name, device)
    decisions = compiling.expected(keys, steps, seconds, compiling.History(), precision.channels_last)
    if not quiet:
        for decision in decisions:
            log.info("planned: %s", decision.line())
    compiled = [d for d in decisions if d.compile]
    return step_seconds - sum(d.eager_s * (1 - d.ratio) for d in compiled), sum(d.compile_s for d in compiled)


def fastest_layout(config: Config, device: torch.device, budget_s: float) -> tuple[Config, float]:
    """Times a step in the config's memory layout and in the other one (contiguous / channels_last), and returns
    the config with the layout whose steps the run will be faster in (the other only if :data:`LAYOUT_GAIN` times
    faster) and its eager step time. With ``train.compile auto`` that is the step compiling is expected to give in
    a run of ``budget_s`` (:func:`planned_compile`: the compile history of each layout on this machine): on an
    AVX512_BF16 CPU the two eager steps were within 5% of each other while compiling made channels_last 0.79-0.83
    of its eager step and contiguous 0.91. Which layout is faster depends on the machine: channels_last fp32 was
    1.2x faster on an AVX2 CPU and 7% slower on an AVX512_BF16 one; numerics differ only in float rounding."""
    own = "channels_last" if Precision.for_run(config.train, device).channels_last else "contiguous"
    other = "contiguous" if own == "channels_last" else "channels_last"
    configs = {own: config, other: apply_overrides(config, {"train.memory_format": other})}
    eager, expected = {}, {}
    for layout, candidate in configs.items():
        eager[layout] = measure_step_seconds(candidate, device)
        steps = round(budget_s / (eager[layout] * LOOP_OVERHEAD))
        expected[layout] = planned_compile(candidate, device, eager[layout], steps, quiet=True)[0]
    chosen, rival = (other, own) if expected[other] * LAYOUT_GAIN < expected[own] else (own, other)
    kind = "as train.compile auto will run it" if config.train.compile == "auto" else "eager"
    log.info(
        "layout: %s, a step of %.3f s %s against %.3f s in %s (eager %.3f against %.3f s)",
        chosen, expected[chosen], kind, expected[rival], rival, eager[chosen], eager[rival],
    )  # fmt: skip
    return configs[chosen], eager[chosen]


@dataclass
class Replan:
    """The run's length re-planned at step ``at_step`` from the loop's own seconds per step: as many epochs
    as fit what is left of ``budget_s`` since ``start`` (time.perf_counter), with :data:`REPLAN_MARGIN`."""

    at_step: int
    steps_per_epoch: int
    budget_s: float
    start: float
    epochs: float | None = None  # the re-planned length, once chosen
    seconds_per_step: float | None = None

    def __call__(self, seconds_per_step: float) -> float:
        per_step = seconds_per_step * REPLAN_MARGIN
        left = self.budget_s - (time.perf_counter() - self.start)
        self.epochs = plan_epochs(per_step, self.steps_per_epoch, left + self.at_step * per_step)
        self.seconds_per_step = seconds_per_step
        log.info(
            "re-planned at step %d from the loop's %.3f s/step (+%.0f%%): %g epochs in all",
            self.at_step, seconds_per_step, 100 * (REPLAN_MARGIN - 1), self.epochs,
        )  # fmt: skip
        return self.epochs


def plan_epochs(step_seconds: float, steps_per_epoch: int, pretrain_budget_s: float) -> float:
    """The longest run, in multiples of :data:`EPOCH_QUANTUM` epochs, that fits ``pretrain_budget_s``,
    within [:data:`MIN_EPOCHS`, :data:`MAX_EPOCHS`]."""
    fits = pretrain_budget_s / (step_seconds * steps_per_epoch)
    quanta = math.floor(fits / EPOCH_QUANTUM + 1e-9)  # 3.5 / 0.1 is 34.999… in binary floating point
    return min(MAX_EPOCHS, max(MIN_EPOCHS, round(quanta * EPOCH_QUANTUM, 6)))


def _plan(
    config: Config, device: torch.device, step_seconds: float, steps_per_epoch: int, budget_s: float, sized: bool
) -> Plan:
    """The run's length: as many epochs as ``budget_s`` holds at the step time ``train.compile`` will give, its
    compile time taken off first (``sized=False``: the config's own epochs)."""
    eager_steps = round(budget_s / (step_seconds * LOOP_OVERHEAD))
    step_seconds, compile_s = planned_compile(config, device, step_seconds, eager_steps)
    fitted = plan_epochs(step_seconds * LOOP_OVERHEAD, steps_per_epoch, budget_s - compile_s)
    epochs = fitted if sized else config.train.epochs
    return Plan(epochs=epochs, step_seconds=step_seconds, steps_per_epoch=steps_per_epoch, pretrain_budget_s=budget_s,
                sized=sized, compile_s=compile_s)  # fmt: skip


def _evaluate(frozen: FrozenEvaluation, encoder: torch.nn.Module, *, dataset: str, init: str, progress: bool) -> list:
    results = frozen.knn_and_linear(encoder, progress, desc=f"{init} ")
    for result in results:
        result.update(dataset=dataset, init=init, encoder="online" if init == "pretrained" else "random init")
    return list(results)


def run_demo(
    run_dir: Path,
    config: Config | None = None,
    *,
    progress: bool = True,
    budget_minutes: float | None = None,
    size_to_budget: bool = True,
) -> dict[str, Any]:
    """Evaluates random init, plans, pretrains, evaluates BYOL identically, writes the report; returns the
    summary. ``size_to_budget=False`` keeps ``config.train.epochs`` (the user forced a length)."""
    config = validate(config or cpu_demo())
    check_run_dir(run_dir)  # refused now, not after a minute of evaluation
    if list_checkpoints(run_dir):
        raise ConfigError(f"{run_dir} already holds a run; choose another --run-dir")
    start = time.perf_counter()
    device = resolve_device(config.train.device)
    budget_minutes = budget_minutes or BUDGET_MINUTES.get(device.type, BUDGET_MINUTES["cpu"])
    if config.train.memory_format == "auto":  # chosen first: both encoders are evaluated in the run's layout
        config, step_seconds = fastest_layout(config, device, budget_minutes * 60)
    else:
        step_seconds = measure_step_seconds(config, device)

    frozen = FrozenEvaluation.from_config(config, device)
    eval_start = time.perf_counter()
    dataset = config.data.dataset
    baseline = random_encoder(config, frozen.train.channels)
    random_results = _evaluate(frozen, baseline, dataset=dataset, init="random", progress=progress)
    eval_seconds = time.perf_counter() - eval_start
    monitor_start = time.perf_counter()
    KnnMonitor(config, frozen.train, device)(baseline)
    monitor_seconds = time.perf_counter() - monitor_start

    steps_per_epoch = len(frozen.train) // config.optim.batch_size
    after_training = eval_seconds + (KNN_POINTS + 2) * monitor_seconds + REPORT_SECONDS
    pretrain_budget = budget_minutes * 60 * (1 - RESERVE) - (time.perf_counter() - start) - after_training
    plan = _plan(config, device, step_seconds, steps_per_epoch, pretrain_budget, size_to_budget)
    epochs, step_seconds, compile_s = plan.epochs, plan.step_seconds, plan.compile_s
    log.info("%s; precision %s", plan.describe(budget_minutes), frozen.precision.name)
    config = length.follow(config, epochs)[0]  # the settings that follow the length move with the plan
    config = apply_overrides(config, {"train.knn_every": max(1, math.ceil(epochs / KNN_POINTS))})

    pretrain_start = time.perf_counter()
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)
    replan = Replan(
        at_step=max(warmup_steps, MIN_REPLAN_STEP), steps_per_epoch=steps_per_epoch, budget_s=pretrain_budget,
        start=pretrain_start,
    )  # fmt: skip
    hint = step_seconds * LOOP_OVERHEAD
    pretrain(config, run_dir, progress=progress, step_seconds_hint=hint, resize=replan if size_to_budget else None)
    pretrain_seconds = time.perf_counter() - pretrain_start
    epochs = replan.epochs or epochs
    encoder = load_encoder_from_run(run_dir).encoder
    pretrained = _evaluate(frozen, encoder, dataset=dataset, init="pretrained", progress=progress)

    rows = []
    for init, (knn, linear) in (("pretrained", pretrained), ("random", random_results)):
        write_result(run_dir, f"knn_{dataset}_{init}", knn)
        write_result(run_dir, f"linear-cached-standardized_{dataset}_{init}", linear)
        rows.append({"init": init, "knn_top1": knn["top1"], "linear_top1": linear["top1"]})
    from byol.report import write_report  # matplotlib: only where a picture is drawn, not when `byol --help` runs

    report = write_report(run_dir)
    summary = {
        "run_dir": str(run_dir),
        "device": str(device),
        "precision": frozen.precision.name,
        "budget_minutes": budget_minutes,
        "sized_to_budget": size_to_budget,
        "epochs": epochs,
        "planned_epochs": plan.epochs,
        "step_seconds_measured": step_seconds,
        "planned_compile_s": compile_s,
        "loop_seconds_per_step": replan.seconds_per_step,
        "evaluation_seconds": eval_seconds,
        "pretrain_budget_s": pretrain_budget,
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": time.perf_counter() - start,
        "rows": rows,
        "knn_gain": rows[0]["knn_top1"] - rows[1]["knn_top1"],
        "linear_gain": rows[0]["linear_top1"] - rows[1]["linear_top1"],
        "report": str(report),
    }
    write_json(run_dir / "demo.json", summary)
    return summary


def format_summary(summary: dict[str, Any], dataset: str) -> str:
    """What `byol demo` prints at the end: the table, the report and the run directory."""
    return (
        f"\n{dataset} test set, after {summary['epochs']:g} epochs, {summary['pretrain_seconds'] / 60:.1f} min of "
        f"BYOL pretraining ({summary['total_seconds'] / 60:.1f} min in all, {summary['device']}, "
        f"{summary['precision']}):\n{format_table(summary)}\n\nreport: {summary['report']}\n"
        f"run directory: {summary['run_dir']} (watch it with: tensorboard --logdir {summary['run_dir']})"
    )


def format_table(summary: dict[str, Any]) -> str:
    byol, random = summary["rows"]
    lines = [
        f"{'encoder (same architecture)':<30}{'kNN top-1':>12}{'linear top-1':>15}",
        f"{'BYOL (online encoder)':<30}{byol['knn_top1']:>11.2f}%{byol['linear_top1']:>14.2f}%",
        f"{'random init':<30}{random['knn_top1']:>11.2f}%{random['linear_top1']:>14.2f}%",
        f"{'BYOL gain (points)':<30}{summary['knn_gain']:>+12.2f}{summary['linear_gain']:>+15.2f}",
    ]
    return "\n".join(lines)
