"""Settings that follow a run's length: warm-up, τ_base, the learning rate and the weight decay (issue 27).

The released code ties them to the number of epochs (SPEC §4): 40 / 100 / 300 / 1000 epochs take base lr
0.45 / 0.45 / 0.3 / 0.2, weight decay 1e-6 / 1e-6 / 1e-6 / 1.5e-6, τ_base 0.97 / 0.99 / 0.99 / 0.996, and 10
warm-up epochs. A preset is a recipe at its own length (its ``train.epochs``); a run of another length moves
each setting along those curves by the ratio of the curve at the two lengths: base lr, weight decay and
warm-up directly, τ_base through 1 − τ_base (the horizon of the moving average). So each released ImageNet
preset taken to another released length is that length's preset, and a preset's numbers hold at its length.

Where the released table is silent, below 40 epochs, the curves come from CIFAR-10 runs of 3 and 10 epochs
(docs/cifar10.md, "Settings that follow the length"): :data:`LR`, :data:`WEIGHT_DECAY` and :data:`HORIZON`
stay flat below 40 epochs (τ_base 0.97 and 0.99 learned the same at 3 epochs, base lr 0.24 and 0.48 too), and
warm-up shrinks as a power of the length through the released 10 epochs at 40 and the 0.5 epochs measured
best at 3 (about 1.16: 0.9 epochs at 5, 2.0 at 10). Between anchors the other curves are interpolated linearly
in log(epochs); beyond their ends they are flat.

A setting the user gave is left alone: ``train.pinned`` names them (``configure`` fills it from the
overrides), and ``train.follow_length false`` keeps every preset number at any length. The rule reads
``train.epochs``: ``train.max_steps`` cuts a run short without moving anything. The demo's re-plan moves τ_base
and the lr with the length it chooses, and holds the warm-up already run and the optimizer's weight decay.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from byol.config import Config, apply_overrides, get_preset, validate
from byol.errors import ConfigError

log = logging.getLogger(__name__)

# The released code's per-length configs (SPEC §4), by epochs.
LR = {40.0: 0.45, 100.0: 0.45, 300.0: 0.3, 1000.0: 0.2}
WEIGHT_DECAY = {300.0: 1e-6, 1000.0: 1.5e-6}
HORIZON = {40.0: 0.03, 100.0: 0.01, 300.0: 0.01, 1000.0: 0.004}  # 1 − τ_base
# Warm-up: the released 10 epochs from 40 epochs on; below, the power law through (40, 10) and the CIFAR-10
# measurement (3, 0.5): at 3 epochs 0.5 warm-up epochs learned 39.2% kNN, 0.75 37.3%, none 38.0%.
WARMUP_EPOCHS, WARMUP_FROM = 10.0, 40.0
WARMUP_MEASURED = (3.0, 0.5)
WARMUP_POWER = math.log(WARMUP_EPOCHS / WARMUP_MEASURED[1]) / math.log(WARMUP_FROM / WARMUP_MEASURED[0])


def _curve(points: Mapping[float, float]) -> Callable[[float], float]:
    """The piecewise log-linear function through ``points``, flat beyond the first and the last."""
    xs = sorted(points)

    def value(epochs: float) -> float:
        if epochs <= xs[0]:
            return points[xs[0]]
        for low, high in itertools.pairwise(xs):
            if epochs <= high:
                t = math.log(epochs / low) / math.log(high / low)
                return points[low] + t * (points[high] - points[low])
        return points[xs[-1]]

    return value


def warmup_curve(epochs: float) -> float:
    return WARMUP_EPOCHS * min(1.0, epochs / WARMUP_FROM) ** WARMUP_POWER


lr_curve, weight_decay_curve, horizon_curve = _curve(LR), _curve(WEIGHT_DECAY), _curve(HORIZON)

# Each length-dependent key: how to move its value from one length to another, and how to print it.
_RULES: dict[str, tuple[Callable[[float, float, float], float], str]] = {
    "optim.base_lr": (lambda v, a, b: v * lr_curve(b) / lr_curve(a), "{:.4g}"),
    "optim.weight_decay": (lambda v, a, b: v * weight_decay_curve(b) / weight_decay_curve(a), "{:.3g}"),
    "target.base_ema": (lambda v, a, b: 1 - (1 - v) * horizon_curve(b) / horizon_curve(a), "{:.5g}"),
    "optim.warmup_epochs": (lambda v, a, b: v * warmup_curve(b) / warmup_curve(a), "{:.4g}"),
}
LENGTH_KEYS = tuple(_RULES)


def _get(config: Config, key: str) -> float:
    section, _, name = key.partition(".")
    return float(getattr(getattr(config, section), name))


def pinned_keys(config: Config) -> set[str]:
    return {key for key in config.train.pinned.split(",") if key}


def follow(config: Config, epochs: float, hold: tuple[str, ...] = ()) -> tuple[Config, str]:
    """``config`` at ``epochs`` epochs: each length-dependent setting neither pinned nor in ``hold`` moved from
    ``config.train.epochs`` along its curve. Returns the config and a line saying what moved and why ("" if
    nothing visibly did), which it also logs."""
    before = config.train.epochs
    config = apply_overrides(config, {"train.epochs": epochs})
    if not config.train.follow_length or epochs == before:
        return config, ""
    pinned = pinned_keys(config)
    changes, notes = {}, []
    for key, (move, form) in _RULES.items():
        if key in pinned or key in hold:
            continue
        old = _get(config, key)
        changes[key] = new = float(f"{move(old, before, epochs):.12g}")  # no 0.5000000000000002
        if form.format(new) != form.format(old):
            notes.append(f"{key} {form.format(old)} -> {form.format(new)}")
    if not notes:
        return apply_overrides(config, changes), ""
    kept = f"; kept as set: {', '.join(sorted(pinned))}" if pinned else ""
    note = (
        f"settings follow the length ({before:g} -> {epochs:g} epochs, the released per-length table, "
        f"byol.length): {', '.join(notes)}{kept}"
    )
    log.info(note)
    return apply_overrides(config, {**changes, "train.length_note": note}), note


def configure(preset: str, overrides: Mapping[str, Any]) -> tuple[Config, str]:
    """The preset with the overrides, its length-dependent settings moved from the preset's length to the
    run's; those the overrides set are pinned. Validated; returns the config and the rule's line ("" if none)."""
    base = get_preset(preset)
    final = validate(apply_overrides(base, overrides))  # bad values are refused before the rule reads them
    pinned = set(LENGTH_KEYS) & overrides.keys() | pinned_keys(final)
    if unknown := pinned - set(LENGTH_KEYS):
        raise ConfigError(
            f"train.pinned: {', '.join(sorted(unknown))} do not follow the length; valid: {', '.join(LENGTH_KEYS)}"
        )
    start = apply_overrides(final, {"train.epochs": base.train.epochs, "train.pinned": ",".join(sorted(pinned))})
    config, note = follow(start, final.train.epochs)
    return validate(config), note
