"""Mixed precision and memory format: one small object the training step and the evaluations share.

bf16 autocast runs the networks' matrix work in bfloat16; the loss, the optimizer and the parameters stay
fp32. It pays only where the hardware computes bf16 natively: CUDA GPUs with bf16 support, and CPUs with
AVX512_BF16 or AMX (measured there: 2.9x faster fwd+bwd than fp32 for a width-1/4 ResNet-18 with
channels_last). On a CPU without them (AVX2 only: most laptops and cloud VMs) bf16 is emulated, and it was
measured 7x SLOWER than fp32 (`byol bench step --preset cpu-demo`: 7.8 s against 1.1 s a step). Hence
``train.precision auto`` resolves from the device's capability, never from a preset.

channels_last (NHWC) is the layout the fast bf16 convolution kernels want; ``memory_format auto`` follows
bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from byol.config import TrainConfig


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (for the run's log and environment.json)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return supported, f"CUDA device {name} {'supports' if supported else 'lacks'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 rule for device type {device.type!r}"
    capability = torch.backends.cpu.get_cpu_capability()
    features = [
        name
        for name, probe in (("AVX512_BF16", "_is_avx512_bf16_supported"), ("AMX", "_is_amx_tile_supported"))
        if getattr(torch.cpu, probe, lambda: False)()
    ]
    if features:
        return True, f"CPU ({capability}) has native bf16 ({' + '.join(features)})"
    return False, f"CPU ({capability}) has no native bf16 (no AVX512_BF16 or AMX): bf16 would be emulated, ~7x slower"


@dataclass(frozen=True)
class Precision:
    """How the networks run: autocast dtype (None: fp32) and whether images are channels_last.

    ``reason`` says how ``auto`` was resolved (or that the config asked for it explicitly)."""

    autocast: torch.dtype | None = None
    channels_last: bool = False
    reason: str = "fp32 by default"

    @classmethod
    def create(cls, precision: str, memory_format: str, device: torch.device) -> Precision:
        """Resolves ``train.precision`` (auto, fp32, bf16) and ``train.memory_format`` (auto, channels_last,
        contiguous) for ``device``. auto picks bf16 exactly where :func:`native_bf16` says it is native."""
        if precision == "auto":
            bf16, why = native_bf16(device)
            reason = f"auto: {'bf16' if bf16 else 'fp32'}, {why}"
        else:
            bf16, reason = precision == "bf16", f"{precision}, set in the config"
        channels_last = memory_format == "channels_last" or (memory_format == "auto" and bf16)
        return cls(autocast=torch.bfloat16 if bf16 else None, channels_last=channels_last, reason=reason)

    @classmethod
    def for_run(cls, train: TrainConfig, device: torch.device) -> Precision:
        """:meth:`create` from a config's ``train`` section (its ``precision`` and ``memory_format``)."""
        return cls.create(train.precision, train.memory_format, device)

    @property
    def name(self) -> str:
        """E.g. ``bf16 + channels_last``, ``fp32``."""
        return ("bf16" if self.autocast is not None else "fp32") + (" + channels_last" if self.channels_last else "")

    def input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def context(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module  # type: ignore[call-overload]


FP32 = Precision()


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On a CPU, treats denormal floats (|x| < 1.2e-38) as zero for the ``with`` block, then restores torch's
    default (no flushing). Training made them: a Fashion-MNIST run on an AVX2 CPU was 10% faster with them
    flushed (505 against 460 images/s, docs/benchmarks.md); values that small change no weight or loss."""
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
