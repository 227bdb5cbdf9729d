"""One entry point for the command line: load a run's online encoder, the datasets, run a protocol, save JSON.

Transfer is the same call with another dataset than the run was pretrained on (same channel count).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byol.checkpoint import CHECKPOINT_DIR
from byol.data import load_split, split_name
from byol.distributed import resolve_device
from byol.errors import ConfigError, quoted
from byol.evaluate.common import check_compatible, load_encoder_from_run, result_path
from byol.evaluate.finetune import FinetuneConfig, finetune_evaluation
from byol.evaluate.frozen import FrozenEvaluation, require_labels
from byol.evaluate.knn import KnnConfig
from byol.evaluate.linear import LinearConfig
from byol.export import is_export, pretrained_from_export
from byol.files import write_json
from byol.outputs import Output, check_outputs
from byol.precision import Precision
from byol.rundir import is_run_dir

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
    if is_export(request.run):  # an exported encoder, or any torchvision-layout ResNet state dict
        pretrained = pretrained_from_export(request.run, request.init)
    else:
        pretrained = load_encoder_from_run(request.run, request.init)
    run_data = pretrained.config.data
    eval_name, eval_dir = run_data.evaluation()
    name = request.dataset or eval_name
    if not name:
        raise ConfigError(f"{quoted(request.run)} does not say what it was trained on; name the data with --dataset")
    out = request.out or _result_path(request, name)
    if request.out:  # the default is the run's own eval/ folder, where results belong
        if out.suffix != ".json":
            raise ConfigError(f"--out {out}: name a .json file for the result")
        check_outputs([Output(out, "--out")], inputs=[request.run])
    data_dir = request.data_dir if request.data_dir is not None else (eval_dir if name == eval_name else "")
    labels = run_data.labels if (name, data_dir) == (run_data.dataset, run_data.data_dir) else "auto"
    image_size = request.image_size or run_data.image_size
    device = resolve_device(request.device)
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


def _result_path(request: EvaluationRequest, name: str) -> Path:
    """Where a result goes by default: ``eval/`` of the run evaluated, a run directory or a checkpoint in its
    ``checkpoints/``; a checkpoint anywhere else has no run, and the user names the file (``--out``)."""
    run = request.run if request.run.is_dir() else request.run.parent.parent
    if not (request.run.is_dir() or request.run.parent.name == CHECKPOINT_DIR) or not is_run_dir(run):
        raise ConfigError(
            f"{request.run} is not in a run directory of byol, so its result has no run to go to; "
            "name the result file with --out FILE.json"
        )
    protocol_tag = {
        "linear": f"linear-{request.linear.mode}" + ("-standardized" if request.linear.standardize else ""),
        "finetune": f"finetune-{request.finetune.label_fraction:g}",
    }
    tag = f"{protocol_tag.get(request.protocol, request.protocol)}_{name}_{request.init}"
    return result_path(run, tag)
