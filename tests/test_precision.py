"""train.precision auto: bf16 exactly where the device computes it natively (issue 13)."""

import json
import math

import pytest
import torch

from byol.config import PRESETS, apply_overrides, cpu_demo, get_preset
from byol.precision import Precision, flush_denormals, native_bf16
from byol.train import pretrain, resume

CPU = torch.device("cpu")


def _fake_cpu(monkeypatch, capability, avx512_bf16=False, amx=False):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(
    ("capability", "avx512_bf16", "amx", "bf16"),
    [
        ("AVX2", False, False, False),  # most laptops and cloud VMs: emulated bf16 is ~7x slower
        ("AVX512", False, False, False),  # AVX-512 without its bf16 extension is still emulation
        ("AVX512", True, False, True),
        ("AVX512", False, True, True),
        ("DEFAULT", False, False, False),
    ],
)
def test_auto_picks_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, capability, avx512_bf16, amx, bf16):
    _fake_cpu(monkeypatch, capability, avx512_bf16, amx)
    precision = Precision.create("auto", "auto", CPU)
    assert (precision.autocast is torch.bfloat16) is bf16
    assert precision.channels_last is bf16  # memory_format auto follows bf16
    assert precision.reason.startswith(f"auto: {'bf16' if bf16 else 'fp32'}") and capability in precision.reason
    assert native_bf16(CPU)[0] is bf16


def test_auto_on_cuda_follows_the_device_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, s=supported, **k: s)
        precision = Precision.create("auto", "auto", torch.device("cuda"))
        assert (precision.autocast is torch.bfloat16) is supported
        assert "Fake GPU" in precision.reason


def test_an_explicit_precision_is_obeyed_whatever_the_cpu(monkeypatch):
    _fake_cpu(monkeypatch, "AVX2")
    assert Precision.create("bf16", "auto", CPU).name == "bf16 + channels_last"
    _fake_cpu(monkeypatch, "AVX512", avx512_bf16=True)
    assert Precision.create("fp32", "auto", CPU).name == "fp32"
    assert Precision.create("fp32", "channels_last", CPU).name == "fp32 + channels_last"
    assert "set in the config" in Precision.create("fp32", "auto", CPU).reason


def test_no_preset_pins_bf16_and_the_test_preset_is_the_same_on_every_cpu():
    assert all(get_preset(name).train.precision != "bf16" for name in PRESETS)
    assert cpu_demo().train.precision == "auto"
    assert get_preset("tiny").train.precision == "fp32"  # a test's numbers must not depend on the CPU


def test_a_bf16_run_trains_on_any_cpu(tmp_path):
    """bf16 autocast, emulated or native, trains with finite losses, and the run records it."""
    config = apply_overrides(get_preset("tiny"), {"train.precision": "bf16", "train.max_steps": 6})
    pretrain(config, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["byol_loss"] for r in records if "byol_loss" in r]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    (start,) = json.loads((tmp_path / "environment.json").read_text())
    assert start["precision"] == "bf16 + channels_last"


def test_the_run_records_the_resolved_precision_and_why(tmp_path, monkeypatch):
    _fake_cpu(monkeypatch, "AVX2")
    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 2, "train.precision": "auto"})
    pretrain(config, tmp_path, progress=False)
    (start,) = json.loads((tmp_path / "environment.json").read_text())
    assert start["precision"] == "fp32" and "no native bf16" in start["precision_reason"]
    assert start["step"] == 0 and start["device"] == "cpu"
    resume(tmp_path, progress=False)  # a finished run: it records the start and stops
    assert [s["step"] for s in json.loads((tmp_path / "environment.json").read_text())] == [0, 2]


def test_denormals_are_flushed_inside_the_block_only():
    tiny = torch.tensor([1e-39])  # a denormal float32
    with flush_denormals(CPU):
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() > 0.0  # torch's default restored
