"""The reference key list of torchvision's ResNets, which tests/test_interop.py checks byol's export against.

    make peers    # installs torchvision into .peers/, then runs:
    PYTHONPATH=.peers .venv/bin/python benchmarks/torchvision_keys.py > tests/data/torchvision_resnet_keys.json

For depths 18 and 50 at widths 1 and 2: every key of the state dict and its shape, from torchvision's own model
definitions. Width 1 is ``torchvision.models.resnet18()`` / ``resnet50()``. Width 2 (every channel count doubled,
BYOL's ResNet-50 2x, which is not torchvision's ``wide_resnet50_2``: that one widens only the bottlenecks' inner
convolutions) is torchvision's ``ResNet`` built with its own blocks and ``_make_layer`` at doubled channels.
"""

from __future__ import annotations

import json

from torch import nn
from torchvision.models import resnet


class ScaledResNet(resnet.ResNet):
    """torchvision's ResNet, its blocks and ``_make_layer``, with ``base`` stem channels (64 in torchvision) and
    every other channel count scaled with it."""

    def __init__(self, block: type, layers: list[int], base: int, in_channels: int = 3) -> None:
        nn.Module.__init__(self)
        self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
        self.inplanes = base
        self.conv1 = nn.Conv2d(in_channels, base, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, layers[0])
        self.layer2 = self._make_layer(block, 2 * base, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * base, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * base, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * base * block.expansion, 1000)


def main() -> None:
    models = {
        "18x1": resnet.resnet18(),
        "50x1": resnet.resnet50(),
        "18x2": ScaledResNet(resnet.BasicBlock, [2, 2, 2, 2], 128),
        "50x2": ScaledResNet(resnet.Bottleneck, [3, 4, 6, 3], 128),
    }
    reference = {name: {k: list(v.shape) for k, v in model.state_dict().items()} for name, model in models.items()}
    print(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
