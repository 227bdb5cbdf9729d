from dataclasses import replace

import pytest
import torch
from torch import nn

from byol.config import ModelConfig
from byol.networks import BN_EPS, BN_MOMENTUM, MLP, ResNet, build_online_network


@pytest.mark.parametrize(
    ("depth", "width", "paper"),
    [(50, 1, 23.5e6), (50, 2, 94e6), (50, 4, 375e6), (200, 2, 250e6)],
)
def test_encoder_parameter_counts_match_the_paper(depth, width, paper):
    with torch.device("meta"):
        encoder = ResNet(depth, width)
    assert abs(sum(p.numel() for p in encoder.parameters()) / paper - 1) < 0.02


@pytest.mark.parametrize(("depth", "dim"), [(18, 512), (34, 512), (50, 2048), (101, 2048), (152, 2048)])
def test_representation_dimension(depth, dim):
    with torch.device("meta"):
        assert ResNet(depth, 1.0).out_dim == dim
        assert ResNet(depth, 2.0).out_dim == 2 * dim


def test_stems_and_input_channels():
    cifar = ResNet(18, 0.125, "cifar", in_channels=1)
    assert cifar(torch.rand(2, 1, 28, 28)).shape == (2, 64)
    imagenet = ResNet(18, 0.125, "imagenet", in_channels=3)
    assert isinstance(imagenet.stem[-1], nn.MaxPool2d) and imagenet.stem[0].stride == (2, 2)
    assert imagenet(torch.rand(2, 3, 64, 64)).shape == (2, 64)
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.stem)


def test_batch_norm_hyperparameters_and_post_activation():
    encoder = ResNet(18, 0.125, "cifar")
    norms = [m for m in encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.momentum == BN_MOMENTUM == 0.1 and m.eps == BN_EPS == 1e-5 for m in norms)
    # v1 (post-activation): the block output is a ReLU, so it is never negative.
    out = encoder.stages[0][0](torch.randn(4, 8, 8, 8))
    assert (out >= 0).all()


def test_zero_init_residual_zeroes_the_last_bn_of_each_block():
    encoder = ResNet(50, 0.125, zero_init_residual=True)
    block = encoder.stages[0][0]
    assert torch.all(block.bn3.weight == 0) and torch.all(block.bn1.weight == 1)


def test_mlp_head_is_linear_bn_relu_linear_without_output_bn():
    head = MLP(32, 64, 16)
    kinds = [type(m) for m in head.net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head.net[0].bias is not None and head.net[3].bias is None


SMALL = ModelConfig(depth=18, width=0.125, stem="cifar", projector_hidden=32, projection_dim=16, predictor_hidden=32)


def test_online_and_target_share_parameter_names():
    online = build_online_network(SMALL, in_channels=3)
    target = online.make_target()
    online_names = dict(online.named_parameters())
    for name, param in target.named_parameters():
        assert torch.equal(param, online_names[name])
        assert not param.requires_grad
    random_target = online.make_target(copy_weights=False)
    assert not torch.equal(random_target.encoder.stem[0].weight, online.encoder.stem[0].weight)


def test_without_predictor_the_prediction_is_the_projection():
    online = build_online_network(replace(SMALL, predictor="none"), in_channels=3)
    out = online.eval()(torch.rand(2, 3, 16, 16))
    assert out.p is out.z


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="depth"):
        ResNet(42)
    with pytest.raises(ValueError, match="stem"):
        ResNet(18, stem="tiny")


def test_mlp_depth_counts_linear_layers():
    assert [type(m) for m in MLP(8, 16, 4, depth=1).net] == [nn.Linear]
    assert sum(isinstance(m, nn.Linear) for m in MLP(8, 16, 4, depth=3).net) == 3
