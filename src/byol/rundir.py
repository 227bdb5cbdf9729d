"""A run directory: whose it is, its files (metrics.jsonl, config.json, environment.json), one writer at a time,
and no debris of writes that were cut short.

A run directory is one the package created, or an empty one it was given: either way it holds the marker
``.byol-run``. A directory that exists, is not empty and holds no marker is the user's, and is refused before
anything is written (runs made before the marker existed are recognised by holding only the package's names).

The writer holds an exclusive ``flock`` on ``<run>/.lock`` for as long as it runs. The kernel drops the lock
when the process ends, however it ends (SIGKILL included), so a crashed run never leaves it stuck; a second
writer is refused with a message naming the directory. On taking the lock, temporary files of writes that a
kill interrupted (``.<name>.tmp-<pid>``, see :func:`byol.files.atomic_write`) are removed from the folders the
package writes in that run, and nowhere else, unless their process still runs (a report or an evaluation writes
beside a run without its lock).
The folders that this call created are removed again when a failure left in them only the marker and the lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from byol.checkpoint import CHECKPOINT_DIR
from byol.config import Config, finite_number, flatten, validate
from byol.errors import CheckpointError, ConfigError, DataError, first_line, quoted
from byol.extras import available
from byol.files import DEBRIS, atomic_write, remove_debris, write_json
from byol.loggers import MLRUNS_DIR, TRACKERS_FILE, WANDB_DIR, Trackers, names

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
MARKER_FILE = ".byol-run"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.json"
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
REPORT_DIR = "report"
WRITTEN_FOLDERS = ("", CHECKPOINT_DIR, EVAL_DIR, REPORT_DIR)  # where the package writes through temporary files
# Every name the package writes at the top of a run directory (the demo's summary, an ablation cell's result).
RUN_ENTRIES = frozenset(
    {MARKER_FILE, LOCK_FILE, METRICS_FILE, CONFIG_FILE, ENVIRONMENT_FILE, TENSORBOARD_DIR, EVAL_DIR, REPORT_DIR,
     CHECKPOINT_DIR, "demo.json", "result.json", TRACKERS_FILE, MLRUNS_DIR, WANDB_DIR}
)  # fmt: skip


_HELD: set[int] = set()  # the lock descriptors this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the copies of the parent's lock descriptors, so that a lock
    dies with the process that took it, not with the last of its workers (a SIGKILLed run resumes at once)."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _lock(fd: int) -> bool:
    """Takes an exclusive, non-blocking lock; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no advisory locks, one writer is the user's responsibility
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    _HELD.add(fd)
    return True


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a run directory of the package: it holds the marker, or (a run made before the
    marker) a config.json and nothing but names the package writes."""
    if (path / MARKER_FILE).is_file():
        return True
    if not (path / CONFIG_FILE).is_file():
        return False
    return all(entry.name in RUN_ENTRIES or DEBRIS.match(entry.name) for entry in path.iterdir())


def check_run_dir(run_dir: Path, *, exists: bool = False) -> None:
    """Refuses a run directory the package may not write: a file, a directory of the user's (not empty, not a
    run); ``exists``: one that does not exist (a run to resume)."""
    if not run_dir.exists():
        if exists:
            raise CheckpointError(f"run directory {run_dir} does not exist")
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file; name a directory for the run")
    if not is_run_dir(run_dir) and any(run_dir.iterdir()):
        raise ConfigError(
            f"--run-dir {run_dir} holds files that byol did not write (it has no {MARKER_FILE}); "
            "name a new or empty directory for the run"
        )


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Deletes the temporary files of interrupted writes in the folders the package writes, those of processes
    that still run (a report being written beside a resume) excepted; returns them."""
    return [path for folder in WRITTEN_FOLDERS for path in remove_debris(run_dir / folder)]


@contextlib.contextmanager
def exclusive(run_dir: str | Path, what: str = "a run", *, create: bool = True) -> Iterator[Path]:
    """Holds ``run_dir``'s writer lock for the ``with`` block; refuses a second writer and a directory that is
    not the package's (:func:`check_run_dir`). ``create``: make the directory when it does not exist."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, exists=not create)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # deepest first
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER_FILE).touch()
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock(fd):
            raise ConfigError(
                f"{run_dir} is in use by another byol process (it holds {run_dir / LOCK_FILE}); "
                f"wait for it to finish, or choose another directory for {what}"
            )
        for path in remove_stale_temporaries(run_dir):
            log.info("removed %s, left by an interrupted write", path)
        yield run_dir
    except BaseException:
        if created and {p.name for p in run_dir.iterdir()} <= {MARKER_FILE, LOCK_FILE}:
            with contextlib.suppress(OSError):  # nothing of the run was written: leave no trace
                (run_dir / MARKER_FILE).unlink()
                (run_dir / LOCK_FILE).unlink()
                for folder in created:  # the folders this call made, up to the first that existed
                    folder.rmdir()
        raise
    finally:
        _HELD.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock


# ---- the files of a run directory, written by the training loop and read by evaluation, report and ablate

TIMING_KEYS = (
    "elapsed_s",
    "images_per_s",
    "data_wait_s",
)  # the only metrics.jsonl fields that depend on the machine's speed


def writer_lock(run_dir: Path, *, create: bool = True) -> contextlib.AbstractContextManager[Any]:
    """The run directory's lock, taken by the process that writes (rank 0 under torchrun; an environment that
    does not describe a process group is refused, see :func:`byol.distributed.environment`)."""
    from byol.distributed import environment  # local: distributed imports torch.distributed

    writer = environment().is_main
    return exclusive(run_dir, "this run", create=create) if writer else contextlib.nullcontext()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as records. A line that is not a JSON object of numbers with a ``step`` (cut short by a
    kill, edited, not UTF-8) is left out, so readers see only records the loop could have written."""
    records = []
    for line in (run_dir / METRICS_FILE).read_bytes().splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and all(finite_number(v) for v in record.values()) and "step" in record:
            records.append(record)
    return records


_REQUIRED = object()


def read_json(path: Path, *, missing: Any = _REQUIRED) -> Any:
    """A JSON file of the run; ``missing`` is returned where the file is absent (without it, that is an error).
    Bytes that are not UTF-8 JSON raise :class:`DataError` naming the file."""
    if not path.is_file():
        if missing is _REQUIRED:
            raise DataError(f"{path} does not exist; is {path.parent} a byol run directory?")
        return missing
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({first_line(e)}); it was cut short or edited") from None


def read_config(run_dir: Path) -> Config:
    """config.json as a validated :class:`Config`; a file that is not one raises :class:`DataError`."""
    path = run_dir / CONFIG_FILE
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a byol config (a JSON object of sections)")
    try:
        return validate(Config.from_dict(data))
    except ConfigError as e:
        raise DataError(f"{path} is not a config byol can use: {first_line(e)}") from None


def earlier_history(run_dir: Path) -> list[str]:
    """What an earlier start left in ``run_dir`` that a fresh start would replace or leave beside the new run's
    files as if they were its own: logged steps, evaluation results, a report, a demo's or an ablation's result."""
    found = []
    if (run_dir / METRICS_FILE).is_file():
        steps = [r["step"] for r in read_metrics(run_dir)]
        if steps:
            found.append(f"{METRICS_FILE} up to step {max(steps):g}")
    for folder in (EVAL_DIR, REPORT_DIR):
        directory = run_dir / folder
        entries = [p for p in directory.iterdir() if not DEBRIS.match(p.name)] if directory.is_dir() else []
        if entries:
            found.append(f"{folder}/ ({len(entries)} file(s))")
    found += [name for name in ("demo.json", "result.json") if (run_dir / name).exists()]
    return found


# Keys that change how fast a run goes, not what it learns: a resume may set them anew (`--resume --train.compile`).
SPEED_SWITCHES = ("train.compile",)


def _differences(ours: dict[str, Any], theirs: dict[str, Any], here: str, there: str) -> list[str]:
    """ "key: A here, B there" for each key of ``ours`` whose value ``theirs`` does not share (speed switches aside)."""
    return [f"{key}: {ours[key]!r} {here}, {theirs.get(key)!r} {there}" for key in ours
            if theirs.get(key) != ours[key] and key not in SPEED_SWITCHES]  # fmt: skip


def check_unchanged(run_dir: Path, config: Config) -> None:
    """Refuses a resume whose config.json the user changed since the checkpoint it resumes from, whose config is
    ``config`` (the run goes on as the checkpoint holds it, so an edit would be silently undone): one line naming
    each key, both values and what to do. A config.json that is not a config at all is rewritten from the
    checkpoint, with a warning."""
    if not (run_dir / CONFIG_FILE).is_file():
        return
    try:
        saved = flatten(read_config(run_dir).to_dict())
    except DataError as e:
        log.warning("%s; the resume rewrites it from the checkpoint", e)
        return
    changed = _differences(flatten(config.to_dict()), saved, "in the checkpoint", "in config.json")
    if changed:
        raise ConfigError(
            f"{quoted(run_dir / CONFIG_FILE)} was changed since the checkpoint the run resumes from "
            f"({'; '.join(changed)}); "
            "--resume continues a run as its checkpoint holds it: put the value back, or start a new run "
            "(`byol pretrain --run-dir NEW ...`) with the new setting"
        )


def check_same_run(run_dir: Path, saved: Config, given: Config) -> None:
    """`--resume auto` found a run in ``run_dir``: refuses flags that describe another run (``given`` against the
    checkpoint's ``saved``), naming each key, rather than continue a run the command line does not describe."""
    changed = _differences(flatten(saved.to_dict()), flatten(given.to_dict()), "in the run", "in the flags")
    if changed:
        raise ConfigError(
            f"--resume auto: {quoted(run_dir)} holds a run with other settings ({'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''}); give the run's own flags, or another --run-dir"
        )


def remove_logs(run_dir: Path) -> None:
    """metrics.jsonl and the TensorBoard event files, before a run starts afresh in ``run_dir``."""
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    for events in (run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
        events.unlink()


def truncate_metrics(run_dir: Path, last_step: int) -> float:
    """Drops log records past the resumed checkpoint, so a resumed run's log equals an uninterrupted one
    (but for :data:`TIMING_KEYS`). Returns the training seconds the kept records had reached."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return 0.0
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    elapsed = next((r["elapsed_s"] for r in reversed(kept) if "elapsed_s" in r), 0.0)
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))
    return float(elapsed)


def record_environment(run_dir: Path, resume: bool, **record: Any) -> None:
    """environment.json: one record per start of the run (a resume may run on another machine), ``record``
    followed by what this machine's torch reports (its CPU capability, threads and version)."""
    path = run_dir / ENVIRONMENT_FILE
    try:
        starts = read_json(path, missing=[]) if resume else []
        if not isinstance(starts, list):
            raise DataError(f"{path} is not a list of the run's starts")
    except DataError as e:  # a history cut short or edited: kept whole beside a new one, never overwritten
        path.replace(path.with_name(path.name + ".unreadable"))
        log.warning("%s; moved it aside to %s.unreadable and starting its history afresh", e, path.name)
        starts = []
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    starts.append({**record, **machine, "torch": torch.__version__})
    write_json(path, starts)


def note_environment(run_dir: Path, **record: Any) -> None:
    """Adds ``record`` to the last start's entry of environment.json (what the run decided once started)."""
    path = run_dir / ENVIRONMENT_FILE
    starts = read_json(path, missing=[])
    if isinstance(starts, list) and starts and isinstance(starts[-1], dict):
        starts[-1].update(record)
        write_json(path, starts)


class MetricsLog:
    """metrics.jsonl, appended one JSON record per line and flushed as it goes, and the same records as
    TensorBoard scalars in ``<run>/tensorboard/`` (``tensorboard``: where the package is installed; the tag
    is the record's key, the global step its ``step``) and as metrics of the experiment trackers named in
    ``loggers`` (:mod:`byol.loggers`; ``params``: the flattened config of a run that starts afresh, None on a
    resume). ``enabled=False`` (ranks other than 0) writes nothing.

    A resumed run's event writer puts a purge mark after ``first_step`` (its checkpoint), so TensorBoard drops the
    events an interrupted run wrote past that checkpoint, as :func:`truncate_metrics` drops their records.
    """

    def __init__(
        self, run_dir: Path, enabled: bool, *, tensorboard: bool = False, first_step: int = 0, loggers: str = "",
        params: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.run_dir = run_dir
        self.file = open(run_dir / METRICS_FILE, "a") if enabled else None  # noqa: SIM115 (closed by close())
        self.trackers = Trackers(run_dir, names(loggers), params) if enabled and loggers else None
        self.events: Any = None
        if enabled and tensorboard:
            if available("tensorboard"):
                from torch.utils.tensorboard import SummaryWriter

                self.events = SummaryWriter(
                    str(run_dir / TENSORBOARD_DIR), purge_step=first_step + 1 if first_step else None
                )
            else:
                log.info(
                    "no TensorBoard events: the tensorboard package is not installed (pip install 'byol[tensorboard]')"
                )

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            try:
                self.file.write(json.dumps(record) + "\n")
                self.file.flush()
            except OSError as e:  # a full disk names no file
                raise OSError(e.errno, e.strerror or str(e), self.file.name) from None
        if self.events is not None:
            for key, value in record.items():
                if key != "step":
                    self.events.add_scalar(key, value, record["step"])
        if self.trackers is not None:
            self.trackers.metrics(record)

    def image(self, tag: str, picture: torch.Tensor, step: int) -> None:
        """A (3, H, W) picture with values in [0, 1], for TensorBoard's images tab."""
        if self.events is not None:
            self.events.add_image(tag, picture, step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.events is not None:
            self.events.close()
        if self.trackers is not None:
            self.trackers.artifacts([self.run_dir / name for name in (CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE)])
            self.trackers.close()
