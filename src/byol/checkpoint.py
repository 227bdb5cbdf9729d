"""Checkpoints that are never half-written and never run code when read.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced, then atomically
renamed over its final name (and the directory entry fsynced), so a crash or a kill at any moment leaves
either the old set of checkpoints or the new one. The last ``keep`` checkpoints are kept. Reading uses
``torch.load(weights_only=True)``, which refuses pickled objects that could execute code.

A checkpoint also captures every global RNG (:func:`byol.seeding.rng_state`), so a resumed run is
bit-identical to one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from byol.config import Config, validate
from byol.errors import CheckpointError, ConfigError, first_line
from byol.files import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:09d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's checkpoints, oldest first (temporary files of interrupted saves are ignored)."""
    directory = Path(run_dir) / CHECKPOINT_DIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def save_checkpoint(run_dir: str | Path, step: int, payload: dict[str, Any], keep: int = 2) -> Path:
    """Writes the checkpoint of ``step`` atomically, then deletes all but the newest ``keep``."""
    path = checkpoint_path(run_dir, step)
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:  # torch's zip writer raises RuntimeError on a full disk
        previous = list_checkpoints(run_dir)
        kept = f"the last good checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise CheckpointError(f"could not write checkpoint {path}: {reason}; {kept}") from None
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        with contextlib.suppress(OSError):
            old.unlink()
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a checkpoint without unpickling arbitrary objects; a bad file raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns on some refused files before it raises: the error says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated, tampered or foreign file
        reason = first_line(e)
        if "weights only" in reason.lower() or "weights_only" in reason:  # never repeat torch's unsafe advice
            reason = "it holds pickled objects that a safe load refuses (such a file can run code: never load it)"
        raise CheckpointError(
            f"checkpoint {path} cannot be read safely (truncated, corrupted or not a byol checkpoint): {reason}"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"{path} is not a byol checkpoint (no 'format' entry)")
    return payload


def run_config(payload: dict[str, Any], path: Path) -> Config:
    """The validated config a checkpoint was written with; anything else raises :class:`CheckpointError`."""
    try:
        data = json.loads(payload["config"])
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return validate(Config.from_dict(data))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{path} does not hold a config byol can use ({first_line(e)})") from None


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint of a run directory, or a clear error when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise CheckpointError(
            f"run directory {run_dir} holds no checkpoint (expected {run_dir / CHECKPOINT_DIR}/step_*.pt)"
        )
    return checkpoints[-1]


def load_resumable(run_dir: Path, check: Callable[[dict[str, Any], Path], None]) -> dict[str, Any]:
    """The newest checkpoint that reads and passes ``check`` (which raises :class:`CheckpointError` for one that
    would not load completely); each newer one is moved aside (``.unreadable``), not deleted."""
    latest_checkpoint(run_dir)  # its errors: no such directory, no checkpoint
    for path in reversed(list_checkpoints(run_dir)):
        try:
            payload = load_checkpoint(path)
            check(payload, path)
            return payload
        except CheckpointError as e:
            aside = path.with_name(path.name + ".unreadable")
            path.replace(aside)
            log.warning("%s; moved it aside to %s and resuming from the checkpoint before it", e, aside.name)
    raise CheckpointError(f"no checkpoint of {run_dir} can be read (each was moved aside as *.unreadable)")
