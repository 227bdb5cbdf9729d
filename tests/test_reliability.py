"""Issue 8: exact resume after SIGKILL, the non-finite guard, and the exported encoder."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import byol.train as train_module
from byol import load_encoder
from byol.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.errors import CheckpointError, TrainingError
from byol.evaluate.common import load_encoder_from_run
from byol.export import export_encoder
from byol.train import Schedule, create_state, pretrain, train_step

RUN = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.checkpoint_every", "1",
       "--train.deterministic", "true", "--train.keep_checkpoints", "2"]  # fmt: skip


def _start(run_dir, resume):
    args = ["pretrain", "--run-dir", str(run_dir), "--resume"] if resume else [*RUN, "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "byol", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _final(run_dir):
    state = load_checkpoint(latest_checkpoint(run_dir))["state"]
    return state, (run_dir / "metrics.jsonl").read_text()


def test_sigkill_at_random_steps_resumes_bit_identically(tmp_path):
    reference = tmp_path / "reference"
    proc = _start(reference, resume=False)
    assert proc.wait() == 0, proc.stderr.read()
    ref_state, ref_log = _final(reference)

    run = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    for _ in range(12):
        resume = bool(list_checkpoints(run))
        proc = _start(run, resume)
        time.sleep(rng.uniform(2.0, 4.5))  # python + torch start-up is about 2 s; 32 steps follow
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    else:
        proc = _start(run, resume=True)
        assert proc.wait() == 0, proc.stderr.read()
    assert kills >= 1
    state, log = _final(run)
    assert state["step"] == ref_state["step"] == 32
    for network in ("online", "target"):
        for name, tensor in ref_state[network].items():
            assert torch.equal(state[network][name], tensor), (network, name)
    assert log == ref_log  # the logged loss sequence, every step, bit for bit


def test_every_rng_is_restored_on_resume(tmp_path):
    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 4})
    pretrain(config, tmp_path, progress=False)
    payload = load_checkpoint(latest_checkpoint(tmp_path))
    assert {"torch", "python", "numpy"} <= set(payload["rng"])
    np.random.seed(99)
    random.seed(99)
    train_module.set_rng_state(payload["rng"])
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
    config = apply_overrides(get_preset("tiny"), {"train.on_nonfinite": "skip", "train.max_skipped_steps": 2})
    state, _ = pretrain(config, tmp_path / "a", progress=False)
    assert state.step == 32
    _nan_after(monkeypatch, bad_step=5, times=3)
    config = apply_overrides(config, {"train.max_skipped_steps": 1})
    with pytest.raises(TrainingError, match="step 5"):
        pretrain(config, tmp_path / "b", progress=False)


def test_non_finite_gradient_is_caught_before_the_update():
    state = create_state(get_preset("tiny"), 3, 4, torch.device("cpu"))
    state.online.projector.net[0].weight.register_hook(lambda g: g * float("inf"))
    before = {n: p.clone() for n, p in state.online.named_parameters()}
    schedule = Schedule(10, 0, 5, 8, 0.5, 0.9)
    with pytest.raises(TrainingError, match="non-finite gradient at step 0"):
        train_step(state, torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), torch.zeros(8, dtype=torch.long),
                   schedule)  # fmt: skip
    assert all(torch.equal(p, before[n]) for n, p in state.online.named_parameters())


def test_export_round_trip_gives_identical_features(tmp_path, capsys):
    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 3})
    pretrain(config, tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "enc.safetensors")]) == 0
    encoder = load_encoder(tmp_path / "enc.safetensors")
    original = load_encoder_from_run(tmp_path / "run").encoder.eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), original(x))
    assert encoder.metadata["network"] == "online encoder" and not encoder.training
    assert main(["embed", str(tmp_path / "enc.safetensors"), "--out", str(tmp_path / "f.npy"), "--quiet"]) == 0
    features = np.load(tmp_path / "f.npy")
    assert features.shape == (256, encoder.out_dim) and np.load(tmp_path / "f.labels.npy").shape == (256,)


def test_tampered_export_is_refused(tmp_path):
    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 2})
    pretrain(config, tmp_path / "run", progress=False)
    weights, meta = export_encoder(tmp_path / "run", tmp_path / "enc.safetensors")
    data = json.loads(meta.read_text())
    data["depth"] = 34
    meta.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not hold the encoder"):
        load_encoder(weights)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_encoder(weights)
