"""Errors that speak to the user. The CLI turns them into a message and an exit status, never a traceback."""

import os


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's run to many lines), or its type when it has none."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class ByolError(Exception):
    """Base class. ``exit_code`` is what the command line exits with."""

    exit_code = 1


class ConfigError(ByolError):
    """A bad preset, key, value or flag: the user's input is wrong (exit status 2)."""

    exit_code = 2


class DataError(ByolError):
    """A missing, empty, corrupt or wrongly formatted dataset (exit status 2)."""

    exit_code = 2


class CheckpointError(ByolError):
    """A missing, truncated, tampered or incompatible checkpoint (exit status 2)."""

    exit_code = 2


class TrainingError(ByolError):
    """Training cannot go on, e.g. a non-finite loss (exit status 1)."""


class NonFiniteError(TrainingError):
    """A NaN or Inf in the loss or the gradients; raised before the optimizer touches the weights."""


def one_line(text: str) -> str:
    """``text`` with every character that would break or hide a line (newlines, tabs, escape sequences, Unicode
    line separators, undecodable bytes) written as its escape: what the command line prints is one line by
    construction, whatever a path or a library's message holds."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def quoted(value: object) -> str:
    """A path or name as a message prints it on one line: quoted, with newlines, control characters and bytes
    that are not UTF-8 escaped (``'my\\nrun'``), so a message is one line whatever the user's names hold."""
    return repr(os.fspath(value) if isinstance(value, os.PathLike) else str(value))
