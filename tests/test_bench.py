"""Benchmarks print numbers and assert nothing; these tests check what they time and print, never a time."""

import re

import pytest
import torch

import byol.bench as bench
from byol.bench import AugmentTiming, StepFixture, StepTiming, Timed, format_augment, format_step
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
    step, views = Timed(0.2, compiled_s=0.16, compile_s=30.0), Timed(0.05)
    timing = StepTiming("cpu", "fp32", step=step, network_s=0.1, views=views, ratio=2.0, compiled_ratio=1.6, rounds=7)
    text = format_step(config, "tiny", timing)
    assert "full step / bare eager network: 2.000 eager, 1.600 compiled (the median of 7 rounds' ratios" in text
    assert f"{batch / 0.2:9.0f} images/s eager" in text and "(1.25x, compiled in 30.0 s)" in text
    pairs = AugmentTiming(32, Timed(0.256, compiled_s=0.064, compile_s=12.5))
    text = format_augment(config, "tiny", [pairs], view=Timed(0.01, 0.005, 1.0), step=Timed(0.04, 0.02, 2.0))
    assert "32 px:    256.0 ms      1000 view pairs/s eager |     64.0 ms      4000 view pairs/s compiled" in text
    assert "(4.00x, compiled in 12.5 s)" in text and "share of the step: 25.0% eager, 25.0% compiled" in text


def test_interleaved_timing_calls_each_function_in_turn_and_pairs_rounds():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = bench.interleaved(fns, torch.device("cpu"), rounds=4, warmup=1)
    assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 4  # warm-up, then one call each per round
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    # per-round ratios, not a ratio of medians: a machine that slows down 10x in round 3 changes nothing
    assert bench.paired_ratio([1.0, 1.0, 10.0], [2.0, 2.0, 20.0]) == 0.5
    assert bench.paired_ratio([1.0, 3.0, 2.0, 9.0], [1.0, 1.0, 1.0, 1.0]) == 2.5
    with pytest.raises(ValueError):
        bench.paired_ratio([1.0], [1.0, 2.0])


def test_bench_commands_print_their_tables(capsys, monkeypatch):
    monkeypatch.setattr(bench, "AUGMENT_SIZES", (16, 32))  # 224-px views of 256 images take half a minute here
    assert main(["bench", "augment", "--preset", "tiny", "--repeats", "1", "--train.compile", "false"]) == 0
    out = capsys.readouterr().out
    assert "16 px" in out and "32 px" in out and "view pipeline share of the step" in out and "compiled" not in out
    assert main(["bench", "step", "--preset", "tiny", "--repeats", "1", "--train.compile", "false"]) == 0
    out = capsys.readouterr().out
    assert "bare network work" in out and "full step / bare eager network" in out and "compiled" not in out


@pytest.mark.slow
def test_bench_commands_print_eager_and_compiled_side_by_side(capsys, monkeypatch):
    monkeypatch.setattr(bench, "AUGMENT_SIZES", (16,))
    assert main(["bench", "augment", "--preset", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "16 px" in out and "view pairs/s compiled" in out and "compiled in" in out
    assert main(["bench", "step", "--preset", "tiny", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "images/s compiled" in out and re.search(r"bare eager network: [0-9.]+ eager, [0-9.]+ compiled", out)
