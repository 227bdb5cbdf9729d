"""A run directory has one writer at a time, and keeps no debris of writes that were cut short.

The writer holds an exclusive ``flock`` on ``<run>/.lock`` for as long as it runs. The kernel drops the lock
when the process ends, however it ends (SIGKILL included), so a crashed run never leaves it stuck; a second
writer is refused with a message naming the directory. On taking the lock, temporary files of writes that a
kill interrupted (``.<name>.tmp-<pid>``, see :func:`byol.checkpoint.atomic_write`) are removed: with the lock
held, no other process can be writing them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path

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
