"""Mixed precision and memory format: one small object the training step and the evaluations share.

bf16 autocast runs the networks' matrix work in bfloat16; the loss, the optimizer and the parameters stay
fp32. channels_last (NHWC) is the layout the fast bf16 convolution kernels want, on GPUs and on CPUs with
avx512_bf16 (measured on this project's 2-core CPU: 2.9x faster fwd+bwd for a width-1/4 ResNet-18).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Precision:
    """How the networks run: autocast dtype (None: fp32) and whether images are channels_last."""

    autocast: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def create(cls, precision: str, memory_format: str, device: torch.device) -> Precision:
        bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
        channels_last = memory_format == "channels_last" or (memory_format == "auto" and bf16)
        return cls(torch.bfloat16 if bf16 else None, channels_last)

    def input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def context(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def prepare(self, module: nn.Module) -> nn.Module:
        return module.to(memory_format=torch.channels_last) if self.channels_last else module  # type: ignore[call-overload]


FP32 = Precision()
