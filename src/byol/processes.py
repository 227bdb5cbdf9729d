"""Nothing the package starts outlives its command: a child process asks the kernel to end it with its parent.

``byol prepare``'s pool workers are forked holding both ends of their task pipe, so a parent killed with
SIGKILL never closes it for them: without this they would wait on it for good. Linux's
``prctl(PR_SET_PDEATHSIG)`` delivers a signal to the child when the thread that forked it ends, however it ends.
"""

from __future__ import annotations

import os
import signal

from byol.files import libc

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int) -> None:
    """Called first in a child forked by process ``parent``: SIGKILL it when that parent dies. If the parent is
    already gone (it died between the fork and this call, so no signal will come), the child ends now. Where the
    C library has no ``prctl`` (not Linux) this only makes that check."""
    prctl = getattr(libc(), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
