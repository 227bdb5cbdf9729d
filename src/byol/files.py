"""Writing files so that a kill leaves the old output or the new one, never a mix, and cleaning what kills left.

Every file the package writes goes through :func:`atomic_write`: a temporary ``.<name>.tmp-<pid>`` beside it,
flushed and fsynced, renamed over the final name in one step, the directory entry fsynced. An output made of
several files is one folder, built beside its place and swapped in by :func:`replace_folder` in one step too.

What a kill leaves (a temporary, a staged folder) carries the writer's process id. It is debris only once that
process is gone: :func:`remove_debris_of` and :func:`remove_debris` delete nothing of a process that still runs,
so a command never removes the live temporary of another one writing beside it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

# The names of what an interrupted write leaves: a temporary file or staged folder, or a replaced folder.
DEBRIS = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h


def fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary(path: Path, kind: str = "tmp") -> Path:
    """The name this process writes ``path`` under before it is renamed into place."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Calls ``write(file)`` on a temporary file, then renames it to ``path``; on error ``path`` is untouched.
    What an earlier, killed write of ``path`` left beside it goes first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_debris_of(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and e.filename is None:  # a full disk at write or fsync names no file: this one
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    fsync_directory(path.parent)


def write_json(path: Path, data: Any, sort_keys: bool = False) -> None:
    """``data`` as indented JSON with a final newline, written atomically (:func:`atomic_write`)."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths in one step (Linux's ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the filesystem cannot, having changed nothing."""
    renameat2 = getattr(libc(), "renameat2", None)
    if renameat2 is None:
        return False
    done = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if done == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(second))


def cache_home() -> Path:
    """The user's cache directory, where every program keeps its own: ``$XDG_CACHE_HOME``, else ``~/.cache``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def user_cache_dir() -> Path:
    """byol's folder in :func:`cache_home`: what the package keeps between commands that is no run's and no
    output's (compiled graphs, shard verifications)."""
    return cache_home() / "byol"


def libc() -> Any:
    """The process's C library (for the calls Python does not wrap: renameat2, mallopt); None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # no C library to open (not a POSIX system)
        return None


def replace_folder(out: Path, build: Callable[[Path], object]) -> None:
    """``build(folder)`` writes a whole output folder beside ``out`` (``.<name>.tmp-<pid>``), which then takes
    ``out``'s place in one step: a kill at any moment leaves the old folder at ``out`` or the new one.

    Where the system cannot swap two folders in one step, the old one is renamed aside, the new one in, and the
    old one deleted; a kill between the two renames is repaired by the next write of ``out``
    (:func:`remove_debris_of` puts the old folder back)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_debris_of(out)
    staging = temporary(out)
    try:
        build(staging)
        fsync_directory(staging)
        if not out.exists():
            staging.rename(out)
        elif exchange(staging, out):  # staging now holds the old folder, removed below
            pass
        else:
            old = temporary(out, "old")
            out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        fsync_directory(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_running(pid: int) -> bool:
    """Whether a process with this id runs (this one does not count: its debris is its own to clean)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is another user's
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def remove_debris_of(path: Path) -> None:
    """Removes what killed writes of ``path`` left beside it (a temporary or a staged folder of a process that no
    longer runs), and puts back a folder that a kill between two renames left aside while ``path`` is missing."""
    if not path.parent.is_dir():
        return
    for sibling in sorted(path.parent.iterdir()):
        match = DEBRIS.match(sibling.name)
        if not match or match["name"] != path.name or process_running(int(match["pid"])):
            continue
        if match["kind"] == "old" and not path.exists() and not path.is_symlink():
            sibling.rename(path)
        else:
            _remove(sibling)


def remove_debris(folder: Path) -> list[Path]:
    """Removes every temporary file of a killed write in ``folder`` (that process gone); returns them."""
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        match = DEBRIS.match(path.name)
        if match and match["kind"] == "tmp" and path.is_file() and not process_running(int(match["pid"])):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed
