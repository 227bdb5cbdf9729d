"""The `byol` command line: the parser of every subcommand (byol/commands), one-line errors, exit codes.

Errors the user can fix (a bad flag, preset, key, path or file) print one message and exit with status 2;
a run that cannot go on (a non-finite loss) exits with status 1. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from byol.commands import PARSERS
from byol.errors import ByolError, one_line


class OneLineFormatter(logging.Formatter):
    """Log records as one line each, a path with a newline in it included (:func:`byol.errors.one_line`)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


SIGPIPE_EXIT = 141  # what a shell reports for a writer whose pipe closed (128 + SIGPIPE), as for `yes | head`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byol",
        description="BYOL (Bootstrap Your Own Latent): self-supervised pretraining and the paper's evaluations.",
        epilog="Config keys can be overridden on any training command as --section.key VALUE "
        "(e.g. --optim.base_lr 0.3); `byol pretrain --help` lists the sections.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def user_message(error: ByolError) -> str:
    """The error's own message; one raised in a DataLoader worker arrives wrapped in the worker's traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its last line is the message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def describe_os_error(error: OSError) -> str:
    """One line for an OS error on a user's path: what failed, on which path, and what to do."""
    path = f" {error.filename}" if error.filename else ""
    advice = {
        errno.ENOSPC: "free disk space and run again",
        errno.EROFS: "the file system is read-only; choose a writable directory",
        errno.EACCES: "no permission; choose a path you can write",
        errno.EPERM: "not permitted; choose a path you can write",
        errno.ENAMETOOLONG: "use a shorter name",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "it is a directory; name a file",
        errno.ENOENT: "check the path",
    }.get(error.errno or 0, "check the path")
    return f"cannot use{path}: {error.strerror or error} ({advice})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    handler_out = logging.StreamHandler()
    handler_out.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler_out])
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Callable[[argparse.Namespace, Sequence[str]], int] = args.handler
    try:
        return handler(args, extra)
    except ByolError as e:
        print(f"byol {args.command}: error: {one_line(user_message(e))}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # the reader of the output went away (`byol knn RUN | head -c1`): results are written
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes it
        return SIGPIPE_EXIT
    except OSError as e:  # a path the user named cannot be read, created or written: nothing was lost
        print(f"byol {args.command}: error: {one_line(describe_os_error(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"byol {args.command}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
