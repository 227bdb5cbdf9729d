"""The encoder's weights in torchvision's ResNet key layout, which detectron2, mmdetection, timm and most of the
field load: ``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer1.0.downsample.0``, and ``fc`` (which an encoder
has none of).

The networks are the same ResNet v1 (stride on the 3x3 convolution of a bottleneck, a 1x1 convolution + BN
shortcut where the shape changes), so the mapping is a renaming of keys, nothing else:

    stem.0 → conv1,  stem.1 → bn1,  stages.<i>.<j>.shortcut.<k> → layer<i+1>.<j>.downsample.<k>,
    stages.<i>.<j>.<rest> → layer<i+1>.<j>.<rest>

The cifar stem (a 3x3 stride-1 convolution, no max-pool) has no torchvision twin; it is exported under the same
names, with a 3x3 ``conv1.weight``: load it into a torchvision ResNet whose ``conv1`` is
``nn.Conv2d(3, 64, 3, 1, 1, bias=False)`` and whose ``maxpool`` is ``nn.Identity()`` (what CIFAR ResNets in
lightly and solo-learn do). Widths other than 1 keep the layout with every channel count scaled (BYOL's
ResNet-50 2x), which torchvision's ``resnet50()`` cannot hold; its blocks at the widened channels can.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from byol.config import BLOCKS_PER_STAGE
from byol.errors import CheckpointError

_OURS = (
    (re.compile(r"^stem\.0\."), "conv1."),
    (re.compile(r"^stem\.1\."), "bn1."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.shortcut\."), "layer{stage}.{block}.downsample."),
    (re.compile(r"^stages\.(\d+)\.(\d+)\."), "layer{stage}.{block}."),
)
_THEIRS = (
    (re.compile(r"^conv1\."), "stem.0."),
    (re.compile(r"^bn1\."), "stem.1."),
    (re.compile(r"^layer(\d+)\.(\d+)\.downsample\."), "stages.{stage}.{block}.shortcut."),
    (re.compile(r"^layer(\d+)\.(\d+)\."), "stages.{stage}.{block}."),
)
CLASSIFIER = ("fc.weight", "fc.bias")


def _rename(key: str, rules: tuple[tuple[re.Pattern[str], str], ...], shift: int) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            stage = int(match.group(1)) + shift if match.groups() else 0
            block = match.group(2) if match.groups() else ""
            return template.format(stage=stage, block=block) + key[match.end() :]
    return None


def to_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An encoder state dict of :class:`byol.networks.ResNet` in torchvision's key layout (same tensors)."""
    renamed = {}
    for key, tensor in state.items():
        new = _rename(key, _OURS, shift=1)
        if new is None:
            raise CheckpointError(f"{key!r} is not a key of byol's ResNet encoder")
        renamed[new] = tensor
    return renamed


def is_torchvision_layout(state: dict[str, Any]) -> bool:
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state


def from_torchvision(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision-layout ResNet state dict in :class:`byol.networks.ResNet`'s keys; its classifier (``fc``)
    is left out. A key of neither layout is refused, naming it."""
    renamed = {}
    for key, tensor in state.items():
        if key in CLASSIFIER:
            continue
        new = _rename(key, _THEIRS, shift=-1)
        if new is None:
            raise CheckpointError(f"{key!r} is not a key of a torchvision ResNet")
        renamed[new] = tensor
    return renamed


def architecture(state: dict[str, Tensor]) -> dict[str, Any]:
    """The :class:`byol.networks.ResNet` arguments a torchvision-layout state dict was made with: depth from the
    blocks per stage and the block kind, width from the stem's channels (64 at width 1), the stem from its kernel,
    the input channels from its weight."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4:
        raise CheckpointError("a torchvision ResNet has a 4-d conv1.weight; this state dict has none")
    blocks = []
    for stage in range(1, 5):
        indices = {int(k.split(".")[1]) for k in state if k.startswith(f"layer{stage}.")}
        blocks.append(max(indices) + 1 if indices else 0)
    bottleneck = "layer1.0.conv3.weight" in state
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == tuple(blocks) and (d >= 50) == bottleneck), None)
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(f"{blocks} {kind} blocks per stage match no ResNet depth byol builds")
    kernel = conv1.shape[-1]
    if kernel not in (3, 7):
        raise CheckpointError(f"conv1 is {kernel}x{kernel}; a ResNet stem is 7x7 (imagenet) or 3x3 (cifar)")
    return {"depth": depth, "width": conv1.shape[0] / 64, "stem": "imagenet" if kernel == 7 else "cifar",
            "in_channels": conv1.shape[1], "zero_init_residual": False}  # fmt: skip
