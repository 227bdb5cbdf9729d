"""Export the online encoder for downstream use, load it back, and embed datasets with it.

``export_encoder`` writes the ONLINE encoder's weights as safetensors (a format that cannot carry code) and a
small JSON beside it with the architecture and the input normalisation; ``load_encoder`` rebuilds a ready
``nn.Module`` in inference mode from the pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from byol.checkpoint import atomic_write, write_json
from byol.config import finite_number
from byol.data import load_dataset, split_name
from byol.distributed import resolve_device
from byol.errors import CheckpointError, ConfigError, first_line
from byol.evaluate.common import extract_features, load_encoder_from_run
from byol.networks import BLOCKS_PER_STAGE, STEMS, ResNet

EXPORT_FORMAT = 1


def metadata_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def export_encoder(run: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Writes <out> (safetensors) and <out>.json (architecture) from a run's latest checkpoint."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(
            f"--out {out}: name a .safetensors file (the architecture goes beside it, as {out.stem}.json)"
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name a .safetensors file, e.g. {out / 'encoder.safetensors'}")
    pretrained = load_encoder_from_run(run)
    config = pretrained.config
    dataset = load_dataset(config.data.dataset, "train", config.data.data_dir, config.data.image_size)
    meta = {
        "format": EXPORT_FORMAT,
        "architecture": "resnet-v1",
        "depth": config.model.depth,
        "width": config.model.width,
        "stem": config.model.stem,
        "in_channels": pretrained.in_channels,
        "zero_init_residual": config.model.zero_init_residual,
        "out_dim": pretrained.encoder.out_dim,
        "image_size": config.data.image_size,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "pretrained_on": config.data.dataset,
        "checkpoint": pretrained.source,
        "network": "online encoder",
    }
    weights = {k: v.contiguous() for k, v in pretrained.encoder.state_dict().items()}
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise CheckpointError(f"{pretrained.source} holds non-finite encoder weights; nothing was exported")
    atomic_write(out, lambda f: f.write(save(weights)))
    write_json(metadata_path(out), meta)
    return out, metadata_path(out)


def read_metadata(path: Path) -> dict[str, Any]:
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: its architecture file {meta_file} is missing (written by `byol export`)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or meta.get("architecture") != "resnet-v1":
        raise CheckpointError(f"{meta_file} is not a byol encoder description")
    checks = [
        ("depth", isinstance(meta.get("depth"), int) and meta.get("depth") in BLOCKS_PER_STAGE,
         f"one of {', '.join(map(str, BLOCKS_PER_STAGE))}"),
        ("width", finite_number(meta.get("width")) and meta.get("width", 0) > 0, "a number > 0"),
        ("stem", meta.get("stem") in STEMS, f"one of {', '.join(STEMS)}"),
        ("in_channels", isinstance(meta.get("in_channels"), int) and meta.get("in_channels", 0) > 0, "an integer > 0"),
        ("zero_init_residual", isinstance(meta.get("zero_init_residual"), bool), "true or false"),
        ("image_size", isinstance(meta.get("image_size"), int) and meta.get("image_size", 0) > 0, "an integer > 0"),
        ("mean", _numbers(meta.get("mean"), meta.get("in_channels")), "one number per input channel"),
        ("std", _numbers(meta.get("std"), meta.get("in_channels")), "one number per input channel"),
        ("pretrained_on", isinstance(meta.get("pretrained_on"), str), "a dataset name"),
    ]  # fmt: skip
    for key, ok, valid in checks:
        if not ok:
            shown = repr(meta[key]) if key in meta else "missing"
            raise CheckpointError(f"{meta_file}: {key!r} is {shown}; expected {valid} (rewrite it with `byol export`)")
    return meta


def _numbers(values: Any, count: Any) -> bool:
    return isinstance(values, list) and len(values) == count and all(finite_number(v) for v in values)


def load_encoder(path: str | Path) -> ResNet:
    """The exported online encoder, ready for inference (eval mode). Its metadata is ``encoder.metadata``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"encoder file {path} does not exist")
    meta = read_metadata(path)
    encoder = ResNet(**{key: meta[key] for key in ("depth", "width", "stem", "in_channels", "zero_init_residual")})
    try:
        encoder.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{path} does not hold the encoder its metadata describes ({first_line(e)})") from None
    encoder.metadata = meta  # type: ignore[assignment]
    return encoder.eval()


def embed(
    source: str | Path,
    out: str | Path,
    *,
    dataset: str = "",
    split: str = "",
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, tuple[int, ...]]:
    """Features of every image of a dataset split, from a run / checkpoint or an exported encoder, to .npy.

    Labels go to <out>.labels.npy beside the features.
    """
    source, out = Path(source), Path(out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out {out}: name a .npy file (the labels go beside it, as {labels_path(out).name})")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name a .npy file")
    if source.suffix == ".safetensors":
        encoder = load_encoder(source)
        meta: dict[str, Any] = encoder.metadata  # type: ignore[assignment]
        name, image_size, run_data_dir = dataset or meta["pretrained_on"], meta["image_size"], ""
    else:
        pretrained = load_encoder_from_run(source)
        encoder, data = pretrained.encoder, pretrained.config.data
        name, image_size, run_data_dir = dataset or data.dataset, data.image_size, data.data_dir
    if data_dir is None:
        data_dir = run_data_dir if not dataset else ""
    images = load_dataset(name, split or split_name(name, "test"), data_dir, image_size)
    features, labels = extract_features(
        encoder, images, image_size=image_size, device=resolve_device(device), desc="embedding", progress=progress
    )
    atomic_write(out, lambda f: np.save(f, features.numpy()))
    atomic_write(labels_path(out), lambda f: np.save(f, labels.numpy()))
    return out, tuple(features.shape)


def labels_path(features: Path) -> Path:
    return features.with_name(features.name.removesuffix(".npy") + ".labels.npy")
