"""`byol knn`, `linear`, `finetune`, `segment`, `export`, `embed` and `report`: the commands that read a finished
run.

Every default comes from the protocol's own config dataclass (KnnConfig, LinearConfig, FinetuneConfig).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byol.choices import EXPORT_FORMATS as FORMATS
from byol.choices import MASK_DATASETS as DATASETS
from byol.commands.common import (
    channels,
    count,
    crop_size,
    data_folder,
    directory,
    floats,
    fraction,
    image_size,
    nonnegative,
    positive,
    positive_int,
    positive_ints,
    quiet_flag,
    seed,
    seed_count,
    unit_fraction,
)
from byol.evaluate.settings import MODES, FinetuneConfig, KnnConfig, LinearConfig, SegmentConfig


def _add_protocol(sub: Any, name: str, **kwargs: str) -> argparse.ArgumentParser:
    """A protocol's parser with the flags they share: the run, the dataset (transfer), the baseline, the device."""
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    p.add_argument(
        "run",
        type=Path,
        help="run directory (its latest checkpoint), a checkpoint file, or an exported encoder "
        "(.safetensors, .pth, hub folder; any torchvision-layout ResNet)",
    )
    p.add_argument("--dataset", help="evaluate on this dataset (default: the pretraining one; else transfer)")
    p.add_argument("--data-dir", dest="data_dir", type=data_folder, help="directory of that dataset's files")
    p.add_argument("--image-size", type=image_size, default=0, help="input size (default: the run's view size)")
    _add_init(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="seed of the splits and the classifier")
    p.add_argument(
        "--out", type=Path, default=None,
        help="result JSON file (default: <run>/eval/<protocol>_<dataset>_<init>.json; needed for a checkpoint "
        "outside a run directory)",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=evaluate)
    return p


def _add_init(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--init", choices=("pretrained", "random"), default="pretrained",
        help="random: the same protocol on a freshly initialised encoder of the same architecture (baseline)",
    )  # fmt: skip


def add_knn(sub: Any) -> None:
    d = KnnConfig()
    p = _add_protocol(sub, "knn", help="kNN accuracy of a run's online encoder (cosine, weighted vote)")
    p.add_argument("--k", type=positive_int, default=d.k, help=f"neighbours (default {d.k})")
    p.add_argument(
        "--temperature", type=positive, default=d.temperature, help=f"vote temperature (default {d.temperature})"
    )


def add_linear(sub: Any) -> None:
    d = LinearConfig()
    p = _add_protocol(
        sub,
        "linear",
        help="linear evaluation of a run's frozen online encoder",
        description="Linear evaluation (paper §4.1): frozen online encoder with BN in inference mode, a linear "
        "layer trained with SGD Nesterov and a cosine schedule; the learning rate is swept on a validation "
        "split held out from the training set, then the test accuracy of the chosen one is reported.",
    )
    p.add_argument(
        "--mode", choices=MODES, default=d.mode,
        help="augmented: random crop + flip each epoch (the paper); cached: features once (fast); appendix-c: the "
        "paper's variant (appendix C.1): the pretraining views, clipped logits and a logit penalty",
    )  # fmt: skip
    p.add_argument("--clip-alpha", type=positive, default=d.clip_alpha,
                   help=f"appendix-c: logits clipped to alpha*tanh(x/alpha) (default {d.clip_alpha:g})")  # fmt: skip
    p.add_argument("--logit-penalty", type=nonnegative, default=d.logit_penalty,
                   help=f"appendix-c: beta*mean(clipped logits^2) added (default {d.logit_penalty:g})")  # fmt: skip
    p.set_defaults(augment_preset="")  # appendix-c: the run's own pretraining views
    p.add_argument(
        "--lrs", dest="base_lrs", type=floats, default=d.base_lrs,
        help="base learning rates to sweep, scaled by batch/256 (default: the paper's)",
    )  # fmt: skip
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--val-size", type=count, default=d.val_size, help="held-out validation images (0: min(10k, 10%%))")
    p.add_argument(
        "--standardize", action="store_true",
        help="cached mode: z-score features with training-set statistics (not the paper's protocol)",
    )  # fmt: skip


def add_finetune(sub: Any) -> None:
    d = FinetuneConfig()
    p = _add_protocol(
        sub,
        "finetune",
        help="semi-supervised fine-tuning on a class-balanced fraction of the labels",
        description="Fine-tune the whole online encoder and a linear head on a seeded, class-balanced subset "
        "of the labels (paper §4.2); lr and epochs are chosen on a held-out validation split.",
    )
    p.add_argument(
        "--label-fraction",
        type=fraction,
        default=d.label_fraction,
        help="fraction in (0, 1] of the training images outside the validation split that keep their label "
        "(0.01, 0.1; 1: all of them)",
    )
    p.add_argument("--lrs", type=floats, default=d.lrs, help="learning rates to sweep")
    p.add_argument("--epochs", type=positive_ints, default=d.epochs, help="epoch counts to sweep (comma-separated)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--weight-decay", type=nonnegative, default=d.weight_decay)
    p.add_argument("--val-size", type=count, default=d.val_size, help="held-out validation images (0: min(10k, 10%%))")


def evaluate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.evaluate.runner import EvaluationRequest, run_evaluation

    protocol = {"knn": KnnConfig, "linear": LinearConfig, "finetune": FinetuneConfig}[args.command]
    settings = protocol(**{f.name: getattr(args, f.name) for f in dataclasses.fields(protocol)})
    request = EvaluationRequest(
        protocol=args.command, run=args.run, dataset=args.dataset or "", data_dir=args.data_dir,
        image_size=args.image_size, init=args.init, device=args.device, out=args.out, **{args.command: settings},
    )  # fmt: skip
    result, path = run_evaluation(request, progress=not args.quiet)
    print(
        f"{result['protocol']} on {result['dataset']}, {result['test_split']} ({result['init']} encoder): "
        f"top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, mean per-class {result['mean_per_class']:.2f}%"
    )
    print(f"written to {path}")
    return 0


def add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a run's online encoder as safetensors + JSON, a Hugging Face Hub folder, or ONNX",
        description="Exports the ONLINE encoder of a run's latest checkpoint (never the target) for downstream "
        "use. safetensors: <out>.safetensors + <out>.json (load with byol.load_encoder(path)); hub: a folder with "
        "config.json + model.safetensors + README.md (byol.load_encoder(folder), byol.hub.HubEncoder."
        "from_pretrained(folder), push_to_hub; needs byol[hub]); onnx: an ONNX graph with a dynamic batch axis "
        "(needs byol[onnx]); torchvision: <out>.pth in torchvision's ResNet keys (conv1, layer1.0.conv1, ...) "
        "for detectron2, mmdetection, timm, with the same tensors as <out>.safetensors beside it.",
    )
    p.add_argument("run", type=Path, help="run directory or checkpoint file")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output: a .safetensors file, a folder (hub), a .onnx file, a .pth file (torchvision)",
    )
    p.add_argument("--format", choices=FORMATS, default=FORMATS[0], help=f"(default: {FORMATS[0]})")
    p.set_defaults(handler=export)


def export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.export import export_encoder

    written = export_encoder(args.run, args.out, args.format)
    print(f"online encoder written to {', '.join(map(str, written))}")
    return 0


def add_embed(sub: Any) -> None:
    p = sub.add_parser(
        "embed",
        help="write encoder features of a dataset split to one .npz file",
        description="Writes features, labels (-1: unlabelled), indices and, for image folders, the file of each "
        "row to one .npz file: numpy.load(path)['features'], ['labels'], ['index'], ['paths']; from a run or "
        "checkpoint also ['head'], the online projector's output, where `byol select` chooses.",
    )
    p.add_argument("source", type=Path, help="run directory, checkpoint, or exported .safetensors encoder")
    p.add_argument("--out", type=Path, required=True, help="output .npz file")
    p.add_argument("--dataset", help="dataset (default: the one the encoder was pretrained on)")
    p.add_argument("--split", help="split (default: test; an unlabelled image folder: every image)")
    p.add_argument("--data-dir", dest="data_dir", type=data_folder, help="directory of the dataset's files")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--copy-crops", action="store_true",
        help="for copy detection: features of whole images (not the evaluation's centre crop), of 49 crops of 90%% "
        "of each, which `byol duplicates` matches against whole images to find cropped copies, and of the same "
        "views colour-normalised, to find recoloured ones, with their 8x8 pixel descriptors, to find blurred ones "
        "(about 100x the time, and 100x the features' bytes)",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=embed)


def embed(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.export import embed

    path, shape = embed(
        args.source, args.out, dataset=args.dataset or "", split=args.split or "", data_dir=args.data_dir,
        device=args.device, progress=not args.quiet, copy_crops=args.copy_crops,
    )  # fmt: skip
    print(f"features {shape} written to {path} (with their labels and images)")
    return 0


def add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="Markdown report with plots and every evaluation of a run")
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument(
        "--no-embedding", dest="embedding", action="store_false",
        help="no t-SNE map of the test set (it takes seconds and needs scikit-learn: pip install 'byol[viz]')",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=report)


def report(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.report import write_report

    print(f"report written to {write_report(args.run, embedding=args.embedding, progress=not args.quiet)}")
    return 0


def add_segment(sub: Any) -> None:
    d = SegmentConfig()
    p = sub.add_parser(
        "segment",
        help="segmentation transfer (paper appendix D.4): an FCN on the encoder, trained on masks, mean IoU",
        description="Builds the paper's segmentation network on the encoder (last stage dilated 2 at stride 1, "
        "two 3x3 convolutions with dilation 6, BN and ReLU, a 1x1 convolution per class), trains it on a folder of "
        "images and masks (DIR/{train,val,test}/images/* with DIR/{split}/masks/*.png of the same stem, one class "
        'id per pixel; DIR/classes.json: {"classes": [names], "void": ID}), sweeps the base lr on held-out '
        "images (val/, else a fifth of train; never test) and reports mIoU, pixel accuracy, per-class IoU and the "
        "confusion matrix on the test split. Defaults are the paper's (VOC2012: 513-px crops, 30k iterations); "
        "docs/transfer.md gives the CPU-scale values.",
    )
    p.add_argument(
        "run", type=Path,
        help="run directory, checkpoint, or exported encoder (.safetensors, .pth; any torchvision-layout ResNet)",
    )  # fmt: skip
    p.add_argument("--data-dir", dest="data_dir", type=directory, required=True, help="folder of images and masks")
    p.add_argument("--dataset", choices=DATASETS, default="folder",
                   help="folder: any folder of that layout; camvid: CamVid's 11 classes and void 11 known")  # fmt: skip
    p.add_argument("--void-id", type=count, default=None, help="the mask id of void pixels (default: classes.json's, "
                   "CamVid's 11, else 255); ignored by the loss and the score")  # fmt: skip
    _add_init(p)
    p.add_argument(
        "--frozen", action="store_true", help="keep the encoder fixed (BN in inference mode); train the head"
    )
    p.add_argument("--lrs", type=floats, default=d.lrs, help="base lrs swept on held-out images (default: the "
                   "paper's 5 log-spaced values in [1e-3, 1e-1])")  # fmt: skip
    p.add_argument("--lr", type=nonnegative, default=d.lr, help="train at this base lr, no sweep")
    p.add_argument("--iterations", type=positive_int, default=d.iterations,
                   help=f"training steps (paper {d.iterations}); the lr drops x0.1 at 70%% and 90%%")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"(paper {d.batch_size})")
    p.add_argument("--weight-decay", type=nonnegative, default=d.weight_decay, help=f"(paper {d.weight_decay:g})")
    p.add_argument(
        "--crop-size", type=crop_size, default=d.crop_size, help=f"training crop in px (paper {d.crop_size})"
    )
    p.add_argument("--image-scale", type=unit_fraction, default=d.image_scale,
                   help="resize images (and the masks trained on) by this first; scores stay at the masks' full "
                   f"size (paper {d.image_scale:g})")  # fmt: skip
    p.add_argument("--head-channels", type=channels, default=d.head_channels,
                   help="the head's width (default 0: the paper's 256 times the encoder's width)")  # fmt: skip
    p.add_argument("--mask-fraction", type=unit_fraction, default=d.mask_fraction,
                   help="train on a seeded fraction of the training masks (few-label regime; default all)")  # fmt: skip
    p.add_argument("--seeds", type=seed_count, default=d.seeds, help="seeds to train and average (mean and spread)")
    p.add_argument("--seed", type=seed, default=d.seed, help="the first seed (the sweep's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--out", type=Path, default=None,
        help="result JSON file (default: <run>/eval/segment_<dataset>[_random][_frozen][_masksF].json; needed for an "
        "exported encoder); the picture goes beside it",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=segment)


def segment(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.evaluate.runner import SegmentationRequest, run_segmentation

    settings = SegmentConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SegmentConfig)
                                if hasattr(args, f.name)})  # fmt: skip
    request = SegmentationRequest(
        run=args.run, data_dir=args.data_dir, dataset=args.dataset, void_id=args.void_id, init=args.init,
        device=args.device, out=args.out, segment=settings,
    )  # fmt: skip
    result, path = run_segmentation(request, progress=not args.quiet)
    spread = f" ± {result['miou_std']:.2f} over {len(result['seeds'])} seeds" if len(result["seeds"]) > 1 else ""
    print(
        f"segmentation on {result['dataset']} ({result['init']} encoder, lr {result['chosen_lr']:.3g}): "
        f"mIoU {result['miou']:.2f}{spread}, pixel accuracy {result['pixel_acc']:.2f}%"
    )
    print(f"written to {path} (and {path.with_suffix('.png').name} beside it)")
    return 0
