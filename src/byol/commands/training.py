"""`byol pretrain`, `demo`, `ablate` and `bench`: the commands that train."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byol.commands.common import (
    SHORTCUTS,
    add_config_flags,
    build_config,
    directory,
    floats,
    parse_overrides,
    positive,
    positive_int,
    preset_name,
    quiet_flag,
    seeds,
)
from byol.errors import ConfigError


def add_pretrain(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain an encoder with BYOL",
        description="Pretrain with BYOL. Any config key can be set as --section.key VALUE; sections: "
        "model, optim, target, data, augment, train (e.g. --optim.base_lr 0.3 --target.base_ema 0.99).",
    )
    add_config_flags(p, "imagenet-1000ep")
    p.add_argument("--run-dir", default="runs/byol", type=directory, help="where checkpoints and logs go")
    p.add_argument(
        "--resume", nargs="?", const="last", choices=("last", "auto"),
        help="continue the run in --run-dir from its last checkpoint; --resume auto: continue it if it has one, "
        "else start it with the flags given (what an elastic job restarted by torchrun --max-restarts needs)",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=pretrain)


def pretrain(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.checkpoint import list_checkpoints
    from byol.distributed import current_context, leave
    from byol.train import pretrain, resume

    if args.resume == "auto":
        config = build_config(args, extra)
        if list_checkpoints(args.run_dir):  # the same run again (a restarted rank): its flags must say so
            resume(args.run_dir, progress=not args.quiet, expect=config)
        else:
            pretrain(config, args.run_dir, progress=not args.quiet)
    elif args.resume:
        compile_setting = _resume_compile(extra)
        if compile_setting is None or args.preset is not None or any(getattr(args, f) is not None for f in SHORTCUTS):
            raise ConfigError(
                "--resume continues a run with its saved config; drop the other config flags (only --train.compile, "
                "a speed switch, may change on a resume)"
            )
        resume(args.run_dir, progress=not args.quiet, compile=compile_setting or None)
    else:
        pretrain(build_config(args, extra), args.run_dir, progress=not args.quiet)
    main_rank = current_context().is_main
    leave()
    if main_rank:
        print(f"run directory: {args.run_dir}")
    return 0


def _resume_compile(extra: Sequence[str]) -> str | None:
    """The --train.compile VALUE of a resume's flags: "" without it, None if anything else is there."""
    flags = list(extra)
    if not flags:
        return ""
    if len(flags) == 2 and flags[0] == "--train.compile":
        return flags[1]
    if len(flags) == 1 and flags[0].startswith("--train.compile="):
        return flags[0].split("=", 1)[1]
    return None


def add_demo(sub: Any) -> None:
    from byol.choices import DEMO_BUDGET_MINUTES as BUDGET_MINUTES

    p = sub.add_parser(
        "demo",
        help="the main job: BYOL on Fashion-MNIST on a CPU, evaluated against a random-init encoder",
        description="Evaluates a random-init encoder, times a few training steps, pretrains with the cpu-demo "
        "preset on Fashion-MNIST for as many epochs as the time budget leaves, evaluates the online encoder "
        "with the same kNN and linear protocols, writes the report and prints the table. Config overrides "
        "(--section.key VALUE) apply to the pretraining.",
    )
    add_config_flags(p, "cpu-demo")
    p.add_argument("--run-dir", type=directory, default=None, help="default: runs/demo-<date>-<time>")
    p.add_argument(
        "--budget-minutes", type=positive, default=None,
        help="wall time of the whole demo; the run is sized to it from a measured step time "
        f"(default: {BUDGET_MINUTES['cpu']:g} on a CPU, {BUDGET_MINUTES['cuda']:g} on a GPU; --epochs N forces a "
        "length instead)",
    )  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=demo)


def demo(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.demo import default_run_dir, format_summary, run_demo

    config = build_config(args, extra)
    run_dir = args.run_dir or default_run_dir()
    # a length the user set wins over the budget (train.max_steps, when set, decides the length of any run)
    forced = args.epochs is not None or bool({"train.epochs", "train.max_steps"} & parse_overrides(extra).keys())
    summary = run_demo(
        run_dir, config, progress=not args.quiet, budget_minutes=args.budget_minutes, size_to_budget=not forced
    )
    print(format_summary(summary, config.data.dataset))
    return 0


def add_ablate(sub: Any) -> None:
    from byol.ablate import SCALES, TABLES

    p = sub.add_parser(
        "ablate",
        help="rerun one of the paper's ablation tables at a chosen scale",
        description="Runs every row of a paper ablation table for every seed at the chosen scale, evaluates each "
        "run with the same kNN and linear protocols, and writes a Markdown table in the paper's layout "
        "(mean ± half-range over seeds, collapse flag, the paper's number). Finished runs are reused; unfinished "
        "ones resume. Config overrides (--train.epochs 3) change the scale for every row; use another --out for "
        "them (a directory made with other settings is refused).",
    )
    p.add_argument("table", choices=tuple(TABLES), help="paper table: " + ", ".join(TABLES))
    p.add_argument("--scale", choices=tuple(SCALES), default="cpu", help="cpu (minutes per run) or gpu (CIFAR-10)")
    p.add_argument("--seeds", type=seeds, default=(0, 1), help="comma-separated seeds (default 0,1)")
    p.add_argument("--out", type=directory, default=None, help="default: runs/ablate-<table>-<scale>")
    quiet_flag(p)
    p.set_defaults(handler=ablate, accepts_overrides=True)


def ablate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.ablate import run_table

    out_dir = args.out or Path("runs") / f"ablate-{args.table}-{args.scale}"
    path = run_table(
        args.table, args.scale, seeds=list(args.seeds), out_dir=out_dir, progress=not args.quiet,
        overrides=parse_overrides(extra),
    )  # fmt: skip
    print(path.read_text())
    print(f"table written to {path}")
    return 0


def add_bench(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks (print numbers, assert nothing)")
    what = bench.add_subparsers(dest="bench", metavar="WHAT", required=True)
    for name, handler, summary, description in (
        (
            "augment", bench_augment, "view-pipeline throughput and its share of a training step",
            "Times the T/T' view pipeline on 256 random images at 32, 96 and 224 px on the current device, then "
            "its share of a whole training step for the chosen preset (random inputs).",
        ),
        (
            "step", bench_step, "full training step vs the bare network work it contains",
            "Times (medians after warm-up, in turn round after round) the full training step including the views, "
            "the bare network work "
            "(online forward+backward on both views and target forward on both views, same shapes) and the view "
            "pipeline; prints images/s and the ratio step / bare network. Inputs are random images.",
        ),
    ):  # fmt: skip
        rounds = 30 if name == "step" else 10
        p = what.add_parser(name, help=summary, description=description)
        add_config_flags(p, "cpu-demo")
        p.add_argument(
            "--repeats",
            type=positive_int,
            default=rounds,
            help=f"timed rounds, each timing every line once, in turn (medians reported; default {rounds})",
        )
        p.set_defaults(handler=handler)
    p = what.add_parser(
        "data", help="per-core images/s of an image folder's decode + crops, and the workers a step needs",
        description="Times what a DataLoader worker does for an image folder (decode at the size the views need, "
        "EXIF orientation, both views' crops) on one thread, beside decoding every file in full, and prints how "
        "many workers keep a training step of each given length fed. Example: byol bench data --data-dir photos/ "
        "--preset imagenet-100ep --optim.batch_size 256",
    )  # fmt: skip
    add_config_flags(p, "imagenet-1000ep")
    p.add_argument("--images", type=positive_int, default=200, help="images to time (a seeded sample; default 200)")
    p.add_argument(
        "--step-ms", type=floats, default=(100.0, 250.0, 500.0, 1000.0),
        help="step times in ms to size the workers for (comma-separated; default 100,250,500,1000)",
    )  # fmt: skip
    p.add_argument("--no-full", dest="full", action="store_false", help="do not time full-size decoding too")
    p.add_argument("--pass", dest="full_pass", action="store_true",
                   help="instead, read one whole epoch through the training DataLoader (data.num_workers workers, "
                   "no training): images/s and the memory of each process")  # fmt: skip
    quiet_flag(p)
    p.set_defaults(handler=bench_data)


def bench_augment(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.bench import bench_augment, format_augment

    config = build_config(args, extra)
    print(format_augment(config, preset_name(args), *bench_augment(config, args.repeats)))
    return 0


def bench_data(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.bench import bench_data, bench_pass, format_data, format_pass

    config = build_config(args, extra)
    if args.full_pass:
        print(format_pass(config, bench_pass(config, progress=not args.quiet)))
    else:
        print(format_data(config, bench_data(config, args.images, args.full), args.step_ms))
    return 0


def bench_step(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from byol.bench import bench_step, format_step

    config = build_config(args, extra)
    print(format_step(config, preset_name(args), bench_step(config, args.repeats)))
    return 0
