"""One entry point for the command line: load a run's online encoder, the datasets, run a protocol, save JSON
(the classification protocols and segmentation transfer).

Transfer is the same call with another dataset than the run was pretrained on (same channel count).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byol.checkpoint import CHECKPOINT_DIR
from byol.data import load_split, split_name, use_cache
from byol.data.folder import SPLITS
from byol.data.masks import complete_classes, read_classes, read_split
from byol.distributed import resolve_device
from byol.errors import ConfigError, quoted
from byol.evaluate.common import check_compatible, result_path
from byol.evaluate.finetune import FinetuneConfig, finetune_evaluation
from byol.evaluate.frozen import FrozenEvaluation, require_labels
from byol.evaluate.knn import KnnConfig
from byol.evaluate.linear import LinearConfig
from byol.evaluate.segment import (
    Normalise,
    SegmentationData,
    SegmentConfig,
    head_width,
    predict,
    segmentation_transfer,
)
from byol.export import encoder_files, load_pretrained
from byol.files import write_json
from byol.outputs import Output, check_outputs
from byol.precision import Precision
from byol.rundir import is_run_dir
from byol.visualize import segmentation_picture

log = logging.getLogger(__name__)

PROTOCOLS = ("knn", "linear", "finetune")


@dataclass(frozen=True)
class EvaluationRequest:
    protocol: str
    run: Path
    dataset: str = ""  # "" → the dataset the run was pretrained on
    data_dir: str | None = None
    image_size: int = 0  # 0 → the run's view size
    init: str = "pretrained"
    device: str = "auto"
    out: Path | None = None  # None → <run>/eval/<protocol>_<dataset>_<init>.json
    knn: KnnConfig = field(default_factory=KnnConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def run_evaluation(request: EvaluationRequest, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """Runs the protocol and writes <run>/eval/<protocol>_<dataset>_<init>.json; returns the result and path."""
    if request.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {request.protocol!r}")
    pretrained = load_pretrained(request.run, request.init)
    run_data = pretrained.config.data
    eval_name, eval_dir = run_data.evaluation()
    name = request.dataset or eval_name
    if not name:
        raise ConfigError(f"{quoted(request.run)} does not say what it was trained on; name the data with --dataset")
    out = request.out or _result_path(request, name)
    if request.out:  # the default is the run's own eval/ folder, where results belong
        if out.suffix != ".json":
            raise ConfigError(f"--out {out}: name a .json file for the result")
        check_outputs([Output(out, "--out")], inputs=encoder_files(request.run))
    data_dir = request.data_dir if request.data_dir is not None else (eval_dir if name == eval_name else "")
    labels = run_data.labels if (name, data_dir) == (run_data.dataset, run_data.data_dir) else "auto"
    image_size = request.image_size or run_data.image_size
    device = resolve_device(request.device)
    use_cache(run_data.cache_dir, run_data.cache_bytes)
    train = load_split(name, "train", data_dir, image_size, labels)
    require_labels(train)
    frozen = FrozenEvaluation(
        train=train, test=load_split(name, "test", data_dir, image_size, labels),
        image_size=image_size, device=device, precision=Precision.for_run(pretrained.config.train, device),
    )  # fmt: skip
    train, test = frozen.train, frozen.test
    check_compatible(pretrained, train)
    splits = {
        "train_split": getattr(train, "split_note", "") or "train",
        "test_split": getattr(test, "split_note", "") or split_name(name, "test"),
    }
    if "held out" in splits["test_split"]:
        log.warning("%s has no evaluation split of its own; evaluating on %s", name, splits["test_split"])
    encoder = pretrained.encoder

    if request.protocol == "knn":
        result = frozen.knn(encoder, request.knn, progress)
    elif request.protocol == "linear":
        settings = request.linear
        if settings.mode == "appendix-c" and not settings.augment_preset:  # the views the run pretrained on
            settings = dataclasses.replace(settings, augment_preset=pretrained.config.augment.preset)
        result = frozen.linear(encoder, settings, progress)
    else:
        result = finetune_evaluation(
            encoder, train=train, test=test, image_size=image_size, device=device, config=request.finetune,
            progress=progress,
        )  # fmt: skip
    result.update(
        dataset=name,
        init=request.init,
        checkpoint=pretrained.source,
        encoder="online",
        pretrained_on=run_data.dataset,
        **splits,
    )
    write_json(out, result)
    return result, out


def default_result_path(run: Path, tag: str) -> Path:
    """Where a result goes by default: ``eval/<tag>.json`` of the run evaluated, a run directory or a checkpoint
    in its ``checkpoints/``; a checkpoint anywhere else has no run, and the user names the file (``--out``)."""
    run_dir = run if run.is_dir() else run.parent.parent
    if not (run.is_dir() or run.parent.name == CHECKPOINT_DIR) or not is_run_dir(run_dir):
        raise ConfigError(
            f"{run} is not in a run directory of byol, so its result has no run to go to; "
            "name the result file with --out FILE.json"
        )
    return result_path(run_dir, tag)


def _result_path(request: EvaluationRequest, name: str) -> Path:
    protocol_tag = {
        "linear": f"linear-{request.linear.mode}" + ("-standardized" if request.linear.standardize else ""),
        "finetune": f"finetune-{request.finetune.label_fraction:g}",
    }
    tag = f"{protocol_tag.get(request.protocol, request.protocol)}_{name}_{request.init}"
    return default_result_path(request.run, tag)


@dataclass(frozen=True)
class SegmentationRequest:
    run: Path
    data_dir: Path
    dataset: str = "folder"  # folder (any DIR/{train,val,test}/{images,masks}) or camvid (its class names known)
    void_id: int | None = None  # None: classes.json's, CamVid's 11, else 255
    init: str = "pretrained"
    device: str = "auto"
    out: Path | None = None  # None → <run>/eval/segment_<dataset>[_random][_frozen][_masksF].json
    pictures: int = 4  # test images drawn beside their masks and predictions
    segment: SegmentConfig = field(default_factory=SegmentConfig)


def run_segmentation(request: SegmentationRequest, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """``byol segment``: reads and checks the folder, sweeps, trains and scores (:mod:`byol.evaluate.segment`),
    writes the result JSON and a picture of test predictions beside it (same name, .png)."""
    settings = request.segment
    classes = read_classes(request.data_dir, request.dataset, request.void_id)  # refused before any work
    name = "camvid" if request.dataset == "camvid" else (request.data_dir.resolve().name or "folder")
    tag = f"segment_{name}" + "_random" * (request.init == "random") + "_frozen" * settings.frozen
    tag += f"_masks{settings.mask_fraction:g}" * (settings.mask_fraction < 1)
    out = request.out or default_result_path(request.run, tag)
    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: name a .json file for the result")
    picture = out.with_suffix(".png")
    if request.out:  # the default is the run's own eval/ folder, where results belong
        check_outputs(
            [Output(out, "--out"), Output(picture, "the picture beside --out", ours=_is_segmentation_picture)],
            inputs=[*encoder_files(request.run), request.data_dir],
        )
    pretrained = load_pretrained(request.run, request.init)
    if pretrained.in_channels != 3:
        raise ConfigError(f"the encoder takes {pretrained.in_channels}-channel images; segmentation reads RGB images")
    device = resolve_device(request.device)
    splits = {
        split: read_split(request.data_dir, split, classes, settings.image_scale, progress)
        for split in SPLITS
        if split != "val" or (request.data_dir / "val" / "images").is_dir()
    }
    classes = complete_classes(classes, list(splits.values()))
    data = SegmentationData(splits["train"], splits.get("val"), splits["test"], classes)
    result, networks = segmentation_transfer(pretrained.encoder, data, config=settings, device=device,
                                             progress=progress)  # fmt: skip
    encoder, stem = pretrained.encoder, pretrained.config.model.stem
    result.update(
        dataset=name, data_dir=str(request.data_dir), init=request.init, checkpoint=pretrained.source,
        encoder="online", pretrained_on=pretrained.config.data.dataset,
        network=f"ResNet-{encoder.depth} width {encoder.width:g} ({stem} stem), last stage dilated 2, FCN head "
        f"{head_width(encoder, settings.head_channels)} channels",
    )  # fmt: skip
    write_json(out, result)
    label, model = networks[0]
    normalise = Normalise.of(result["normalisation"])
    shown = zip(data.test.images[: request.pictures], data.test.full_masks, strict=False)
    rows = [
        (image, truth, predict(model, image, (truth.shape[0], truth.shape[1]), normalise)) for image, truth in shown
    ]
    title = f"{name} test images, {request.init} encoder, {label}: mIoU {result['seeds'][0]['miou']:.1f}"
    segmentation_picture(picture, rows, classes.names, classes.void, title)
    return result, out


def _is_segmentation_picture(path: Path) -> bool:
    """Whether the PNG at ``path`` is one ``byol segment`` drew: its result JSON is beside it."""
    try:
        return json.loads(path.with_suffix(".json").read_text()).get("protocol", "").startswith("segmentation")
    except (OSError, ValueError, AttributeError):
        return False
