"""Networks of BYOL: the ResNet v1 encoder, the MLP heads, and the online / target networks.

Paper, section 3.3: the encoder f is a ResNet-50 (v1, post-activation) whose representation y is the output
of the final average pool (2048-d at width 1x); the projector g and the predictor q are MLPs
Linear(4096) → BN → ReLU → Linear(256) whose output is not batch-normalised.

Initialisation follows the released code (Haiku defaults): every convolution and linear weight is drawn
from a truncated normal with variance 1/fan_in, biases are zero, BN γ = 1 and β = 0. The released code also
zero-initialises the last BN γ of each residual block; its README says the paper did not, so it is off by
default here (``zero_init_residual``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from byol.config import BLOCKS_PER_STAGE, STEMS, ModelConfig

# Paper / released code: BN decay 0.9 (PyTorch momentum 0.1), eps 1e-5.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34); ReLU after the residual sum (v1, post-activation)."""

    expansion = 1

    def __init__(self, c_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, channels, 3, stride)
        self.bn1 = _batch_norm(channels)
        self.conv2 = _conv(channels, channels, 3)
        self.bn2 = _batch_norm(channels)
        self.shortcut = _shortcut(c_in, channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided, as in the released Haiku code) → 1x1 with 4x expansion (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(self, c_in: int, channels: int, stride: int) -> None:
        super().__init__()
        c_out = channels * self.expansion
        self.conv1 = _conv(c_in, channels, 1)
        self.bn1 = _batch_norm(channels)
        self.conv2 = _conv(channels, channels, 3, stride)
        self.bn2 = _batch_norm(channels)
        self.conv3 = _conv(channels, c_out, 1)
        self.bn3 = _batch_norm(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(_conv(c_in, c_out, 1, stride), _batch_norm(c_out))


class ResNet(nn.Module):
    """ResNet v1 encoder without the classification layer: image (N, C, H, W) → representation y (N, out_dim).

    ``width`` multiplies every channel count, the stem's included (ResNet-50 2x has a 4096-d output).
    The paper uses widths 1..4; fractional widths (0.25 gives a 16-channel stem) make CPU-sized models.
    """

    def __init__(
        self,
        depth: int = 50,
        width: float = 1.0,
        stem: str = "imagenet",
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
        if stem not in STEMS:
            raise ValueError(f"ResNet stem must be one of {STEMS}, got {stem!r}")
        if width <= 0 or in_channels < 1:
            raise ValueError(f"width must be > 0 and in_channels >= 1, got {width} and {in_channels}")
        self.depth, self.width = depth, width
        base = max(1, round(64 * width))
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if depth < 50 else Bottleneck

        if stem == "imagenet":  # 7x7/2 convolution, then 3x3/2 max-pool
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False),
                _batch_norm(base),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:  # small images: 3x3/1 convolution, no pooling
            self.stem = nn.Sequential(_conv(in_channels, base, 3), _batch_norm(base), nn.ReLU(inplace=True))

        stages: list[nn.Module] = []
        c_in = base
        for index, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            channels = base * 2**index
            blocks: list[nn.Module] = []
            for b in range(num_blocks):
                stride = 2 if (index > 0 and b == 0) else 1
                blocks.append(block(c_in, channels, stride))
                c_in = channels * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_dim = c_in
        _init_released_code(self)
        if zero_init_residual:  # the released code's choice: each block starts as the identity
            for module in self.modules():
                if isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)
                elif isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)

    def feature_map(self, x: Tensor) -> Tensor:
        """The last stage's output before the pool: (N, out_dim, h, w), what dense tasks build on."""
        return self.stages(self.stem(x))

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.feature_map(x), 1), 1)


def dilate_last_stage(encoder: ResNet, dilation: int = 2) -> ResNet:
    """``encoder`` with its last stage at stride 1 and its 3x3 convolutions dilated (paper, appendix D.4: "the
    3x3 convolutions of conv5 use dilation 2 and stride 1"), changed in place and returned. Every 3x3
    convolution of the stage is dilated, its first (once strided) included, and its projection shortcut keeps
    stride 1. The weights are untouched, so the same state dict loads; the feature map's stride halves (16
    with the ImageNet stem, 4 with the cifar stem)."""
    last = encoder.stages[-1]
    for module in last.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)
    return encoder


class MLP(nn.Module):
    """The paper's projector / predictor: Linear → BN → ReLU → Linear, output not batch-normalised.

    As in the released code the hidden Linear layers have a bias and the last has none. ``depth`` counts the
    Linear layers (Table 14 varies it): 1 is a single linear map, 2 the paper's head, 3 adds a hidden layer.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth - 1):
            layers += [
                nn.Linear(width, hidden_dim),
                nn.BatchNorm1d(hidden_dim, eps=BN_EPS, momentum=BN_MOMENTUM),
                nn.ReLU(inplace=True),
            ]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim, bias=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim
        _init_released_code(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _init_released_code(module: nn.Module) -> None:
    """Haiku's default: truncated normal (±2σ) with variance 1/fan_in, corrected for the truncation."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class ViewOutputs:
    """What one view yields: representation y = f(v), projection z = g(y), prediction p = q(z)."""

    y: Tensor  # (N, encoder.out_dim)
    z: Tensor  # (N, projector.out_dim)
    p: Tensor  # (N, projector.out_dim); equals z when the predictor is disabled


class TargetNetwork(nn.Module):
    """Encoder f_ξ and projector g_ξ. Parameter names match those of :class:`OnlineNetwork`."""

    def __init__(self, encoder: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))


class OnlineNetwork(nn.Module):
    """Encoder f_θ, projector g_θ and predictor q_θ (``predictor=None`` removes q, an ablation of Table 5b)."""

    def __init__(self, encoder: ResNet, projector: MLP, predictor: MLP | None) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector
        self.predictor = predictor

    def forward(self, x: Tensor) -> ViewOutputs:
        y = self.encoder(x)
        z = self.projector(y)
        p = self.predictor(z) if self.predictor is not None else z
        return ViewOutputs(y=y, z=z, p=p)

    def make_target(self, copy_weights: bool = True) -> TargetNetwork:
        """A target network of the same architecture, excluded from autograd.

        ``copy_weights=True`` starts ξ = θ (what every PyTorch implementation does); ``False`` re-draws ξ from
        the same initialiser, as the released JAX code does (it initialises the target from another RNG key).
        """
        encoder, projector = copy.deepcopy(self.encoder), copy.deepcopy(self.projector)
        if not copy_weights:
            _init_released_code(encoder)
            _init_released_code(projector)
        target = TargetNetwork(encoder, projector)
        target.requires_grad_(False)
        return target


def build_encoder(m: ModelConfig, in_channels: int) -> ResNet:
    return ResNet(
        depth=m.depth, width=m.width, stem=m.stem, in_channels=in_channels, zero_init_residual=m.zero_init_residual
    )


def build_projector(m: ModelConfig, in_dim: int) -> MLP:
    """The projector g_θ that ``m`` describes, on an encoder of ``in_dim`` features."""
    return MLP(in_dim, hidden_dim=m.projector_hidden, out_dim=m.projection_dim, depth=m.projector_depth)


def build_online_network(m: ModelConfig, in_channels: int) -> OnlineNetwork:
    """The online network of the paper as ``m`` describes it; without a predictor unless ``m.predictor`` is mlp."""
    encoder = build_encoder(m, in_channels)
    projector = build_projector(m, encoder.out_dim)
    predictor = MLP(m.projection_dim, hidden_dim=m.predictor_hidden, out_dim=m.projection_dim, depth=m.predictor_depth)
    return OnlineNetwork(encoder, projector, predictor if m.predictor == "mlp" else None)


def input_channels(online_state: dict[str, Tensor]) -> int:
    """The image channels an online network's saved state takes: the width of its stem's first convolution."""
    return int(online_state["encoder.stem.0.weight"].shape[1])
