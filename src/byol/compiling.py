"""``torch.compile`` in a run: whether it pays, where its artefacts are kept, and the fall-back to eager.

A run compiles two parts on its own: the networks (the two-view online forward and the target) and the views (the
ops after the crop, :mod:`byol.augment.fused`). ``train.compile true`` or ``false`` decides for both. ``auto`` (the
default) decides each part by one rule:

    compile a part when   remaining steps × its eager seconds a step × (1 − compiled/eager)  >  its compile seconds

The run times its first steps eager (:data:`TIMED_STEPS` after one warm-up step) and its views on their own (on a
copy of the generator: the run's randomness is untouched), so the seconds are this run's on this machine. The
compiled/eager ratio and the compile seconds come from the last run that compiled the same graphs on this machine
(``compile-history.json`` in the cache directory below; its graphs are in the cache, so at most
:data:`CACHED_COMPILE_S` to compile), or where none has, from :func:`prior` (measured, docs/benchmarks.md). After
compiling, the run times its networks eager and compiled in turn, step after step (a shared machine's speed drifts:
each pair is timed on the same machine), and its views compiled: a part that did not get faster goes back to eager,
and the history keeps what was measured, so the next run decides on it.

Compiled artefacts are cached in ``$XDG_CACHE_HOME/byol/torch-compile`` (``~/.cache/byol/torch-compile``): torch's
inductor cache, never in the run directory or the repository, so a second run or a resume starts in seconds. A
user's own ``TORCHINDUCTOR_CACHE_DIR`` wins. A compile that fails (no C compiler, an unsupported op, an old
torch, a damaged cache) says so in one line and the part runs eager; a cache that fails is first left aside and
the part compiled once more without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byol.errors import first_line
from byol.files import user_cache_dir

log = logging.getLogger("byol.train")

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
HISTORY_FILE = "compile-history.json"
TIMED_STEPS = 3  # eager steps timed after the first (which warms up); pairs of eager and compiled steps after the
# compiling one
PARTS = ("networks", "views")
RETRY_AFTER = 5  # runs a measurement that compiling did not pay keeps a part eager, before one measures it again
# The compile seconds a run expects for graphs that this machine compiled before: inductor's cache holds them. Compiles
# from the cache measured 2.9-4 s on 2-core AVX2 and AVX512_BF16 CPUs and 1.3-3 s on an AMX one; a first compile
# 25-70 s. A cache that was emptied since costs one run its first compile again, which the history then records.
CACHED_COMPILE_S = 5.0


@dataclass(frozen=True)
class Estimate:
    """What compiling a part is expected to cost and give: its compile seconds and compiled/eager step ratio."""

    ratio: float
    compile_s: float


# First compiles and compiled/eager ratios measured on a 2-core AVX2 CPU (docs/benchmarks.md, `byol bench step` and
# `byol bench augment`): the networks of cpu-demo 0.80 (87.1 / 111.3 ms), compiled in 49 s; the views 0.55 at 96 px
# (remove-blur), compiled in 25-50 s. A GPU compiles as long (Triton kernels) and gains at least as much.
PRIORS = {
    "networks": Estimate(ratio=0.8, compile_s=60.0),
    "views": Estimate(ratio=0.6, compile_s=50.0),
}
# The networks in the contiguous layout gain less from compiling than in channels_last on every CPU measured (the
# demo's loop, docs/benchmarks.md): 0.74 against 0.60 on AVX2 (fp32), 0.91 against 0.79-0.83 on AVX512_BF16, 0.87-0.88
# against 0.73 on AVX512_BF16 + AMX (bf16).
CONTIGUOUS_NETWORKS = Estimate(ratio=0.9, compile_s=60.0)


def prior(part: str, channels_last: bool) -> Estimate:
    """What compiling a part is expected to give where this machine has not measured it."""
    return CONTIGUOUS_NETWORKS if part == "networks" and not channels_last else PRIORS[part]


def cache_dir() -> Path:
    """Where compiled artefacts are cached: the user's cache directory, not the run's or the repository."""
    return user_cache_dir() / "torch-compile"


# The variable as the user set it before byol was loaded. torch sets it too, to its own default under /tmp, the
# first time anything imports torch._dynamo (a torch.optim optimizer does: the demo's random-init evaluation).
_USER_SETTING = os.environ.get(CACHE_ENV)


def _torch_default() -> str | None:
    """torch's own default for the variable, where torch may have set it: only its ``cache_dir_utils`` sets it, so
    while that module is not loaded the variable is not torch's doing (and loading it here would cost 1.5 s)."""
    utils = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    return None if utils is None else os.path.abspath(utils.default_cache_dir())


def use_cache() -> Path:
    """Points torch's inductor cache at :func:`cache_dir` unless the user chose one (``TORCHINDUCTOR_CACHE_DIR``);
    torch's own default, where torch set it and not the user, is not a choice and is replaced."""
    current = os.environ.get(CACHE_ENV)
    if current is None or (current != _USER_SETTING and os.path.abspath(current) == _torch_default()):
        os.environ[CACHE_ENV] = str(cache_dir())
    return Path(os.environ[CACHE_ENV])


@contextlib.contextmanager
def _without_cache() -> Iterator[None]:
    """Compiling with a fresh, empty inductor cache (a damaged one is left where it is, unused)."""
    import tempfile

    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    with tempfile.TemporaryDirectory(prefix="byol-compile-") as fresh, temporary_cache_dir(fresh):
        yield


FAILURES_SAID: set[str] = set()  # the reasons compiling failed for that this process has told the user


class CompiledOrEager(nn.Module):
    """``torch.compile(module)`` (or of a function) that falls back to the module itself when compiling fails: the
    run says so in one line and goes on eager. Compiling happens at the first call, before anything of it runs, so
    the eager call that replaces it computes what the step would have computed. A failure with the cache in use is
    retried once without it (a damaged cache); an error of the model itself fails eager too, and surfaces there."""

    def __init__(self, module: nn.Module | Callable[..., Any], what: str) -> None:
        super().__init__()
        self.eager, self.what, self.failed, self.compiled_once = module, what, False, False
        use_cache()
        self.compiled = torch.compile(module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                out = self.compiled(*args, **kwargs)
                self.compiled_once = True
                return out
            except Exception as e:  # torch raises several kinds (BackendCompilerFailed, InductorError, ...)
                if not self.compiled_once:
                    retried = self._without_cache(e, *args, **kwargs)
                    if retried is not None:
                        return retried[0]
                self.failed = True
                self._say_failed(first_line(e))
        return self.eager(*args, **kwargs)

    def _say_failed(self, reason: str) -> None:
        """One line for a failure: the views (T and T′), the online and the target network that fail for the same
        reason (no C++ compiler, say) say it once, in the first part's words; the others log at debug level."""
        if reason in FAILURES_SAID:
            log.debug("torch.compile of the %s failed too (%s); continuing eager", self.what, reason)
            return
        FAILURES_SAID.add(reason)
        log.warning("torch.compile of the %s failed (%s); continuing eager, as will any part failing the same way",
                    self.what, reason)  # fmt: skip

    def _without_cache(self, error: Exception, *args: Any, **kwargs: Any) -> tuple[Any] | None:
        try:
            torch._dynamo.reset()
            with _without_cache():
                out = torch.compile(self.eager)(*args, **kwargs)
        except Exception:
            return None
        log.warning("torch.compile of the %s failed with the cache in %s (%s); compiled again without it",
                    self.what, os.environ.get(CACHE_ENV), first_line(error))  # fmt: skip
        self.compiled = torch.compile(self.eager)  # later calls: torch's in-memory graphs of the retry
        self.compiled_once = True
        return (out,)


@dataclass(frozen=True)
class Decision:
    """Whether a part is compiled, and the numbers behind it (``by``: "train.compile", "rule", or "length": the run
    ended before its steps were timed)."""

    part: str
    compile: bool
    by: str
    steps: int = 0
    eager_s: float = 0.0
    ratio: float = 1.0
    compile_s: float = 0.0
    source: str = ""  # where ratio and compile_s come from: "history" (this machine) or "prior"

    @property
    def saving_s(self) -> float:
        return self.steps * self.eager_s * (1.0 - self.ratio)

    def line(self) -> str:
        if self.by == "length":
            return (
                f"compile {self.part}: off (the run ended within its first {TIMED_STEPS + 1} steps, "
                "before they could be timed)"
            )
        if self.by != "rule":
            return f"compile {self.part}: {'on' if self.compile else 'off'} ({self.by})"
        verdict = "on" if self.compile else "off"
        sign = ">" if self.compile else "<="
        return (
            f"compile {self.part}: {verdict} ({self.steps} steps x {1e3 * self.eager_s:.1f} ms x "
            f"(1 - {self.ratio:.2f}) = {self.saving_s:.1f} s saved {sign} {self.compile_s:.0f} s to compile; "
            f"ratio and compile time from the {self.source})"
        )


def decide(part: str, steps: int, eager_s: float, estimate: Estimate, source: str) -> Decision:
    """The rule: compile when the expected saving over the remaining steps exceeds the compile time."""
    saving = steps * eager_s * (1.0 - estimate.ratio)
    return Decision(part, saving > estimate.compile_s, "rule", steps, eager_s, estimate.ratio,
                    estimate.compile_s, source)  # fmt: skip


def networks_seconds(step_s: float, views_s: float, device: torch.device) -> float:
    """The networks' share of a step: on a CPU the step makes the next batch's views too (train_step's overlap),
    a GPU makes them beside it."""
    return max(step_s - views_s, 0.5 * step_s) if device.type == "cpu" else step_s


def expected(
    keys: dict[str, str], steps: int, seconds: dict[str, float], history: History, channels_last: bool
) -> list[Decision]:
    """The rule for each part, from its eager ``seconds`` a step and its history (or prior) estimate."""
    return [decide(name, steps, seconds[name], *history.estimate(keys[name], prior(name, channels_last)))
            for name in PARTS]  # fmt: skip


def fingerprint(*parts: Any) -> str:
    """A key for the graphs a part compiles: what shapes them (config sections, shapes, device, torch)."""
    text = json.dumps([*parts, torch.__version__, torch.backends.cpu.get_cpu_capability()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class History:
    """``compile-history.json`` beside the cache: per fingerprint, the last measured ratio and compile seconds.

    A measurement that compiling did not pay (a ratio of 1 or more) keeps the part eager on this machine, and an
    eager run measures nothing new: so after :data:`RETRY_AFTER` runs it kept eager, the next run decides on the
    prior again, compiles (from the cache: seconds) and measures anew. A busy machine can make one measurement
    wrong; it does not make compiling stop for good."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or use_cache() / HISTORY_FILE

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: the priors decide, and the next write replaces it
        return data if isinstance(data, dict) else {}

    def estimate(self, key: str, fallback: Estimate) -> tuple[Estimate, str]:
        """``key``'s last measurement, or ``fallback`` (the prior) where there is none to go by."""
        found = self.read().get(key)
        try:
            if isinstance(found, dict):
                ratio, compile_s = float(found["ratio"]), float(found["compile_s"])
                if _no_gain(found) and _eager_runs(found) >= RETRY_AFTER:
                    return fallback, f"prior (the history's no-gain measurement has kept {RETRY_AFTER} runs eager)"
                if compile_s > CACHED_COMPILE_S:  # the compile measured was the first, its graphs are cached now
                    return Estimate(ratio, CACHED_COMPILE_S), "history, its graphs in the cache"
                return Estimate(ratio, compile_s), "history"
        except (TypeError, KeyError, ValueError):
            pass
        return fallback, "prior"

    def record(self, key: str, estimate: Estimate) -> None:
        """A new measurement of ``key`` (its count of eager runs starts again)."""
        data = self.read()
        data[key] = asdict(estimate)
        self._write(data)

    def kept_eager(self, key: str) -> None:
        """A run that did not compile ``key``'s graphs: where its measurement is of no gain, one more eager run."""
        data = self.read()
        if isinstance(data.get(key), dict) and _no_gain(data[key]):
            data[key]["eager_runs"] = _eager_runs(data[key]) + 1
            self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        from byol.files import write_json  # local: files imports nothing of torch's, this module does

        with contextlib.suppress(OSError):  # a read-only home: the run goes on, the next one uses the priors
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.path, data, sort_keys=True)


def _no_gain(entry: dict[str, Any]) -> bool:
    """Whether a history entry measured compiling to be no faster than eager (it keeps the part eager)."""
    try:
        return float(entry["ratio"]) >= 1.0
    except (TypeError, KeyError, ValueError):
        return False


def _eager_runs(entry: dict[str, Any]) -> int:
    count = entry.get("eager_runs", 0)
    return count if isinstance(count, int) else 0  # an entry damaged by hand counts from 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Part:
    """One part a run may compile: ``compile()`` and ``eager()`` switch it (both idempotent)."""

    def __init__(self, name: str, compile: Callable[[], None], eager: Callable[[], None]) -> None:
        self.name, self._compile, self._eager, self.compiled = name, compile, eager, False

    def compile(self) -> None:
        self._compile()
        self.compiled = True

    def eager(self) -> None:
        self._eager()
        self.compiled = False


class RunCompiler:
    """A run's compile decisions and their measurement, stepped by the training loop (:meth:`after_step`).

    ``setting`` is ``train.compile``. ``keys``: each part's :func:`fingerprint`. ``remaining``: the steps the run
    has left. ``views_seconds()``: the seconds of one batch's views on a copy of the run's generator,
    synchronised. ``agree``: every rank's decisions made rank 0's (under torchrun). ``report``: called with the
    decisions as they are taken and measured (the log, environment.json); ``keeps_history``: this process writes
    the history (rank 0). ``settled``: called once the run's speed is final (the loop's clock for its own seconds
    per step restarts there). ``channels_last``: the networks' layout (its :func:`prior`). A run that ends before its
    steps are timed stays eager and says so."""

    def __init__(
        self,
        setting: str,
        parts: dict[str, Part],
        keys: dict[str, str],
        *,
        device: torch.device,
        views_seconds: Callable[[], float],
        agree: Callable[[Any], Any] = lambda decisions: decisions,
        report: Callable[[list[dict[str, Any]]], None] = lambda records: None,
        settled: Callable[[], None] = lambda: None,
        history: History | None = None,
        keeps_history: bool = True,
        channels_last: bool = True,
    ) -> None:
        self.parts, self.keys, self.device, self.views_seconds = parts, keys, device, views_seconds
        self.channels_last = channels_last
        self.agree, self.report, self.settled = agree, report, settled
        self.history, self.keeps_history = history or History(), keeps_history
        self.eager_steps: list[float] = []
        self.paired: dict[bool, list[float]] = {False: [], True: []}  # the timing steps, eager and compiled
        self.records: dict[str, dict[str, Any]] = {}
        self.phase = "eager" if setting == "auto" else "done"
        if setting != "auto":
            for name, part in parts.items():
                decision = Decision(name, setting == "true", "train.compile")
                log.info(decision.line())
                self.records[name] = asdict(decision)
                if decision.compile:
                    part.compile()
            self.report(list(self.records.values()))

    def after_step(self, seconds: float, remaining: int) -> None:
        """The loop's wall seconds of the step just taken (its one host synchronisation included)."""
        if self.phase == "eager":
            self.eager_steps.append(seconds)
            if len(self.eager_steps) > TIMED_STEPS:  # the first step warms up
                self._decide(remaining)
            elif remaining <= 0:
                self._too_short()
        elif self.phase == "compiling":  # the networks' first compiled step compiled them
            self.compile_step_s = seconds
            self.parts["networks"].eager()  # then eager and compiled in turn
            self.phase = "timing"
        elif self.phase == "timing":
            networks = self.parts["networks"]
            self.paired[networks.compiled].append(seconds)
            if len(self.paired[True]) == TIMED_STEPS:
                self._measure_networks()
            elif networks.compiled:
                networks.eager()
            else:
                networks.compile()

    def _decide(self, remaining: int) -> None:
        step_s = median(self.eager_steps[1:])
        views_s = min(self.views_seconds() for _ in range(2))
        self.views_eager_s = views_s
        seconds = {"networks": networks_seconds(step_s, views_s, self.device), "views": views_s}
        decisions = self.agree(expected(self.keys, remaining, seconds, self.history, self.channels_last))
        for decision in decisions:
            log.info(decision.line())
            self.records[decision.part] = {**asdict(decision), "measured": None}
            if self.keeps_history and not decision.compile:
                self.history.kept_eager(self.keys[decision.part])
        self.phase = "done"
        by_part = {d.part: d for d in decisions}
        if by_part["views"].compile:
            self._compile_views()
        if by_part["networks"].compile:
            self.parts["networks"].compile()
            self.phase = "compiling"
        self.report(list(self.records.values()))
        if self.phase == "done":
            self.settled()

    def _too_short(self) -> None:
        for name in self.parts:
            decision = Decision(name, False, "length")
            log.info(decision.line())
            self.records[name] = asdict(decision)
        self.phase = "done"
        self.report(list(self.records.values()))

    def _compile_views(self) -> None:
        views = self.parts["views"]
        views.compile()
        first = self.views_seconds()  # compiles
        compiled_s = min(self.views_seconds() for _ in range(TIMED_STEPS))
        self._measured("views", compiled_s / self.views_eager_s, max(first - compiled_s, 0.0))
        self.views_now_s = compiled_s

    def _measure_networks(self) -> None:
        """The median over pairs of steps (eager, then compiled) of the compiled networks' seconds over the eager
        ones', each less the views the step made."""
        views_s = getattr(self, "views_now_s", self.views_eager_s)
        pairs = zip(self.paired[False], self.paired[True], strict=True)
        ratio = median([networks_seconds(c, views_s, self.device) / networks_seconds(e, views_s, self.device)
                        for e, c in pairs])  # fmt: skip
        self._measured("networks", ratio, max(self.compile_step_s - median(self.paired[True]), 0.0))
        self.phase = "done"
        self.report(list(self.records.values()))
        self.settled()

    def _measured(self, name: str, ratio: float, compile_s: float) -> None:
        """A compiled part's measured ratio and compile time: kept in the history; slower than eager: eager again
        (rank 0's measurement decides for every rank)."""
        ratio, compile_s = self.agree((ratio, compile_s))
        faster = ratio < 1.0
        if self.keeps_history:
            self.history.record(self.keys[name], Estimate(ratio=round(ratio, 4), compile_s=round(compile_s, 2)))
        self.records[name]["measured"] = {"ratio": round(ratio, 4), "compile_s": round(compile_s, 2)}
        if faster:
            log.info("compiled %s: %.2f of the eager time, compiled in %.0f s", name, ratio, compile_s)
            return
        self.parts[name].eager()
        self.records[name]["compile"] = False
        log.info("compiled %s ran at %.2f of the eager time (compiled in %.0f s): eager again", name, ratio,
                 compile_s)  # fmt: skip
