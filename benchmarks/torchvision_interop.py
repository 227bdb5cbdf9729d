"""byol's encoder in torchvision: load an export into torchvision's own ResNet and compare their features.

    make peers
    PYTHONPATH=.peers .venv/bin/python benchmarks/torchvision_interop.py [--run RUN]

With ``--run`` the run's online encoder is exported (``byol export --format torchvision``) into a temporary
folder; without it, randomly initialised ResNet-18 and ResNet-50 encoders (BN statistics randomised) are. Each
``.pth`` is loaded into ``torchvision.models.resnet18()`` / ``resnet50()`` (its ``fc`` replaced by an identity,
the cifar stem's ``conv1`` and ``maxpool`` replaced as the export's docstring says) with ``strict=False``; the
script prints the keys torchvision reports missing or unexpected (only ``fc.*`` may be missing) and the largest
difference between torchvision's features and byol's on the same images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision_keys import ScaledResNet  # this folder's

from byol.config import BLOCKS_PER_STAGE
from byol.export import export_encoder, load_encoder
from byol.interop import to_torchvision
from byol.networks import ResNet


def torchvision_model(meta: dict) -> nn.Module:
    """torchvision's ResNet of the export's depth: its own resnetNN() at width 1, else its blocks at the export's
    channels (benchmarks/torchvision_keys.py), which no resnetNN() can hold."""
    depth, width, channels = meta["depth"], meta.get("width", 1), meta["in_channels"]
    if width == 1 and channels == 3:
        return {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}[depth]()
    block = resnet.BasicBlock if depth < 50 else resnet.Bottleneck
    return ScaledResNet(block, list(BLOCKS_PER_STAGE[depth]), max(1, round(64 * width)), channels)


def torchvision_twin(meta: dict) -> nn.Module:
    model = torchvision_model(meta)
    if meta["stem"] == "cifar":
        model.conv1 = nn.Conv2d(meta["in_channels"], model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    return model


def compare(name: str, pth: Path, encoder: nn.Module, meta: dict) -> None:
    state = torch.load(pth, weights_only=True)
    try:  # into torchvision's model as it comes: only its classifier may be missing
        missing = torchvision_model(meta).load_state_dict(state, strict=False).missing_keys
    except RuntimeError as e:  # the cifar stem: conv1 is 3x3
        missing = [f"(refused: {str(e).splitlines()[-1].strip()})"]
    model = torchvision_twin(meta)
    report = model.load_state_dict(state, strict=False)
    size = 32 if meta["stem"] == "cifar" else 224
    x = torch.randn(4, meta["in_channels"], size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (model.eval()(x) - encoder.eval()(x)).abs().max().item()
    print(f"{name}: {len(state)} tensors; into torchvision's model as it comes, missing: {missing or 'none'}; "
          f"into its twin (fc → identity{', cifar stem' if meta['stem'] == 'cifar' else ''}), missing: "
          f"{report.missing_keys or 'none'}, unexpected: {report.unexpected_keys or 'none'}; "
          f"largest feature difference {difference:.2e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a run directory of byol (default: random encoders)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            pth = Path(tmp) / "encoder.pth"
            export_encoder(args.run, pth, format="torchvision")
            encoder = load_encoder(pth)
            compare(str(args.run), pth, encoder, encoder.metadata)  # type: ignore[arg-type]
            return
        for depth in (18, 50):
            encoder = ResNet(depth).eval()
            generator = torch.Generator().manual_seed(depth)
            for module in encoder.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1, generator=generator)
                    module.running_var.uniform_(0.5, 1.5, generator=generator)
            pth = Path(tmp) / f"resnet{depth}.pth"
            torch.save(to_torchvision(encoder.state_dict()), pth)
            compare(
                f"ResNet-{depth}, random init", pth, encoder, {"depth": depth, "stem": "imagenet", "in_channels": 3}
            )


if __name__ == "__main__":
    main()
