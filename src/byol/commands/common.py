"""What the subcommands share: argument types that name what is valid, the config flags, and config building."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from byol.config import MAX_IMAGE_SIZE, PRESETS, Config, data_location, local_folder
from byol.errors import ConfigError
from byol.length import configure

MAX_REAL = 1e6  # the largest rate, temperature, decay or time a flag takes
MAX_COUNT = 10**6  # the largest epoch count, batch, neighbour count or repeat count a flag takes

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
                f"unrecognised argument {token!r}; config overrides look like --section.key VALUE "
                "(`byol pretrain --help` lists the sections)"
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
    """The preset, then the shortcut flags, then the dotted overrides, the length-dependent settings the user
    did not set moved to the run's length (``byol.length``, printed); validated."""
    overrides = {key: getattr(args, flag) for flag, key in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    overrides.update(parse_overrides(extra))
    return configure(preset_name(args), overrides)[0]


def preset_name(args: argparse.Namespace) -> str:
    return str(args.preset or args.default_preset)


def add_config_flags(parser: argparse.ArgumentParser, default_preset: str) -> None:
    parser.add_argument("--preset", help=f"config preset: {', '.join(PRESETS)} (default: {default_preset})")
    parser.set_defaults(default_preset=default_preset, accepts_overrides=True)
    parser.add_argument(
        "--dataset", help="dataset name (synthetic, fashion-mnist, cifar10, cifar100, stl10, imagefolder)"
    )
    parser.add_argument("--data-dir", dest="data_dir", type=data_folder, help="directory holding the dataset's files")
    parser.add_argument("--epochs", help="number of pretraining epochs")
    parser.add_argument("--seed", help="random seed")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")


def quiet_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def listed(item: Callable[[str], float], what: str) -> Callable[[str], tuple]:
    """An argparse type: comma-separated values, each parsed by ``item``."""

    def parse(text: str) -> tuple:
        try:
            return tuple(item(v) for v in text.split(","))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}") from None

    parse.bounds = item.bounds  # type: ignore[attr-defined]
    return parse


def number(kind: type, minimum: float, upper: float, what: str) -> Callable[[str], float]:
    """An argparse type: a finite ``kind`` (int or float) >= ``minimum`` (> ``minimum`` when ``what`` starts
    with "a positive") and <= ``upper``, with a message naming what is valid. Every numeric flag has an upper
    bound: a value far past any real run would hang, overflow or exhaust memory rather than run."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        low_ok = value > minimum if what.startswith("a positive") else value >= minimum
        if not (math.isfinite(value) and low_ok and value <= upper):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.bounds = (minimum, upper)  # type: ignore[attr-defined]  # read by the generated flag test
    return parse


def directory(text: str) -> Path:
    """An argparse type: a directory path, not the empty string (an unset shell variable, most often), nor a URL
    (``s3://bucket/x`` would otherwise become a local folder named ``s3:``)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory, got an empty string")
    try:
        return Path(local_folder(text, "the folder"))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def data_folder(text: str) -> str:
    """An argparse type: a --data-dir, which may be empty (the dataset's default place), a folder, or a prepared
    set in object storage (s3://, gs://)."""
    try:
        return data_location(text, "--data-dir")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


positive = number(float, 0.0, MAX_REAL, "a positive number up to 1e6")
nonnegative = number(float, 0.0, MAX_REAL, "a number in [0, 1e6]")
positive_int = number(int, 1, MAX_COUNT, "an integer in [1, 1e6]")
count = number(int, 0, 2**31 - 1, "an integer in [0, 2^31)")
seed = number(int, 0, 2**32 - 1, "a seed in [0, 2^32)")
image_size = number(int, 0, MAX_IMAGE_SIZE, f"an image size in [0, {MAX_IMAGE_SIZE}] (0: the run's)")
fraction = number(float, 0.0, 1.0, "a positive label fraction, which must lie in (0, 1]")
unit_fraction = number(float, 0.0, 1.0, "a positive fraction, which must lie in (0, 1]")
crop_size = number(int, 8, MAX_IMAGE_SIZE, f"a crop size in [8, {MAX_IMAGE_SIZE}] px")
channels = number(int, 0, 4096, "a channel count in [0, 4096] (0: the default)")
seed_count = number(int, 1, 100, "a number of seeds in [1, 100]")
floats = listed(positive, "positive numbers up to 1e6")
seeds = listed(seed, "seeds in [0, 2^32)")
positive_ints = listed(positive_int, "integers in [1, 1e6]")
