"""Export the online encoder for downstream use, load it back, and embed datasets with it.

Four formats, none of which can carry code (the .pth holds tensors only, read back with ``weights_only``):
- ``safetensors`` (the default): <out>.safetensors and a small JSON beside it with the architecture and the
  input normalisation; ``load_encoder`` rebuilds a ready ``nn.Module`` in inference mode from the pair.
- ``hub``: a folder in the Hugging Face Hub's layout (``config.json`` + ``model.safetensors`` + a model card),
  written by huggingface_hub's ``PyTorchModelHubMixin`` (``byol.hub``): ``load_encoder(folder)`` and
  ``byol.hub.HubEncoder.from_pretrained(folder)`` both read it, and ``push_to_hub`` shares it.
- ``torchvision``: <out>.pth, a plain state dict in torchvision's ResNet key layout (``byol.interop``) that
  ``torchvision.models.resnet50()`` loads with ``strict=False`` missing only the classifier (timm's ResNet uses
  the same names), the same tensors as <out>.safetensors, and the JSON beside them; ``load_encoder`` reads these
  and any torchvision-layout ResNet state dict.
- ``onnx``: the encoder as an ONNX graph with a dynamic batch axis (input ``images`` (N, C, S, S), normalised as
  the metadata says; output ``features`` (N, D)); the metadata rides in the model's ``metadata_props``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from byol.choices import EXPORT_FORMATS
from byol.config import Config, DataConfig, ModelConfig
from byol.data import Files, load_dataset, split_name, use_cache
from byol.data.folder import IMAGENET_MEAN, IMAGENET_STD
from byol.distributed import resolve_device
from byol.errors import CheckpointError, ConfigError, first_line, quoted
from byol.evaluate.common import Pretrained, check_init, extract, load_encoder_from_run, random_encoder
from byol.extras import require
from byol.files import atomic_write, replace_folder
from byol.interop import architecture, from_torchvision, is_torchvision_layout, to_torchvision
from byol.loggers import add_artifacts
from byol.metadata import ARCHITECTURE_KEYS, EXPORT_FORMAT, read_metadata, weights_digest
from byol.networks import ResNet
from byol.outputs import Output, check_outputs

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS
HUB_CONFIG, HUB_WEIGHTS = "config.json", "model.safetensors"  # the Hub's names (huggingface_hub.constants)
HUB_FILES = frozenset({HUB_CONFIG, HUB_WEIGHTS, "README.md"})
HEAD_BATCH = 4096  # features through the projector at once (`byol embed`)


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
    suffix = {"safetensors": ".safetensors", "onnx": ".onnx", "hub": "", "torchvision": ".pth"}[format]
    if out.suffix != suffix:
        named = f"a {suffix} file" if suffix else "a folder (not a file name with a suffix)"
        raise ConfigError(f"--out {out}: with --format {format}, name {named}")
    if format == "hub":
        return [Output(out, "--out", folder=True, ours=_is_hub_folder)]
    outputs = [Output(out, "--out")]
    if format == "torchvision":  # the same tensors as safetensors, readable without unpickling
        beside = out.with_suffix(".safetensors")
        outputs.append(
            Output(beside, "the safetensors file beside --out", ours=lambda p: _is_metadata(metadata_path(p)))
        )
    if format in ("safetensors", "torchvision"):
        outputs.append(Output(metadata_path(out), "the architecture file beside --out", ours=_is_metadata))
    return outputs


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
    if format in ("hub", "onnx"):
        require("huggingface_hub" if format == "hub" else "onnxscript", f"--format {format}")
    write_export(load_encoder_from_run(run), out, format)
    written = [output.path for output in outputs]
    if run.is_dir():
        add_artifacts(run, written)  # to the run's experiment trackers, where it logged to any
    return written


def write_export(pretrained: Pretrained, out: Path, format: str = "safetensors") -> None:
    """Writes ``pretrained``'s encoder to ``out`` in ``format`` (outputs already checked by the caller): what
    :func:`export_encoder` does with a run's, and what a benchmark does with an encoder it trained itself."""
    meta = _metadata(pretrained)
    weights = {k: v.contiguous() for k, v in pretrained.encoder.state_dict().items()}
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise CheckpointError(f"{pretrained.source} holds non-finite encoder weights; nothing was exported")
    if format == "hub":
        _write_hub(out, pretrained.encoder, meta)
    elif format == "onnx":
        _write_onnx(out, pretrained.encoder, meta)
    else:
        if format == "torchvision":
            if meta["stem"] == "cifar":
                log.info("the cifar stem has no torchvision twin: conv1 is 3x3, stride 1, and there is no max-pool "
                         "(replace model.conv1 and set model.maxpool = nn.Identity() before loading)")  # fmt: skip
            weights = to_torchvision(weights)
            atomic_write(out, lambda f: torch.save(weights, f))
            out = out.with_suffix(".safetensors")
        atomic_write(out, lambda f: f.write(save(weights)))
        text = json.dumps({**meta, "layout": "torchvision" if format == "torchvision" else "byol"}, indent=2) + "\n"
        atomic_write(metadata_path(out), lambda f: f.write(text.encode()))  # last: it names the weights' digest


def _write_hub(out: Path, encoder: ResNet, meta: dict[str, Any]) -> None:
    """The Hub folder, written whole beside ``out`` and swapped in for it in one step (an earlier hub export is
    replaced; a kill leaves the old folder or the new one)."""
    from byol.hub import HubEncoder

    model = HubEncoder(**meta)
    model.load_state_dict(encoder.state_dict())
    replace_folder(out, lambda staging: model.save_pretrained(staging))


def _write_onnx(out: Path, encoder: ResNet, meta: dict[str, Any]) -> None:
    """ONNX through torch.onnx's exporter (torch.export), batch axis dynamic, metadata in metadata_props."""
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


def load_encoder(path: str | Path) -> ResNet:
    """An encoder ready for inference (eval mode): a byol export (a .safetensors file, a hub folder, or a
    torchvision-layout .pth / .safetensors with its .json), or any ResNet state dict in torchvision's layout
    (a .pth read without unpickling code, or a .safetensors; its architecture is read off its tensors, its
    classifier left out, ImageNet normalisation assumed). Its metadata is ``encoder.metadata``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"encoder {quoted(path)} does not exist")
    weights = path / HUB_WEIGHTS if path.is_dir() else path
    try:
        tensors = _read_weights(weights)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(f"{quoted(weights)} cannot be read as encoder weights ({first_line(e)})") from None
    foreign = is_torchvision_layout(tensors)
    if metadata_path(path).exists() or not foreign:
        meta = read_metadata(metadata_path(path))
    else:  # weights from elsewhere: what they are is read off their tensors
        meta = {**architecture(tensors), "image_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "pretrained_on": "", "network": f"torchvision-layout ResNet from {path.name}"}  # fmt: skip
    if foreign:
        tensors = from_torchvision(tensors)
    encoder = ResNet(**{key: meta[key] for key in ARCHITECTURE_KEYS})
    try:
        encoder.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not hold the encoder its metadata describes ({first_line(e)})") from None
    if "sha256" in meta and weights_digest(tensors) != meta["sha256"]:  # exports before the digest have none
        raise CheckpointError(f"{weights} does not hold the weights {metadata_path(path).name} was written with "
                              "(its data changed since the export); export it again")  # fmt: skip
    encoder.metadata = meta  # type: ignore[assignment]
    return encoder.eval()


def is_export(path: Path) -> bool:
    """Whether ``path`` names an exported encoder (or a torchvision-layout state dict) rather than a run or a
    checkpoint of one."""
    return path.suffix in (".safetensors", ".pth") or (path.is_dir() and (path / HUB_WEIGHTS).is_file())


def load_pretrained(run: Path, init: str = "pretrained") -> Pretrained:
    """The encoder a command reads: a run directory or checkpoint (its online encoder), or an exported encoder
    (any torchvision-layout ResNet state dict too); ``init="random"``: the same architecture, fresh."""
    return pretrained_from_export(run, init) if is_export(run) else load_encoder_from_run(run, init)


def encoder_files(path: Path) -> list[Path]:
    """What reading the encoder at ``path`` reads, which no output may land on: the path, and for an export the
    architecture file beside it."""
    return [path, metadata_path(path)] if is_export(path) else [path]


def pretrained_from_export(path: Path, init: str = "pretrained") -> Pretrained:
    """An exported encoder as the evaluations take a run's: with a config made of what its metadata says
    (architecture, image size, the dataset it was pretrained on, if it says); ``init="random"``: the same
    architecture freshly initialised."""
    check_init(init)
    encoder = load_encoder(path)
    meta: dict[str, Any] = encoder.metadata  # type: ignore[assignment]
    model = ModelConfig(depth=meta["depth"], width=meta["width"], stem=meta["stem"],
                        zero_init_residual=bool(meta.get("zero_init_residual", False)))  # fmt: skip
    config = Config(
        model=model, data=DataConfig(dataset=meta.get("pretrained_on") or "", image_size=meta["image_size"])
    )
    if init == "random":
        encoder = random_encoder(config, int(meta["in_channels"]))
    return Pretrained(encoder=encoder, config=config, in_channels=int(meta["in_channels"]), source=str(path))


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, or of a .pth state dict read with ``weights_only`` (a checkpoint that
    holds it under ``state_dict`` or ``model``, or a DDP one whose keys start with ``module.``, too)."""
    if path.suffix != ".pth":
        return load_file(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a pickled or foreign file
            raise CheckpointError(
                f"{quoted(path)} is not a state dict of tensors that a safe load reads ({first_line(e)})"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{quoted(path)} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def content_digest(images: Any, index: int) -> str:
    """SHA-256 of an image's content as stored: its file's bytes (a folder, a prepared shard's member), or its
    pixels (an array dataset). Equal digests are exact duplicates (`byol duplicates`)."""
    if isinstance(images, Files):
        source = images.read(index)
        data = source.getvalue() if hasattr(source, "getvalue") else Path(source).read_bytes()
    else:
        data = images.images[index].numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def embed(
    source: str | Path,
    out: str | Path,
    *,
    dataset: str = "",
    split: str = "",
    data_dir: str | None = None,
    device: str = "auto",
    progress: bool = True,
    copy_crops: bool = False,
) -> tuple[Path, tuple[int, ...]]:
    """Features of every readable image of a dataset split, from a run / checkpoint or an exported encoder, to
    ONE .npz file (written atomically: a kill leaves the old file or the new one, never a mix): ``features``
    (N, D) float32, ``labels`` (N,) (−1: unlabelled), ``index`` (N,) the images' indices in the split, and for
    image folders ``paths`` (N,), each row's file. An unreadable file has no row (it is named in a warning).
    From a run or checkpoint also ``head`` (N, P): the online projector's output z = g(y) of each row, the space
    `byol select` chooses in (TypiClust clusters a self-supervised head's output; docs/curation.md).
    ``copy_crops``: ``copy_crops`` (N, K, D) float32 too, the features of K crops of each image
    (:func:`byol.data.decode.copy_boxes`), which `byol duplicates` matches against whole images, and
    ``copy_normalised`` (N, 1+K, D), the whole image and the same crops colour-normalised, and ``copy_pixels``
    (N, 1+K, P), those normalised views' pixel descriptors (docs/curation.md);
    for copy detection every pixel counts, so ``features`` are then of image files' whole images, not of the
    evaluation's centre crop (``source`` records ``view``: "centre", or "whole" as in-memory sets always are, and
    a query file is embedded alike, normalised with the set's mean and std, which ``source`` records too)."""
    source, out = Path(source), Path(out)
    if out.suffix != ".npz":
        raise ConfigError(
            f"--out {quoted(out)}: name a .npz file (features, labels and image paths travel in one file: "
            "numpy.load(path)['features'])"
        )
    check_outputs([Output(out, "--out")], inputs=encoder_files(source))
    pretrained = load_pretrained(source)
    data = pretrained.config.data
    name = dataset or data.dataset
    if not name:
        raise ConfigError(f"{quoted(source)} does not say what it was trained on; name the data with --dataset")
    if data_dir is None:
        data_dir = data.data_dir if not dataset else ""
    images_split = split or split_name(name, "test")
    use_cache(data.cache_dir, data.cache_bytes)
    images = load_dataset(name, images_split, data_dir, data.image_size, data.labels)
    if images.channels != pretrained.in_channels:
        raise ConfigError(
            f"the encoder takes {pretrained.in_channels}-channel images but {name} has {images.channels}; embed a "
            "dataset with the encoder's channels"
        )
    found = extract(
        pretrained.encoder,
        images,
        image_size=data.image_size,
        device=resolve_device(device),
        desc="embedding",
        progress=progress,
        whole=copy_crops,
    )
    arrays = {"features": found.features.numpy(), "labels": found.labels.numpy(), "index": found.indices.numpy()}
    projector = pretrained.projector()
    if projector is not None:  # `byol select` clusters in this space, as TypiClust clusters SimCLR's head output
        with torch.no_grad():
            arrays["head"] = torch.cat([projector(rows) for rows in found.features.split(HEAD_BATCH)]).numpy()
    if isinstance(images, Files):  # the file of each row (prepared shards: shard and member)
        arrays["paths"] = np.array([images.describe(i) for i in found.indices.tolist()], dtype=str)
    arrays["digests"] = np.array([content_digest(images, i) for i in found.indices.tolist()], dtype=str)
    source_record = {"encoder": str(source.resolve()), "dataset": name, "split": images_split, "data_dir": data_dir,
                     "image_size": data.image_size, "labels": data.labels,
                     "view": "centre" if isinstance(images, Files) and not copy_crops else "whole",
                     "mean": list(images.mean), "std": list(images.std)}  # fmt: skip
    arrays["source"] = np.array(json.dumps(source_record))  # what `byol search` embeds a new query with
    if copy_crops:
        arrays["copy_crops"], arrays["copy_normalised"], arrays["copy_pixels"] = copy_features(
            pretrained.encoder, images, found.indices, data.image_size, resolve_device(device), progress
        )
    atomic_write(out, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]
    return out, tuple(found.features.shape)


CROP_BATCH = 16  # images whose copy views go through the encoder at once (16 x 99 views)


class _CopyViews(torch.utils.data.Dataset):
    """The copy views of image files, (2K+1, C, size, size) uint8 per image: its K copy crops, then the whole image
    and its K crops again colour-normalised, cut from the decoded pixels of the whole image (a crop of a crop would
    be blurred: cut at the input size, they found far fewer)."""

    def __init__(self, files: Any, indices: list[int], size: int) -> None:
        self.files, self.indices, self.size = files, indices, size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        from byol.data.decode import colour_normalised, copy_boxes, decode_boxes, resize, whole_box

        pixels, boxes = decode_boxes(self.files.read(self.indices[i]), self.size,
                                     lambda w, h: [whole_box(w, h), *copy_boxes(whole_box(w, h))])  # fmt: skip
        normal = colour_normalised(pixels.permute(2, 0, 1)).permute(1, 2, 0)  # one decode for both
        return torch.stack([resize(pixels, box, self.size) for box in boxes[1:]]
                           + [resize(normal, box, self.size) for box in boxes])  # fmt: skip


def _cut(pixels: torch.Tensor, boxes: list[tuple[int, ...]], size: int) -> torch.Tensor:
    """(N, len(boxes), C, size, size) uint8: each box of in-memory ``pixels`` (N, C, H, W) resized with
    antialiasing."""
    return torch.stack([
        torch.nn.functional.interpolate(
            pixels[:, :, top:bottom, left:right].float(), size=(size, size), mode="bilinear", antialias=True,
            align_corners=False,
        ).round().clamp(0, 255).to(torch.uint8)
        for left, top, right, bottom in boxes
    ], 1)  # fmt: skip


def copy_features(
    encoder: torch.nn.Module, images: Any, indices: torch.Tensor, image_size: int, device: torch.device, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features of each image's copy views, for the rows ``indices`` of ``images``, unaugmented, the encoder in
    inference mode: (N, K, D) float32 of its copy crops (:func:`byol.data.decode.copy_boxes`), (N, 1+K, D) of the
    whole image and the same crops colour-normalised (:func:`byol.data.decode.colour_normalised`), and (N, 1+K, P)
    the pixel descriptors of those colour-normalised views (:func:`byol.data.decode.pixel_descriptors`)."""
    from tqdm import tqdm

    from byol.augment.pipeline import evaluation_view
    from byol.data.decode import COPY_GRID, colour_normalised, copy_boxes, pixel_descriptors

    rows = indices.tolist()
    if isinstance(images, Files):
        batches: Any = torch.utils.data.DataLoader(_CopyViews(images, rows, image_size), batch_size=CROP_BATCH)
    else:  # in memory: whole pixels of each crop
        pixels = images.images[indices]
        _, _, height, width = pixels.shape
        whole = (0, 0, width, height)
        boxes = [tuple(round(v) for v in box) for box in copy_boxes(whole)]
        batches = (
            torch.cat([_cut(chunk, boxes, image_size), _cut(colour_normalised(chunk), [whole, *boxes], image_size)], 1)
            for chunk in pixels.split(CROP_BATCH)
        )
    encoder = encoder.eval().to(device)
    crops, normal, pixels = [], [], []
    k = COPY_GRID**2  # the copy crops come first, then the normalised views
    with torch.no_grad():
        for views in tqdm(batches, total=-(-len(rows) // CROP_BATCH), desc="copy views", disable=not progress):
            n, v = views.shape[:2]
            x = evaluation_view(views.flatten(0, 1).to(device), image_size, images.mean, images.std)
            found = encoder(x).float().cpu().view(n, v, -1)
            crops.append(found[:, :k])
            normal.append(found[:, k:])
            pixels.append(pixel_descriptors(views[:, k:]))
    return torch.cat(crops).numpy(), torch.cat(normal).numpy(), torch.cat(pixels).numpy()
