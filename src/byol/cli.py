"""The `byol` command line: parses arguments and calls the library, nothing more.

Errors the user can fix (a bad flag, preset, key, path or file) print one message and exit with status 2;
a run that cannot go on (a non-finite loss) exits with status 1. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from byol.config import PRESETS, Config, apply_overrides, get_preset, valid_keys, validate
from byol.errors import ByolError, ConfigError
from byol.evaluate.knn import DEFAULT_K, DEFAULT_TEMPERATURE

# Short flags for the most used config keys; any key is also settable as --section.field VALUE.
SHORTCUTS = {
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "device": "train.device",
}


def parse_overrides(tokens: Sequence[str]) -> dict[str, str]:
    """["--optim.base_lr", "0.3", "--train.seed=1"] → {"optim.base_lr": "0.3", "train.seed": "1"}."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise ConfigError(
                f"unrecognised argument {token!r}; config overrides look like --section.key VALUE, "
                "valid keys are:\n  " + "\n  ".join(valid_keys())
            )
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if i + 1 >= len(tokens):
                raise ConfigError(f"{token} needs a value")
            value = tokens[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return overrides


def build_config(args: argparse.Namespace, extra: Sequence[str]) -> Config:
    """The preset, then the shortcut flags, then the dotted overrides; validated."""
    overrides = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    overrides.update(parse_overrides(extra))
    return validate(apply_overrides(get_preset(_preset(args)), overrides))


def _preset(args: argparse.Namespace) -> str:
    return str(args.preset or args.default_preset)


def _add_config_flags(parser: argparse.ArgumentParser, default_preset: str) -> None:
    parser.add_argument("--preset", help=f"config preset: {', '.join(PRESETS)} (default: {default_preset})")
    parser.set_defaults(default_preset=default_preset)
    parser.add_argument(
        "--dataset", help="dataset name (synthetic, fashion-mnist, cifar10, cifar100, stl10, imagefolder)"
    )
    parser.add_argument("--data-dir", dest="data_dir", help="directory holding the dataset's files")
    parser.add_argument("--epochs", help="number of pretraining epochs")
    parser.add_argument("--seed", help="random seed")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")


def cmd_pretrain(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.distributed import current_context
    from byol.train import pretrain, resume

    if args.resume:
        if extra or args.preset is not None or any(getattr(args, f) is not None for f in SHORTCUTS):
            raise ConfigError("--resume continues a run with its saved config; drop the other config flags")
        resume(args.run_dir, progress=not args.quiet)
    else:
        config = build_config(args, extra)
        pretrain(config, args.run_dir, progress=not args.quiet)
    if current_context().is_main:
        print(f"run directory: {args.run_dir}")
    return 0


def cmd_bench_augment(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.bench import bench_augment
    from byol.train import resolve_device

    config = build_config(args, extra)
    timings, view_s, step_s = bench_augment(config, args.repeats)
    device = resolve_device(config.train.device)
    print(f"view pipeline (T and T', preset {config.augment.preset!r}), 256 RGB images, device {device}:")
    for t in timings:
        print(f"  {t.image_size:>4} px: {t.pairs_per_s:10.0f} view pairs/s ({2 * t.pairs_per_s:.0f} views/s)")
    batch = config.optim.batch_size
    print(f"preset {_preset(args)!r} ({config.data.dataset}, {config.data.image_size} px, batch {batch}):")
    print(f"  views {view_s * 1e3:.1f} ms, whole step {step_s * 1e3:.1f} ms, {batch / step_s:.0f} images/s")
    print(f"  view pipeline share of the step: {100 * view_s / step_s:.1f}%")
    return 0


def _list(item: Callable[[str], float], what: str) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values, each parsed by ``item``."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    return parse


def _number(kind: type, minimum: float, what: str) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum`` (> 0 when ``minimum`` is 0.0 for floats
    named "positive"), with a message naming what is valid."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and (value > minimum if what.startswith("a positive") else value >= minimum)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _number(float, 0.0, "a positive number")
_positive_int = _number(int, 1, "an integer >= 1")
_count = _number(int, 0, "an integer >= 0")
_nonnegative = _number(float, 0.0, "a number >= 0")


_floats = _list(_positive, "positive numbers")
_ints = _list(_count, "integers >= 0")
_positive_ints = _list(_positive_int, "integers >= 1")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"the label fraction must lie in (0, 1], got {value}")
    return value


def cmd_evaluate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.evaluate.finetune import FinetuneConfig
    from byol.evaluate.linear import LinearConfig
    from byol.evaluate.runner import EvaluationRequest, run_evaluation

    request = EvaluationRequest(
        protocol=args.command,
        run=args.run,
        dataset=args.dataset or "",
        data_dir=args.data_dir,
        image_size=args.image_size,
        init=args.init,
        device=args.device,
        k=getattr(args, "k", DEFAULT_K),
        temperature=getattr(args, "temperature", DEFAULT_TEMPERATURE),
        linear=LinearConfig(
            args.mode, args.lrs, args.epochs, args.batch_size, args.val_size, args.seed, args.standardize
        )
        if args.command == "linear"
        else LinearConfig(),
        finetune=FinetuneConfig(
            args.label_fraction, args.lrs, args.epochs, args.batch_size, args.weight_decay, args.val_size, args.seed
        )
        if args.command == "finetune"
        else FinetuneConfig(),
    )
    result, path = run_evaluation(request, progress=not args.quiet)
    print(
        f"{result['protocol']} on {result['dataset']}, {result['test_split']} ({result['init']} encoder): "
        f"top-1 {result['top1']:.2f}%, "
        f"top-5 {result['top5']:.2f}%, mean per-class {result['mean_per_class']:.2f}%"
    )
    print(f"written to {path}")
    return 0


def cmd_report(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.report import write_report

    print(f"report written to {write_report(args.run)}")
    return 0


def cmd_demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.demo import default_run_dir, format_table, run_demo

    config = build_config(args, extra)
    run_dir = args.run_dir or default_run_dir()
    forced = args.epochs is not None or any(key.split("=")[0] == "--train.epochs" for key in extra)
    summary = run_demo(run_dir, config, not args.quiet, args.budget_minutes, size_to_budget=not forced)
    print(f"\n{config.data.dataset} test set, after {summary['epochs']:g} epochs, "
          f"{summary['pretrain_seconds'] / 60:.1f} min of BYOL pretraining "
          f"({summary['total_seconds'] / 60:.1f} min in all, {summary['device']}, "
          f"{summary['precision']}):")  # fmt: skip
    print(format_table(summary))
    print(f"\nreport: {summary['report']}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_ablate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.ablate import run_table

    out_dir = args.out or Path("runs") / f"ablate-{args.table}-{args.scale}"
    overrides = parse_overrides(extra)
    path = run_table(args.table, args.scale, list(args.seeds), out_dir, not args.quiet, overrides)
    print(path.read_text())
    print(f"table written to {path}")
    return 0


def cmd_export(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.export import export_encoder

    weights, meta = export_encoder(args.run, args.out)
    print(f"online encoder written to {weights} (architecture in {meta})")
    return 0


def cmd_embed(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.export import embed

    path, shape = embed(
        args.source, args.out, args.dataset or "", args.split or "", args.data_dir, args.device, not args.quiet
    )
    print(f"features {shape} written to {path} (labels beside it)")
    return 0


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run directory (its latest checkpoint) or a checkpoint file")
    parser.add_argument("--dataset", help="evaluate on this dataset (default: the pretraining one; else transfer)")
    parser.add_argument("--data-dir", dest="data_dir", help="directory of that dataset's files")
    parser.add_argument("--image-size", type=_count, default=0, help="input size (default: the run's view size)")
    parser.add_argument(
        "--init", choices=("pretrained", "random"), default="pretrained",
        help="random: the same protocol on a freshly initialised encoder of the same architecture (baseline)",
    )  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=_count, default=0, help="seed of the splits and the classifier")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_bench_step(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.bench import bench_step

    config = build_config(args, extra)
    r = bench_step(config, args.repeats)
    batch = config.optim.batch_size
    print(f"training step, preset {_preset(args)!r}, batch {batch}, {config.data.image_size} px, device {r.device}, "
          f"precision {r.precision}:")  # fmt: skip
    print(f"  full step (views + step):  {r.step_s * 1e3:8.1f} ms  {batch / r.step_s:9.0f} images/s")
    print(f"  bare network work:         {r.network_s * 1e3:8.1f} ms  {batch / r.network_s:9.0f} images/s")
    print(f"  view pipeline:             {r.views_s * 1e3:8.1f} ms  {batch / r.views_s:9.0f} images/s")
    print(f"  overhead ratio step / bare network: {r.step_s / r.network_s:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from byol.demo import BUDGET_MINUTES

    parser = argparse.ArgumentParser(
        prog="byol",
        description="BYOL (Bootstrap Your Own Latent): self-supervised pretraining and the paper's evaluations.",
        epilog="Config keys can be overridden on any training command as --section.key VALUE "
        "(e.g. --optim.base_lr 0.3); `byol pretrain --help` lists the sections.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder with BYOL",
        description="Pretrain with BYOL. Any config key can be set as --section.key VALUE; sections: "
        "model, optim, target, data, augment, train (e.g. --optim.base_lr 0.3 --target.base_ema 0.99).",
    )
    _add_config_flags(p, "imagenet-1000ep")
    p.add_argument("--run-dir", default="runs/byol", type=Path, help="where checkpoints and logs go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_pretrain, accepts_overrides=True)

    bench = sub.add_parser("bench", help="benchmarks (print numbers, assert nothing)")
    bench_sub = bench.add_subparsers(dest="bench", metavar="WHAT", required=True)
    b = bench_sub.add_parser(
        "augment",
        help="view-pipeline throughput and its share of a training step",
        description="Times the T/T' view pipeline on 256 random images at 32, 96 and 224 px on the current "
        "device, then its share of a whole training step for the chosen preset (random inputs).",
    )
    _add_config_flags(b, "cpu-demo")
    b.add_argument("--repeats", type=_positive_int, default=10, help="timed repeats (median reported)")
    b.set_defaults(handler=cmd_bench_augment, accepts_overrides=True)
    b = bench_sub.add_parser(
        "step",
        help="full training step vs the bare network work it contains",
        description="Times (median after warm-up) the full training step including the views, the bare network "
        "work (online forward+backward on both views and target forward on both views, same shapes) and the "
        "view pipeline; prints images/s and the ratio step / bare network. Inputs are random images.",
    )
    _add_config_flags(b, "cpu-demo")
    b.add_argument("--repeats", type=_positive_int, default=10, help="timed repeats (median reported)")
    b.set_defaults(handler=cmd_bench_step, accepts_overrides=True)

    k = sub.add_parser("knn", help="kNN accuracy of a run's online encoder (cosine, weighted vote)")
    _add_eval_flags(k)
    k.add_argument("--k", type=_positive_int, default=DEFAULT_K, help=f"neighbours (default {DEFAULT_K})")
    k.add_argument(
        "--temperature", type=_positive, default=DEFAULT_TEMPERATURE,
        help=f"vote temperature (default {DEFAULT_TEMPERATURE})",
    )  # fmt: skip
    k.set_defaults(handler=cmd_evaluate)

    lin = sub.add_parser(
        "linear",
        help="linear evaluation of a run's frozen online encoder",
        description="Linear evaluation (paper §4.1): frozen online encoder with BN in inference mode, a linear "
        "layer trained with SGD Nesterov and a cosine schedule; the learning rate is swept on a validation "
        "split held out from the training set, then the test accuracy of the chosen one is reported.",
    )
    _add_eval_flags(lin)
    lin.add_argument(
        "--mode",
        choices=("augmented", "cached"),
        default="augmented",
        help="augmented: random crop + flip each epoch (the paper); cached: features once (fast)",
    )
    lin.add_argument(
        "--lrs",
        type=_floats,
        default=(0.4, 0.3, 0.2, 0.1, 0.05),
        help="base learning rates to sweep, scaled by batch/256 (default: the paper's)",
    )
    lin.add_argument("--epochs", type=_positive_int, default=80, help="epochs (default 80, the released code)")
    lin.add_argument("--batch-size", type=_positive_int, default=256)
    lin.add_argument("--val-size", type=_count, default=0, help="held-out validation images (0: min(10k, 10%%))")
    lin.add_argument(
        "--standardize", action="store_true",
        help="cached mode: z-score features with training-set statistics (not the paper's protocol)",
    )  # fmt: skip
    lin.set_defaults(handler=cmd_evaluate)

    ft = sub.add_parser(
        "finetune",
        help="semi-supervised fine-tuning on a class-balanced fraction of the labels",
        description="Fine-tune the whole online encoder and a linear head on a seeded, class-balanced subset "
        "of the labels (paper §4.2); lr and epochs are chosen on a held-out validation split.",
    )
    _add_eval_flags(ft)
    ft.add_argument("--label-fraction", type=_fraction, default=0.01, help="fraction of labels in (0, 1] (0.01, 0.1)")
    ft.add_argument("--lrs", type=_floats, default=(0.01, 0.02, 0.05, 0.1, 0.005), help="learning rates to sweep")
    ft.add_argument("--epochs", type=_positive_ints, default=(30, 50), help="epoch counts to sweep (comma-separated)")
    ft.add_argument("--batch-size", type=_positive_int, default=1024)
    ft.add_argument("--weight-decay", type=_nonnegative, default=0.0)
    ft.add_argument("--val-size", type=_count, default=0, help="held-out validation images (0: min(10k, 10%%))")
    ft.set_defaults(handler=cmd_evaluate)

    demo = sub.add_parser(
        "demo",
        help="the main job: BYOL on Fashion-MNIST on a CPU, evaluated against a random-init encoder",
        description="Evaluates a random-init encoder, times a few training steps, pretrains with the cpu-demo "
        "preset on Fashion-MNIST for as many epochs as the time budget leaves, evaluates the online encoder "
        "with the same kNN and linear protocols, writes the report and prints the table. Config overrides "
        "(--section.key VALUE) apply to the pretraining.",
    )
    _add_config_flags(demo, "cpu-demo")
    demo.add_argument("--run-dir", type=Path, default=None, help="default: runs/demo-<date>-<time>")
    demo.add_argument(
        "--budget-minutes", type=_positive, default=None,
        help="wall time of the whole demo; the run is sized to it from a measured step time "
        f"(default: {BUDGET_MINUTES['cpu']:g} on a CPU, {BUDGET_MINUTES['cuda']:g} on a GPU; --epochs N forces a "
        "length instead)",
    )  # fmt: skip
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo, accepts_overrides=True)

    from byol.ablate import SCALES, TABLES

    abl = sub.add_parser(
        "ablate",
        help="rerun one of the paper's ablation tables at a chosen scale",
        description="Runs every row of a paper ablation table for every seed at the chosen scale, evaluates each "
        "run with the same kNN and linear protocols, and writes a Markdown table in the paper's layout "
        "(mean ± half-range over seeds, collapse flag, the paper's number). Finished runs are reused; unfinished "
        "ones resume. Config overrides (--train.epochs 3) change the scale for every row; use another --out for "
        "them (a directory made with other settings is refused).",
    )
    abl.add_argument("table", choices=tuple(TABLES), help="paper table: " + ", ".join(TABLES))
    abl.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="cpu (minutes per run) or gpu (CIFAR-10)")
    abl.add_argument("--seeds", type=_ints, default=(0, 1), help="comma-separated seeds (default 0,1)")
    abl.add_argument("--out", type=Path, default=None, help="default: runs/ablate-<table>-<scale>")
    abl.add_argument("--quiet", action="store_true", help="no progress bars")
    abl.set_defaults(handler=cmd_ablate, accepts_overrides=True)

    exp = sub.add_parser(
        "export",
        help="write a run's online encoder as safetensors + JSON architecture",
        description="Exports the ONLINE encoder of a run's latest checkpoint (never the target) for downstream "
        "use; load it with byol.load_encoder(path).",
    )
    exp.add_argument("run", type=Path, help="run directory or checkpoint file")
    exp.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    exp.set_defaults(handler=cmd_export)

    emb = sub.add_parser("embed", help="write encoder features of a dataset split to a .npy file")
    emb.add_argument("source", type=Path, help="run directory, checkpoint, or exported .safetensors encoder")
    emb.add_argument("--out", type=Path, required=True, help="output .npy file (labels go to <out>.labels.npy)")
    emb.add_argument("--dataset", help="dataset (default: the one the encoder was pretrained on)")
    emb.add_argument("--split", help="split (default: test)")
    emb.add_argument("--data-dir", dest="data_dir", help="directory of the dataset's files")
    emb.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    emb.add_argument("--quiet", action="store_true", help="no progress bar")
    emb.set_defaults(handler=cmd_embed)

    rep = sub.add_parser("report", help="Markdown report with plots and every evaluation of a run")
    rep.add_argument("run", type=Path, help="run directory")
    rep.set_defaults(handler=cmd_report)
    return parser


def user_message(error: ByolError) -> str:
    """The error's own message; one raised in a DataLoader worker arrives wrapped in the worker's traceback
    ("Caught DataError in DataLoader worker process 0. Original Traceback ..."): its last line is the message."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text


def describe_os_error(error: OSError) -> str:
    """One line for an OS error on a user's path: what failed, on which path, and what to do."""
    path = f" {error.filename}" if error.filename else ""
    advice = {
        errno.ENOSPC: "free disk space and run again",
        errno.EROFS: "the file system is read-only; choose a writable directory",
        errno.EACCES: "no permission; choose a path you can write",
        errno.EPERM: "not permitted; choose a path you can write",
        errno.ENAMETOOLONG: "use a shorter name",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.EISDIR: "it is a directory; name a file",
        errno.ENOENT: "check the path",
    }.get(error.errno or 0, "check the path")
    return f"cannot use{path}: {error.strerror or error} ({advice})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler: Callable[[argparse.Namespace, Sequence[str]], int] = args.handler
    try:
        return handler(args, extra)
    except ByolError as e:
        print(f"byol {args.command}: error: {user_message(e)}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a path the user named cannot be read, created or written: nothing was lost
        print(f"byol {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"byol {args.command}: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
