"""Nothing the package starts outlives its command: a child process asks the kernel to end it with its parent.

``byol prepare``'s pool workers are forked holding both ends of their task pipe, so a parent killed with
SIGKILL never closes it for them: without this they would wait on it for good. Linux's
``prctl(PR_SET_PDEATHSIG)`` delivers a signal to the child when the thread that forked it ends, however it ends;
a watch thread in the child that ends it once its parent is gone does the same where there is no ``prctl`` (not
Linux), and is a second guard should the signal not come. (Pool workers left running beside test runs were once
taken for missed signals; every one examined since came from the issue's own, older suite, run beside for timing,
from before any guard: docs/reliability.md.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

from byol.files import libc

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_S = 0.5  # how often a child checks that its parent lives


def die_with_parent(parent: int) -> None:
    """Called first in a child forked by process ``parent``: SIGKILL it when that parent dies. If the parent is
    already gone (it died between the fork and this call, so no signal will come), the child ends now. A daemon
    thread then checks every :data:`WATCH_S` that the parent lives and ends the child when it does not, where the
    C library has no ``prctl`` (not Linux) and should the signal not come."""
    prctl = getattr(libc(), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_end_with, args=(parent,), name="byol-die-with-parent", daemon=True).start()


def _end_with(parent: int) -> None:
    """Ends this process once ``parent`` is no longer its parent (it died: the child was handed to another)."""
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    os._exit(1)
