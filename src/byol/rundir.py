"""A run directory: its files (metrics.jsonl, config.json, environment.json), one writer at a time, and no
debris of writes that were cut short.

The writer holds an exclusive ``flock`` on ``<run>/.lock`` for as long as it runs. The kernel drops the lock
when the process ends, however it ends (SIGKILL included), so a crashed run never leaves it stuck; a second
writer is refused with a message naming the directory. On taking the lock, temporary files of writes that a
kill interrupted (``.<name>.tmp-<pid>``, see :func:`byol.checkpoint.atomic_write`) are removed: with the lock
held, no other process can be writing them.
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

from byol.checkpoint import atomic_write, write_json
from byol.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
TEMP_MARK = ".tmp-"


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
    return True


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Deletes the temporary files of interrupted writes in ``run_dir`` and its subfolders; returns them."""
    removed = []
    for path in run_dir.rglob(f".*{TEMP_MARK}*"):
        if path.is_file():
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def exclusive(run_dir: str | Path, what: str = "a run") -> Iterator[Path]:
    """Holds ``run_dir``'s writer lock (creating the directory) for the ``with`` block; refuses a second writer."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# ---- the files of a run directory, written by the training loop and read by evaluation, report and ablate

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
ENVIRONMENT_FILE = "environment.json"
TIMING_KEYS = ("elapsed_s", "images_per_s")  # the only metrics.jsonl fields that depend on the machine's speed


def writer_lock(run_dir: Path) -> contextlib.AbstractContextManager[Any]:
    """The run directory's lock, taken by the process that writes (rank 0 under torchrun)."""
    writer = int(os.environ.get("RANK", "0")) == 0
    return exclusive(run_dir, "this run") if writer else contextlib.nullcontext()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as records; a line cut short by a kill is skipped."""
    records = []
    for line in (run_dir / METRICS_FILE).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """config.json as a dict (None when the run has none yet)."""
    path = run_dir / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


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
    starts = json.loads(path.read_text()) if resume and path.is_file() else []
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    starts.append({**record, **machine, "torch": torch.__version__})
    write_json(path, starts)


class MetricsLog:
    """metrics.jsonl, appended one JSON record per line and flushed as it goes; ``enabled=False`` (ranks
    other than 0) writes nothing."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.file = open(run_dir / METRICS_FILE, "a") if enabled else None  # noqa: SIM115 (closed by close())

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
