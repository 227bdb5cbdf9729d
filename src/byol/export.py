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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from byol.checkpoint import atomic_write
from byol.data import TEST_SPLIT, load_dataset
from byol.errors import CheckpointError
from byol.evaluate.common import extract_features, load_encoder_from_run
from byol.networks import ResNet
from byol.train import resolve_device

EXPORT_FORMAT = 1


def metadata_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def export_encoder(run: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Writes <out> (safetensors) and <out>.json (architecture) from a run's latest checkpoint."""
    pretrained = load_encoder_from_run(run)
    out = Path(out)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(weights, str(tmp))
    tmp.replace(out)
    atomic_write(metadata_path(out), lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return out, metadata_path(out)


def read_metadata(path: Path) -> dict[str, Any]:
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: its architecture file {meta_file} is missing (written by `byol export`)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({e})") from None
    if meta.get("format") != EXPORT_FORMAT or meta.get("architecture") != "resnet-v1":
        raise CheckpointError(f"{meta_file} is not a byol encoder description")
    return meta


def load_encoder(path: str | Path) -> ResNet:
    """The exported online encoder, ready for inference (eval mode). Its metadata is ``encoder.metadata``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"encoder file {path} does not exist")
    meta = read_metadata(path)
    encoder = ResNet(meta["depth"], meta["width"], meta["stem"], meta["in_channels"], meta["zero_init_residual"])
    try:
        encoder.load_state_dict(load_file(str(path)))
    except (SafetensorError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not hold the encoder its metadata describes ({first})") from None
    encoder.metadata = meta  # type: ignore[assignment]
    return encoder.eval()


def embed(
    source: str | Path,
    out: str | Path,
    dataset: str = "",
    split: str = "",
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> tuple[Path, tuple[int, ...]]:
    """Features of every image of a dataset split, from a run / checkpoint or an exported encoder, to .npy.

    Labels go to <out>.labels.npy beside the features.
    """
    source = Path(source)
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
    images = load_dataset(name, split or TEST_SPLIT.get(name, "test"), data_dir, image_size)
    features, labels = extract_features(
        encoder, images, image_size, resolve_device(device), desc="embedding", progress=progress
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, features.numpy())
    np.save(out.with_suffix(".labels.npy"), labels.numpy())
    return out, tuple(features.shape)
