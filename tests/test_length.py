"""The settings that follow a run's length (byol.length): the released per-length table where it speaks, the
user's settings pinned, the rule composable, and a run's schedule following its length end to end."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byol.cli import main
from byol.config import get_preset
from byol.length import LENGTH_KEYS, configure, follow, horizon_curve, warmup_curve

RELEASED = {40: "imagenet-40ep", 100: "imagenet-100ep", 300: "imagenet-300ep", 1000: "imagenet-1000ep"}


def length_settings(config):
    o = config.optim
    return o.base_lr, o.weight_decay, config.target.base_ema, o.warmup_epochs


@pytest.mark.parametrize("source", RELEASED.values())
@pytest.mark.parametrize("epochs", RELEASED)
def test_a_released_preset_taken_to_another_released_length_is_that_lengths_preset(source, epochs):
    config, _ = configure(source, {"train.epochs": str(epochs)})
    assert length_settings(config) == pytest.approx(length_settings(get_preset(RELEASED[epochs])), rel=1e-12)
    assert config.train.epochs == epochs


@pytest.mark.parametrize("preset", ["cifar10-resnet18", "cpu-demo", "tiny", "imagenet-300ep"])
def test_at_its_own_length_a_preset_is_unchanged(preset):
    config, note = configure(preset, {})
    assert note == "" and config == get_preset(preset)


def test_a_short_run_of_the_small_data_preset_follows_the_table_below_40_epochs():
    config, note = configure("cifar10-resnet18", {"train.epochs": "3"})
    # 100 → 3 epochs: lr and weight decay flat below 100; 1 − τ three times as long a horizon as at 100 (0.97,
    # the released 40-epoch value); warm-up the 0.5 epochs measured at 3
    assert length_settings(config) == pytest.approx((0.24, 5e-4, 0.97, 0.5))
    assert "target.base_ema 0.99 -> 0.97" in note and "optim.warmup_epochs 10 -> 0.5" in note
    assert config.train.length_note == note


def test_settings_the_user_gave_are_pinned_and_named():
    config, note = configure("cifar10-resnet18", {"train.epochs": "3", "target.base_ema": "0.995"})
    assert config.target.base_ema == 0.995 and config.optim.warmup_epochs == pytest.approx(0.5)
    assert config.train.pinned == "target.base_ema"
    assert "kept as set: target.base_ema" in note


def test_follow_length_false_keeps_every_preset_number():
    config, note = configure("cifar10-resnet18", {"train.epochs": "3", "train.follow_length": "false"})
    assert note == "" and length_settings(config) == length_settings(get_preset("cifar10-resnet18"))


def test_only_length_dependent_keys_may_be_pinned():
    from byol.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"train\.pinned: model\.depth do not follow the length; valid: optim\.base_lr"
    ):
        configure("tiny", {"train.pinned": "model.depth"})


lengths = st.floats(min_value=0.01, max_value=5000, allow_nan=False)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(a=lengths, b=lengths, preset=st.sampled_from(["cifar10-resnet18", "imagenet-1000ep", "cpu-demo"]))
def test_the_rule_composes_and_stays_in_range(a, b, preset):
    """Moving to a, then to b, is moving to b: a run re-planned twice ends where one plan would have put it."""
    start = get_preset(preset)
    via, _ = follow(follow(start, a)[0], b)
    direct, _ = follow(start, b)
    assert length_settings(via) == pytest.approx(length_settings(direct), rel=1e-9, abs=1e-12)
    assert 0 < direct.target.base_ema < 1 and 0 <= direct.optim.warmup_epochs <= max(b, start.optim.warmup_epochs)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(a=lengths, b=lengths)
def test_longer_runs_average_the_target_over_longer_horizons_and_warm_up_no_shorter(a, b):
    short, long = sorted((a, b))
    assert horizon_curve(long) <= horizon_curve(short) and warmup_curve(long) >= warmup_curve(short)


def test_hold_keeps_a_key_for_one_move_only():
    config, _ = follow(get_preset("cifar10-resnet18"), 3, hold=("optim.warmup_epochs",))
    assert config.optim.warmup_epochs == 10 and config.target.base_ema == pytest.approx(0.97)
    assert set(LENGTH_KEYS) == {"optim.base_lr", "optim.weight_decay", "target.base_ema", "optim.warmup_epochs"}


SMALL = ["--dataset", "synthetic", "--model.depth", "10", "--model.width", "0.125", "--data.image_size", "16",
         "--optim.batch_size", "32", "--train.knn_every", "0", "--train.log_every", "1", "--train.precision", "fp32",
         "--train.tensorboard", "false", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("epochs", [3, pytest.param(6, marks=pytest.mark.slow)])
def test_the_schedule_of_a_run_follows_its_length(tmp_path, caplog, epochs):
    """The small-data preset on synthetic images: warm-up follows the length's curve, the
    lr peaks at its end at base_lr · B/256, τ starts at 0.97; the run printed the rule and config.json holds it."""
    run = tmp_path / "run"
    caplog.set_level("INFO", logger="byol")
    args = ["pretrain", "--preset", "cifar10-resnet18", "--epochs", str(epochs), *SMALL, "--run-dir", str(run)]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    steps_per_epoch = max(lrs) // epochs
    warmup_epochs = 10 * warmup_curve(epochs) / warmup_curve(100)
    warmup_steps = round(steps_per_epoch * warmup_epochs)
    assert (steps_per_epoch, warmup_steps) == (16, {3: 8, 6: 18}[epochs])
    peak = 0.24 * 32 / 256
    # metrics log the lr of the step just taken (step k used the schedule at k - 1)
    assert lrs[warmup_steps] == pytest.approx(peak * (warmup_steps - 1) / warmup_steps)
    assert lrs[warmup_steps + 1] == pytest.approx(peak)
    assert max(lrs.values()) == pytest.approx(peak)
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["epochs"] == epochs and saved["follow_length"] is True
    assert f"optim.warmup_epochs 10 -> {warmup_epochs:.4g}" in saved["length_note"]
    assert saved["length_note"] in caplog.text
    taus = [r["tau"] for r in records if "tau" in r]
    assert taus[0] == pytest.approx(0.97, abs=1e-3)


def test_a_resized_run_moves_tau_with_its_new_length_and_holds_its_warm_up(tmp_path):
    """The demo's re-plan path: planned at 60 epochs, resized at step 4 to half an epoch (8 steps of 16 an
    epoch); τ_base moves along the horizon curve, warm-up and weight decay stay, config.json says so."""
    from byol import train
    from byol.config import apply_overrides
    from byol.ema import target_ema
    from byol.rundir import read_metrics

    class Resize:
        at_step = 4

        def __call__(self, seconds_per_step):
            return 0.5

    overrides = {"train.epochs": 60, "optim.warmup_epochs": 0.125, "train.checkpoint_every": 100}
    config = apply_overrides(get_preset("tiny"), overrides)
    state, _ = train.pretrain(config, tmp_path, progress=False, resize=Resize())
    base_ema = 1 - (1 - 0.99) * horizon_curve(0.5) / horizon_curve(60)
    assert state.schedule.base_ema == pytest.approx(base_ema) and base_ema < 0.99
    assert (state.schedule.max_steps, state.schedule.warmup_steps) == (8, 2)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["optim"]["warmup_epochs"] == 0.125 and saved["optim"]["weight_decay"] == 1e-6
    assert "target.base_ema 0.99 -> " in saved["train"]["length_note"]
    taus = {r["step"]: r["tau"] for r in read_metrics(tmp_path) if "tau" in r}
    assert taus[6] == pytest.approx(target_ema(5, base_ema, 8, "cosine"))
