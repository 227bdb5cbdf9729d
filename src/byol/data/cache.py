"""A node's cache of whole shards fetched from object storage, kept under a byte budget.

Layout: ``CACHE/objects/<sha256>`` (a shard, named by its content: a shard replaced in the store is another
file, and two sets sharing a shard share it), ``CACHE/objects/<sha256>.part`` (one being fetched),
``CACHE/objects/.lock``, and ``CACHE/index/<sha256>.npy`` (each split's index, outside the budget: 30 bytes per
image).

Rules, which hold for every process of a node at once (DataLoader workers, several ranks): a shard is written
under its ``.part`` name into space reserved in full before the first byte (``posix_fallocate``), checked
against the manifest's SHA-256, and only then renamed to its name: a reader never sees a part. The reservation,
the eviction and the choice of who fetches happen under one file lock (``flock`` on ``.lock``), and the bytes in
``objects/`` (parts included) never exceed the budget. A reader holds a shared lock on a shard while it reads it,
so a shard in use is never evicted; a part whose fetching process died (its lock gone) is removed by the next one.

What goes is decided by the known future order (Belady's rule): the order of an epoch is a pure function of
(manifest, seed, epoch, world size), so :meth:`ShardCache.plan` knows when each shard is next needed, and the
one needed last goes first. A shard is never evicted for one needed later than itself, so a prefetcher
(:meth:`ShardCache.prefetch`) runs ahead only as far as the budget allows without throwing away what comes
sooner.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from byol.errors import DataError, quoted

LOCK = ".lock"
PART = ".part"
OWN_NAME = re.compile(rf"[0-9a-f]{{64}}(?:{re.escape(PART)})?")  # the names it writes: a digest, or its part
PREFETCH_THREADS = 8  # shards fetched at once ahead of the readers (each in parallel ranged parts)
WAIT_FOR_ROOM = 120.0  # seconds a reader waits for space before the budget is called too small


_HELD: set[int] = set()  # descriptors this process has open here (each may carry a lock)
_FORKING = threading.Lock()  # held across a fork, and while a descriptor is opened or closed


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    with _FORKING:
        fd = os.open(path, flags, mode)
        _HELD.add(fd)
    return fd


def _close(fd: int) -> None:
    with _FORKING:
        _HELD.discard(fd)
        os.close(fd)


def _forget_in_child() -> None:
    """A forked child closes its copies of the descriptors its parent had open here: a lock (flock) belongs to
    the open file, which lives as long as any copy of its descriptor, so a DataLoader worker forked while a
    prefetch thread held the cache's lock, or had just opened it, would otherwise hold it for good. The fork
    waits for an open or a close under way (:data:`_FORKING`), so no descriptor escapes the list."""
    global _FORKING
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()
    _FORKING = threading.Lock()


os.register_at_fork(
    before=lambda: _FORKING.acquire(), after_in_parent=lambda: _FORKING.release(), after_in_child=_forget_in_child
)


@dataclass(frozen=True)
class Entry:
    """A shard the cache may hold: its SHA-256, size, and how to fetch it into an open file (returns the bytes
    it fetched)."""

    digest: str
    size: int
    fetch: Callable[[int, Callable[[int], bool]], int]


def file_matches(fd: int, digest: str, size: int) -> bool:
    """Whether the open file ``fd`` holds ``size`` bytes hashing to ``digest``."""
    sha = hashlib.sha256()
    for start in range(0, size, 1 << 20):
        chunk = os.pread(fd, min(1 << 20, size - start), start)
        if not chunk:
            return False
        sha.update(chunk)
    return sha.hexdigest() == digest


class ShardCache:
    def __init__(self, root: Path, budget: int) -> None:
        self.root, self.budget = root, budget
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        (root / "index").mkdir(exist_ok=True)
        self.uses: dict[str, list[int]] = {}  # digest -> the positions it is needed at, this epoch and the next
        self.current: dict[str, int] = {}  # digest -> its position this epoch
        self.horizon = 0  # the first position of the next epoch
        self.window = 1
        self.position = multiprocessing.RawValue("q", 0)  # how far this rank has read; shared with its workers
        self.fetched = multiprocessing.Value("q", 0)  # bytes this rank (workers included) fetched
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- the order ---------------------------------------------------------------------------------------------
    def plan(self, now: Sequence[Sequence[str]], later: Sequence[Sequence[str]], window: int) -> None:
        """The shards of this node in the order they will be read: ``now[r][i]`` is the digest of the i-th shard
        rank r reads this epoch (ranks advance together), ``later`` the same for the next epoch. ``window``: how
        many positions behind the current one are still being read."""
        uses: dict[str, list[int]] = {}
        self.current = {}
        for sequence in now:
            for position, digest in enumerate(sequence):
                uses.setdefault(digest, []).append(position)
                self.current.setdefault(digest, position)
        offset = max((len(s) for s in now), default=0)
        for sequence in later:
            for position, digest in enumerate(sequence):
                uses.setdefault(digest, []).append(offset + position)
        self.uses, self.window, self.horizon = uses, window, offset
        self.position.value = 0

    def advance(self, position: int) -> None:
        if position > self.position.value:
            self.position.value = position

    def next_use(self, digest: str) -> float:
        """When ``digest`` is needed next: its first position not already passed (inf: not in the plan)."""
        floor = self.position.value - self.window
        return min((p for p in self.uses.get(digest, ()) if p >= floor), default=math.inf)

    # --- reading -----------------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.objects / digest

    def part(self, digest: str) -> Path:
        """Where a shard is written while it is fetched."""
        return self.objects / f"{digest}{PART}"

    @contextlib.contextmanager
    def opened(self, entry: Entry) -> Iterator[int]:
        """A descriptor of the cached shard, fetched first if it is not there, locked against eviction while
        the caller reads it."""
        if entry.digest in self.current:  # a late read of an earlier shard leaves the position where it is
            self.advance(self.current[entry.digest])
        while True:
            fd = self._open_cached(entry.digest)
            if fd is not None:
                break
            self.ensure(entry, self.position.value, wait=True)
        try:
            yield fd
        finally:
            _close(fd)

    def _open_cached(self, digest: str) -> int | None:
        try:
            fd = _open(self.path(digest), os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:  # evicted between the open and the lock
            _close(fd)
            return None
        return fd

    # --- admission ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = _open(self.objects / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            _close(fd)

    def _own(self) -> list[Path]:
        """The files of ``objects/`` that the cache wrote (shards and parts). Anything else there (a user's
        file in a folder they named as data.cache_dir) is neither counted against the budget nor evicted."""
        return [path for path in self.objects.iterdir() if OWN_NAME.fullmatch(path.name)]

    def usage(self, own: Sequence[Path] | None = None) -> int:
        """Bytes in the cache's objects (``own``: a listing of them already made), parts (reserved in full)
        included."""
        total = 0
        for path in self._own() if own is None else own:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def ensure(self, entry: Entry, needed_at: float, *, wait: bool) -> bool:
        """Makes ``entry`` present, fetching it if no other process is; ``needed_at``: its position (what may be
        evicted for it: only shards needed later). Without ``wait`` (a prefetch) only shards not needed again
        this epoch may go, and False says there is no room yet; with ``wait`` (a reader) it waits for room
        (readers release shards, the position moves on) up to :data:`WAIT_FOR_ROOM` seconds."""
        if entry.size > self.budget:
            raise DataError(
                f"a shard of {entry.size} bytes does not fit the cache's budget of {self.budget} bytes; raise "
                "data.cache_bytes"
            )
        started = time.monotonic()
        while True:
            fd, busy = self._reserve(entry, needed_at if wait else max(needed_at, self.horizon - 0.5))
            if fd is None and not busy:
                if self.path(entry.digest).exists():
                    return True
                if not wait:
                    return False
                if time.monotonic() - started > WAIT_FOR_ROOM:
                    raise DataError(
                        f"the shard cache in {quoted(self.root)} ({self.budget} bytes) has had no room for "
                        f"{WAIT_FOR_ROOM:.0f} s: every shard in it is in use; raise data.cache_bytes or lower "
                        "data.shard_window"
                    )
                time.sleep(0.02)
                continue
            if busy:  # another process fetches it: wait for its lock on the part, then look again
                self._wait_for_part(entry.digest)
                continue
            assert fd is not None
            part = self.part(entry.digest)
            try:
                fetched = entry.fetch(fd, lambda f: file_matches(f, entry.digest, entry.size))
                with self.fetched.get_lock():
                    self.fetched.value += fetched
                with self._locked():  # a listing that ran beside the rename could miss the file and over-admit
                    os.rename(part, self.path(entry.digest))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part)
                raise
            finally:
                _close(fd)
            return True

    def _reserve(self, entry: Entry, needed_at: float) -> tuple[int | None, bool]:
        """Under the cache lock: (a locked, fully reserved part to fetch into, False), or (None, True) when another
        process fetches it, or (None, False) when it is present or there is no room."""
        part = self.part(entry.digest)
        with self._locked():
            if self.path(entry.digest).exists():
                return None, False
            if part.exists():
                if self._held(part):
                    return None, True
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()  # its fetcher died
            if not self._make_room(entry.size, needed_at):
                return None, False
            fd = _open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                os.posix_fallocate(fd, 0, entry.size)
            except BaseException:
                _close(fd)
                part.unlink()
                raise
            return fd, False

    def _held(self, path: Path) -> bool:
        """Whether some process holds a lock on ``path`` (a part being fetched, a shard being read)."""
        try:
            fd = _open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            _close(fd)

    def _wait_for_part(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            fd = _open(self.part(digest), os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # blocks until the fetcher closes it
            finally:
                _close(fd)

    def _make_room(self, size: int, needed_at: float) -> bool:
        """Evicts shards needed later than ``needed_at`` (the one needed last first; in-use ones never) until
        ``size`` more bytes fit the budget. False (having evicted nothing needed sooner) when they cannot."""
        own = self._own()
        used = self.usage(own)
        if used + size <= self.budget:
            return True
        shards = [path for path in own if not path.name.endswith(PART)]
        candidates = sorted(
            ((self.next_use(p.name), p) for p in shards if self.next_use(p.name) > needed_at),
            key=lambda pair: -pair[0],
        )
        for _, path in candidates:
            try:
                fd = _open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # being read
                _close(fd)
                continue
            try:
                freed = os.fstat(fd).st_size
                path.unlink()
            finally:
                _close(fd)
            used -= freed
            if used + size <= self.budget:
                return True
        return False

    # --- prefetching -------------------------------------------------------------------------------------------
    def prefetch(self, entries: Sequence[Entry], positions: Sequence[int]) -> None:
        """Fetches ``entries`` (this rank's shards in the order it reads them, at ``positions`` of the plan) ahead
        of the readers, :data:`PREFETCH_THREADS` at a time, as far as the budget lets it; :meth:`stop` ends it.
        Start it after the DataLoader has forked."""
        self.stop()
        self._stop = threading.Event()

        pending = iter(list(zip(entries, positions, strict=True)))
        taking = threading.Lock()

        def run() -> None:  # each thread takes the next shard in order: one that stalls holds up only itself
            while not self._stop.is_set():
                with taking:
                    entry, position = next(pending, (None, 0))
                if entry is None:
                    return
                while not self._stop.is_set():
                    try:
                        if self.ensure(entry, position, wait=False):
                            break
                    except Exception:  # the reader that needs it fetches it and reports the error
                        return
                    self._stop.wait(0.02)

        self._threads = [
            threading.Thread(target=run, name="byol-prefetch", daemon=True) for _ in range(PREFETCH_THREADS)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._threads = []
