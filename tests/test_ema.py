import itertools
import math

import pytest
import torch

from byol.config import ModelConfig
from byol.ema import target_ema, update_target
from byol.networks import build_online_network


def test_tau_schedule_closed_form():
    assert target_ema(0, 0.996, 1000) == 0.996
    assert target_ema(1000, 0.996, 1000) == 1.0
    assert target_ema(500, 0.996, 1000) == pytest.approx(1 - 0.004 * 0.5)
    k, big_k = 250, 1000
    assert target_ema(k, 0.99, big_k) == pytest.approx(1 - 0.01 * (math.cos(math.pi * k / big_k) + 1) / 2)
    assert target_ema(2000, 0.99, 1000) == 1.0  # past the end it stays at 1
    taus = [target_ema(k, 0.9, 100) for k in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(taus))


def test_constant_schedule_keeps_tau_base_at_every_step():
    assert [target_ema(k, 0.0, 100, "constant") for k in (0, 1, 50, 99, 100, 200)] == [0.0] * 6
    assert [target_ema(k, 0.99, 100, "constant") for k in (0, 50, 100)] == [0.99] * 3
    # the cosine schedule from τ_base = 0 is not the stop-gradient of online: it is 0.5 halfway, then → 1
    assert target_ema(50, 0.0, 100) == pytest.approx(0.5) and target_ema(100, 0.0, 100) == 1.0


def test_tau_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError):
        target_ema(0, 1.5, 10)
    with pytest.raises(ValueError):
        target_ema(0, 0.9, 0)
    with pytest.raises(ValueError, match="valid schedules are: cosine, constant"):
        target_ema(0, 0.9, 10, "linear")


SMALL = ModelConfig(depth=18, width=0.125, stem="cifar", projector_hidden=16, projection_dim=8, predictor_hidden=16)


def _pair():
    online = build_online_network(SMALL, in_channels=3)
    target = online.make_target(copy_weights=False)
    return online, target


def test_update_is_the_convex_combination_of_parameters():
    online, target = _pair()
    before = {n: p.clone() for n, p in target.named_parameters()}
    theta = dict(online.named_parameters())
    update_target(target, online, 0.9)
    for name, param in target.named_parameters():
        torch.testing.assert_close(param, 0.9 * before[name] + 0.1 * theta[name])


def test_tau_one_leaves_target_and_tau_zero_copies_online():
    online, target = _pair()
    before = {n: p.clone() for n, p in target.named_parameters()}
    update_target(target, online, 1.0)
    assert all(torch.equal(p, before[n]) for n, p in target.named_parameters())
    update_target(target, online, 0.0)
    theta = dict(online.named_parameters())
    assert all(torch.equal(p, theta[n]) for n, p in target.named_parameters())


def test_bn_buffers_are_not_averaged():
    online, target = _pair()
    online.train()(torch.rand(8, 3, 16, 16))  # moves the online running statistics only
    before = {n: b.clone() for n, b in target.named_buffers()}
    update_target(target, online, 0.5)
    assert all(torch.equal(b, before[n]) for n, b in target.named_buffers())
