"""Benchmarks print numbers and assert nothing; these tests check what they time and print, never a time."""

import torch

import byol.bench as bench
from byol.bench import AugmentTiming, StepFixture, StepTiming, format_augment, format_step
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.ema import target_ema


def test_the_step_fixture_runs_the_configs_own_tau_schedule():
    taus = {}
    for schedule in ("constant", "cosine"):
        config = apply_overrides(get_preset("tiny"), {"target.base_ema": "0.9", "target.schedule": schedule})
        fixture = StepFixture(config, torch.device("cpu"), torch.Generator().manual_seed(0))
        fixture.step()
        assert fixture.state.schedule.tau_schedule == schedule and fixture.state.step == 1
        taus[schedule] = fixture.step()["tau"]  # the τ of step 1
    assert taus == {"constant": 0.9, "cosine": target_ema(1, 0.9, 1_000_000)} and taus["cosine"] > 0.9


def test_the_printed_ratios_follow_from_the_timings():
    config = get_preset("tiny")
    batch = config.optim.batch_size
    text = format_step(config, "tiny", StepTiming("cpu", "fp32", step_s=0.2, network_s=0.1, views_s=0.05))
    assert "overhead ratio step / bare network: 2.000" in text and f"{batch / 0.2:9.0f} images/s" in text
    assert "runs at 0.500 of the bare network's images/s" in text
    text = format_augment(config, "tiny", [AugmentTiming(32, 1000.0)], view_s=0.01, step_s=0.04)
    assert "32 px:       1000 view pairs/s (2000 views/s)" in text and "share of the step: 25.0%" in text


def test_bench_commands_print_their_tables(capsys, monkeypatch):
    monkeypatch.setattr(bench, "AUGMENT_SIZES", (16, 32))  # 224-px views of 256 images take half a minute here
    assert main(["bench", "augment", "--preset", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "16 px" in out and "32 px" in out and "view pipeline share of the step" in out
    assert main(["bench", "step", "--preset", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "bare network work" in out and "overhead ratio step / bare network" in out
