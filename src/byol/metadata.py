"""What describes an exported encoder: its architecture file's fields, each checked, and the digest of its
weights. Shared by the safetensors export (``byol.export``) and the Hub layout (``byol.hub``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from byol.config import BLOCKS_PER_STAGE, MAX_IMAGE_SIZE, STEMS, finite_number
from byol.errors import CheckpointError, first_line

EXPORT_FORMAT = 1
ARCHITECTURE_KEYS = ("depth", "width", "stem", "in_channels", "zero_init_residual")


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order: safetensors checks its header but
    not its data, so a flipped bit would load silently as another encoder without this."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def read_metadata(meta_file: Path) -> dict[str, Any]:
    """An export's architecture file, every field checked; anything else raises :class:`CheckpointError`."""
    if not meta_file.is_file():
        raise CheckpointError(f"the architecture file {meta_file} is missing (written by `byol export`)")
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({first_line(e)})") from None
    return check_metadata(meta, str(meta_file))


def check_metadata(meta: Any, meta_file: str) -> dict[str, Any]:
    """``meta`` if it describes an encoder this package can build; else :class:`CheckpointError` naming the field."""
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or meta.get("architecture") != "resnet-v1":
        raise CheckpointError(f"{meta_file} is not a byol encoder description")
    checks = [
        ("depth", isinstance(meta.get("depth"), int) and meta.get("depth") in BLOCKS_PER_STAGE,
         f"one of {', '.join(map(str, BLOCKS_PER_STAGE))}"),
        ("width", finite_number(meta.get("width")) and 0 < meta.get("width", 0) <= 64, "a number in (0, 64]"),
        ("stem", meta.get("stem") in STEMS, f"one of {', '.join(STEMS)}"),
        ("in_channels", _integer(meta.get("in_channels"), 64), "an integer in [1, 64]"),
        ("zero_init_residual", isinstance(meta.get("zero_init_residual"), bool), "true or false"),
        ("image_size", _integer(meta.get("image_size"), MAX_IMAGE_SIZE), f"an integer in [1, {MAX_IMAGE_SIZE}]"),
        ("mean", _numbers(meta.get("mean"), meta.get("in_channels")), "one number per input channel"),
        ("std", _numbers(meta.get("std"), meta.get("in_channels")), "one number per input channel"),
        ("pretrained_on", isinstance(meta.get("pretrained_on"), str), "a dataset name"),
        ("sha256", isinstance(meta.get("sha256", ""), str), "the hex digest of the weights"),
    ]  # fmt: skip
    for key, ok, valid in checks:
        if not ok:
            shown = repr(meta[key]) if key in meta else "missing"
            raise CheckpointError(f"{meta_file}: {key!r} is {shown}; expected {valid} (rewrite it with `byol export`)")
    return meta


def _integer(value: Any, most: int) -> bool:
    """An int (not a bool) in [1, most]: a size an encoder can be built with, without exhausting memory."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most


def _numbers(values: Any, count: Any) -> bool:
    return isinstance(values, list) and len(values) == count and all(finite_number(v) for v in values)
