"""Export the online encoder for downstream use, load it back, and embed datasets with it.

Three formats, none of which can carry code (no pickle anywhere):
- ``safetensors`` (the default): <out>.safetensors and a small JSON beside it with the architecture and the
  input normalisation; ``load_encoder`` rebuilds a ready ``nn.Module`` in inference mode from the pair.
- ``hub``: a folder in the Hugging Face Hub's layout (``config.json`` + ``model.safetensors`` + a model card),
  written by huggingface_hub's ``PyTorchModelHubMixin`` (``byol.hub``): ``load_encoder(folder)`` and
  ``byol.hub.HubEncoder.from_pretrained(folder)`` both read it, and ``push_to_hub`` shares it.
- ``onnx``: the encoder as an ONNX graph with a dynamic batch axis (input ``images`` (N, C, S, S), normalised as
  the metadata says; output ``features`` (N, D)); the metadata rides in the model's ``metadata_props``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from byol.config import finite_number
from byol.data import ImageFolder, load_dataset, split_name
from byol.distributed import resolve_device
from byol.errors import CheckpointError, ConfigError, first_line, quoted
from byol.evaluate.common import Pretrained, extract, load_encoder_from_run
from byol.extras import require
from byol.files import atomic_write, replace_folder
from byol.networks import BLOCKS_PER_STAGE, STEMS, ResNet
from byol.outputs import Output, check_outputs

EXPORT_FORMAT = 1
FORMATS = ("safetensors", "hub", "onnx")
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"  # the Hub's names (huggingface_hub.constants)
HUB_FILES = frozenset({HUB_CONFIG, HUB_WEIGHTS, "README.md"})
ARCHITECTURE_KEYS = ("depth", "width", "stem", "in_channels", "zero_init_residual")


def metadata_path(weights: Path) -> Path:
    """The architecture file of an export: beside a .safetensors file, or a hub folder's config.json."""
    return weights / HUB_CONFIG if weights.is_dir() else weights.with_suffix(".json")


def _is_metadata(path: Path) -> bool:
    try:
        read_metadata(path)
    except CheckpointError:
        return False
    return True


def _is_hub_folder(path: Path) -> bool:
    """An empty folder, or one that holds a hub export of byol and nothing else: what ``--format hub`` replaces."""
    names = {p.name for p in path.iterdir()}
    return not names or (names <= HUB_FILES and _is_metadata(path / HUB_CONFIG))


def _outputs(out: Path, format: str) -> list[Output]:
    suffix = {"safetensors": ".safetensors", "onnx": ".onnx", "hub": ""}[format]
    if out.suffix != suffix:
        named = f"a {suffix} file" if suffix else "a folder (not a file name with a suffix)"
        raise ConfigError(f"--out {out}: with --format {format}, name {named}")
    if format == "hub":
        return [Output(out, "--out", folder=True, ours=_is_hub_folder)]
    outputs = [Output(out, "--out")]
    if format == "safetensors":
        outputs.append(Output(metadata_path(out), "the architecture file beside --out", ours=_is_metadata))
    return outputs


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in name order: safetensors checks its header but
    not its data, so a flipped bit would load silently as another encoder without this."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _metadata(pretrained: Pretrained) -> dict[str, Any]:
    config = pretrained.config
    dataset = load_dataset(config.data.dataset, "train", config.data.data_dir, config.data.image_size)
    return {
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
        "sha256": weights_digest(pretrained.encoder.state_dict()),
    }


def export_encoder(run: str | Path, out: str | Path, format: str = "safetensors") -> list[Path]:
    """Writes a run's online encoder (its latest checkpoint, or a checkpoint file) in ``format``; returns the
    paths written. Every output is checked before the first byte is written, and each is written atomically."""
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not valid; choose one of {', '.join(FORMATS)}")
    out, run = Path(out), Path(run)
    if format == "hub" and out.is_symlink():  # a link to an earlier export ("latest"): the export it names
        out = out.resolve()
    outputs = _outputs(out, format)
    check_outputs(outputs, inputs=[run])
    if format != "safetensors":
        require("huggingface_hub" if format == "hub" else "onnxscript", f"--format {format}")
    pretrained = load_encoder_from_run(run)
    meta = _metadata(pretrained)
    weights = {k: v.contiguous() for k, v in pretrained.encoder.state_dict().items()}
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise CheckpointError(f"{pretrained.source} holds non-finite encoder weights; nothing was exported")
    if format == "hub":
        _write_hub(out, pretrained.encoder, meta)
    elif format == "onnx":
        _write_onnx(out, pretrained.encoder, meta)
    else:
        atomic_write(out, lambda f: f.write(save(weights)))
        text = json.dumps(meta, indent=2) + "\n"
        atomic_write(metadata_path(out), lambda f: f.write(text.encode()))
    return [output.path for output in outputs]


def _write_hub(out: Path, encoder: ResNet, meta: dict[str, Any]) -> None:
    """The Hub folder, written whole beside ``out`` and swapped in for it in one step (an earlier hub export is
    replaced; a kill leaves the old folder or the new one)."""
    from byol.hub import HubEncoder

    model = HubEncoder(**meta)
    model.load_state_dict(encoder.state_dict())
    replace_folder(out, lambda staging: model.save_pretrained(staging))


def _write_onnx(out: Path, encoder: ResNet, meta: dict[str, Any]) -> None:
    """ONNX through torch.onnx's exporter (torch.export), batch axis dynamic, metadata in metadata_props."""
    import logging
    import warnings

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its passes log at INFO on every export
    size, channels = meta["image_size"], meta["in_channels"]
    example = torch.zeros(2, channels, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            encoder.eval(), (example,), dynamo=True, input_names=["images"], output_names=["features"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )  # fmt: skip
    if program is None:
        raise CheckpointError("torch.onnx.export returned no program; nothing was exported")
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    atomic_write(out, lambda f: f.write(proto.SerializeToString()))


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
        ("image_size", _integer(meta.get("image_size"), 4096), "an integer in [1, 4096]"),
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


def load_encoder(path: str | Path) -> ResNet:
    """The exported online encoder (a .safetensors file, or a hub folder), ready for inference (eval mode).
    Its metadata is ``encoder.metadata``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"encoder {path} does not exist")
    meta = read_metadata(metadata_path(path))
    weights = path / HUB_WEIGHTS if path.is_dir() else path
    encoder = ResNet(**{key: meta[key] for key in ARCHITECTURE_KEYS})
    try:
        tensors = load_file(str(weights))
        encoder.load_state_dict(tensors)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{path} does not hold the encoder its metadata describes ({first_line(e)})") from None
    if "sha256" in meta and weights_digest(tensors) != meta["sha256"]:  # exports before the digest have none
        raise CheckpointError(f"{weights} does not hold the weights {metadata_path(path).name} was written with "
                              "(its data changed since the export); export it again")  # fmt: skip
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
    """Features of every readable image of a dataset split, from a run / checkpoint or an exported encoder, to
    ONE .npz file (written atomically: a kill leaves the old file or the new one, never a mix): ``features``
    (N, D) float32, ``labels`` (N,) (−1: unlabelled), ``index`` (N,) the images' indices in the split, and for
    image folders ``paths`` (N,), each row's file. An unreadable file has no row (it is named in a warning)."""
    source, out = Path(source), Path(out)
    if out.suffix != ".npz":
        raise ConfigError(
            f"--out {quoted(out)}: name a .npz file (features, labels and image paths travel in one file: "
            "numpy.load(path)['features'])"
        )
    exported = source.suffix == ".safetensors" or (source.is_dir() and (source / HUB_WEIGHTS).is_file())
    check_outputs([Output(out, "--out")], inputs=[source, metadata_path(source)] if exported else [source])
    if exported:
        encoder = load_encoder(source)
        meta: dict[str, Any] = encoder.metadata  # type: ignore[assignment]
        name, image_size, run_data_dir, labels = dataset or meta["pretrained_on"], meta["image_size"], "", "auto"
        in_channels = int(meta["in_channels"])
    else:
        pretrained = load_encoder_from_run(source)
        encoder, data = pretrained.encoder, pretrained.config.data
        name, image_size, run_data_dir, labels = dataset or data.dataset, data.image_size, data.data_dir, data.labels
        in_channels = pretrained.in_channels
    if data_dir is None:
        data_dir = run_data_dir if not dataset else ""
    images = load_dataset(name, split or split_name(name, "test"), data_dir, image_size, labels)
    if images.channels != in_channels:
        raise ConfigError(
            f"the encoder takes {in_channels}-channel images but {name} has {images.channels}; embed a dataset "
            "with the encoder's channels"
        )
    found = extract(
        encoder, images, image_size=image_size, device=resolve_device(device), desc="embedding", progress=progress
    )
    arrays = {"features": found.features.numpy(), "labels": found.labels.numpy(), "index": found.indices.numpy()}
    if isinstance(images, ImageFolder):
        arrays["paths"] = np.array([images.paths[i] for i in found.indices.tolist()], dtype=str)
    atomic_write(out, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    return out, tuple(found.features.shape)
