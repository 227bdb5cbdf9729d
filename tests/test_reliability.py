"""Exact resume after SIGKILL at any moment, every RNG restored, and the non-finite guard of the loop."""

import json
import logging
import random
import signal

import numpy as np
import pytest
import torch
from conftest import logged_steps, start_byol, wait_until

import byol.train as train_module
from byol.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.errors import TrainingError
from byol.rundir import TIMING_KEYS
from byol.seeding import set_rng_state
from byol.train import pretrain

RUN = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.checkpoint_every", "1",
       "--train.deterministic", "true", "--train.keep_checkpoints", "2"]  # fmt: skip
STEPS = 32  # 2 epochs of 16 steps: the six kill points below reach about step 18 (each overshoots by a step or two)


def _args(run_dir, resume, steps=STEPS):
    if resume:
        return ["pretrain", "--run-dir", str(run_dir), "--resume"]
    return [*RUN, "--train.max_steps", str(steps), "--run-dir", str(run_dir)]


def _final(run_dir):
    """The final state and the logged records without their timings (the only fields speed may change)."""
    state = load_checkpoint(latest_checkpoint(run_dir))["state"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(set(TIMING_KEYS) <= set(r) for r in records if "byol_loss" in r)
    return state, [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


# Where the killed run is stopped, counted in steps from the checkpoint it resumed from: once metrics.jsonl
# shows that step, or in the middle of writing that step's checkpoint.
KILLS = [("logged", 3), ("mid-save", 3), ("logged", 5), ("mid-save", 1), ("logged", 1), ("mid-save", 4)]


# each kill starts a process (about 2.5 s): the default suite kills once, in the middle of a checkpoint's write (the
# run dies between steps too, and its resume replays the steps since the last whole checkpoint); `make test-slow`
# kills six times, three of them right after a logged step. One kill needs a short run (12 steps, not 32)
@pytest.mark.parametrize(
    ("kills", "steps"),
    [(KILLS[1:2], 12), pytest.param(KILLS, STEPS, marks=pytest.mark.slow)],
    ids=["1-kill", "6-kills"],
)
def test_sigkill_at_progress_points_resumes_bit_identically(tmp_path, caplog, kills, steps):
    reference = tmp_path / "reference"  # uninterrupted, in this process (the same code and threads as a child's)
    assert main(_args(reference, resume=False, steps=steps)) == 0
    ref_state, ref_log = _final(reference)

    run = tmp_path / "killed"
    killed = 0
    for i, (when, ahead) in enumerate(kills):
        checkpoints = list_checkpoints(run)
        step = (int(checkpoints[-1].stem[5:]) if checkpoints else 0) + ahead
        marker = tmp_path / f"stalled-{i}"
        if when == "mid-save":
            proc = start_byol(_args(run, bool(checkpoints), steps), stall_at_step=step, marker=marker)
            reached = wait_until(marker.exists, proc, f"the save of checkpoint {step}")
        else:
            proc = start_byol(_args(run, bool(checkpoints), steps))
            reached = wait_until(lambda s=step: logged_steps(run) >= s, proc, f"step {step} in metrics.jsonl")
        assert reached, proc.stderr.read()  # the kill points lie far before the last step: the run cannot end first
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += 1
        if when == "mid-save":  # the stalled write left a partial temporary file, never a partial checkpoint
            assert not (run / "checkpoints" / f"step_{step:09d}.pt").exists()
            assert all(load_checkpoint(p)["state"]["step"] == int(p.stem[5:]) for p in list_checkpoints(run))
    resumed_at = int(list_checkpoints(run)[-1].stem[5:])
    with caplog.at_level(logging.INFO):  # the last resume in this process, as the reference ran
        assert main(_args(run, resume=True)) == 0
    assert killed == len(kills) and f"resuming {run} at step {resumed_at} of {steps}" in caplog.text
    assert not list((run / "checkpoints").glob(".*tmp*"))  # the interrupted writes' temporary files were removed
    state, log = _final(run)
    assert state["step"] == ref_state["step"] == steps
    for network in ("online", "target"):
        for name, tensor in ref_state[network].items():
            assert torch.equal(state[network][name], tensor), (network, name)
    assert log == ref_log  # the logged loss sequence, every step, bit for bit
    elapsed = [json.loads(line)["elapsed_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert elapsed == sorted(elapsed) and elapsed[0] > 0  # training time adds up across the resumes


def test_every_rng_is_restored_on_resume(finished_run):
    payload = load_checkpoint(latest_checkpoint(finished_run))
    assert {"torch", "python", "numpy"} <= set(payload["rng"])
    np.random.seed(99)
    random.seed(99)
    set_rng_state(payload["rng"])
    saved_keys = payload["rng"]["numpy"]["keys"].numpy().astype(np.uint32)
    assert np.array_equal(np.random.get_state()[1], saved_keys)
    assert random.getstate() == payload["rng"]["python"]


def _nan_after(monkeypatch, bad_step, times=1):
    real_loss = train_module._loss
    calls = {"bad": 0}

    def loss(state, v1, v2):
        value, online1, logits = real_loss(state, v1, v2)
        if state.step == bad_step and calls["bad"] < times:
            calls["bad"] += 1
            value = value * float("nan")
        return value, online1, logits

    monkeypatch.setattr(train_module, "_loss", loss)


def test_nan_loss_stops_the_run_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_after(monkeypatch, bad_step=5)
    config = apply_overrides(get_preset("tiny"), {"train.checkpoint_every": 2, "train.keep_checkpoints": 5})
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 5.*step_000000004\.pt"):
        pretrain(config, tmp_path, progress=False)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt", "step_000000004.pt"]
    state = load_checkpoint(latest_checkpoint(tmp_path))["state"]
    assert all(torch.isfinite(t).all() for t in state["online"].values() if t.is_floating_point())


def test_nan_batches_can_be_skipped_with_a_limit(tmp_path, monkeypatch):
    _nan_after(monkeypatch, bad_step=5, times=2)
    config = apply_overrides(
        get_preset("tiny"), {"train.on_nonfinite": "skip", "train.max_skipped_steps": 2, "train.max_steps": 8}
    )
    state, _ = pretrain(config, tmp_path / "a", progress=False)
    assert state.step == 8  # past the two skipped steps
    _nan_after(monkeypatch, bad_step=5, times=3)
    config = apply_overrides(config, {"train.max_skipped_steps": 1})
    with pytest.raises(TrainingError, match="step 5"):
        pretrain(config, tmp_path / "b", progress=False)
