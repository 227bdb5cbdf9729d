import pytest
import torch
from torch import nn

import byol.train as train_module
from byol.config import apply_overrides, get_preset, validate
from byol.ema import target_ema
from byol.errors import ConfigError
from byol.networks import MLP
from byol.train import Schedule, create_state, train_step

SCHEDULE = Schedule(max_steps=10, warmup_steps=0, steps_per_epoch=5, batch_size=16, base_lr=0.5, base_ema=0.9)


def _batch(n=16):
    return torch.randn(n, 3, 16, 16), torch.randn(n, 3, 16, 16), torch.arange(n) % 4


def test_accumulation_updates_the_target_once_every_n_micro_steps(monkeypatch):
    config = apply_overrides(get_preset("tiny"), {"optim.accumulation_steps": "4", "optim.batch_size": "16"})
    state = create_state(validate(config), 3, 4, torch.device("cpu"))
    micro_batches, updates = [], []
    state.online.encoder.register_forward_hook(lambda m, i, o: micro_batches.append(i[0].shape[0]))
    real_update = train_module.update_target
    monkeypatch.setattr(train_module, "update_target", lambda t, o, tau: (updates.append(tau), real_update(t, o, tau)))
    for step in range(3):
        metrics = train_step(state, *_batch(), SCHEDULE)
        assert metrics["tau"] == target_ema(step, 0.9, 10)  # τ counts optimizer steps, not micro-batches
    assert micro_batches == [4] * 24  # 3 steps × 4 micro-batches × 2 views, each view its own BN batch of 4
    assert updates == [target_ema(k, 0.9, 10) for k in range(3)] and state.step == 3


@pytest.mark.parametrize(("schedule", "stop_gradient_of_online"), [("constant", True), ("cosine", False)])
def test_tau_base_zero_makes_the_target_the_online_network_only_with_the_constant_schedule(
    schedule, stop_gradient_of_online
):
    """Table 5a's τ_base = 0 row: after every step ξ = θ, so each step regresses onto stop-gradient(online)."""
    config = validate(apply_overrides(get_preset("tiny"), {"target.base_ema": "0", "target.schedule": schedule}))
    state = create_state(config, 3, 4, torch.device("cpu"))
    steps = Schedule.create(config, steps_per_epoch=5)
    equal_after_step = []
    for _ in range(3):
        train_step(state, *_batch(), steps)
        target = dict(state.target.named_parameters())
        equal_after_step.append(
            all(torch.equal(p, target[n]) for n, p in state.online.named_parameters() if n in target)
        )
    # step 0 has τ = 0 under both schedules; afterwards only the constant schedule keeps copying θ
    assert equal_after_step == [True, stop_gradient_of_online, stop_gradient_of_online]


def test_accumulated_gradient_is_the_mean_of_the_micro_batch_gradients():
    config = apply_overrides(get_preset("tiny"), {"optim.accumulation_steps": "2", "train.online_probe": "false"})
    state = create_state(config, 3, 4, torch.device("cpu"))
    v1, v2, y = _batch()
    grads = []
    for half in (slice(0, 8), slice(8, 16)):
        state.online.zero_grad()
        train_module._loss(state, v1[half], v2[half])[0].backward()
        grads.append(state.online.encoder.stem[0].weight.grad.clone())
    state.optimizer.step = lambda: None  # keep θ to read the accumulated gradient
    train_step(state, v1, v2, y, SCHEDULE)
    torch.testing.assert_close(state.online.encoder.stem[0].weight.grad, (grads[0] + grads[1]) / 2)


@pytest.mark.parametrize(
    ("overrides", "has_target", "has_predictor"),
    [
        ({"target.network": "online-sg"}, False, True),
        ({"target.network": "online", "model.predictor": "none", "loss.beta": "1"}, False, False),
        ({"model.predictor": "closed-form", "target.base_ema": "0"}, True, False),
        ({"model.predictor_depth": "3", "model.projector_depth": "1"}, True, True),
    ],
)
def test_ablation_switches_build_and_train(overrides, has_target, has_predictor):
    config = validate(apply_overrides(get_preset("tiny"), overrides))
    state = create_state(config, 3, 4, torch.device("cpu"))
    assert (state.target is not None) == has_target and (state.online.predictor is not None) == has_predictor
    metrics = train_step(state, *_batch(), SCHEDULE)
    assert torch.isfinite(metrics["byol_loss"])


def test_without_stop_gradient_the_target_side_gets_gradients():
    grads = {}
    for network in ("online-sg", "online"):
        config = apply_overrides(get_preset("tiny"), {"target.network": network, "train.online_probe": "false"})
        state = create_state(config, 3, 4, torch.device("cpu"))
        train_module._loss(state, *_batch()[:2])[0].backward()
        grads[network] = state.online.projector.net[0].weight.grad.clone()
    assert not torch.allclose(grads["online-sg"], grads["online"])


def test_mlp_depth_counts_linear_layers():
    assert [type(m) for m in MLP(8, 16, 4, depth=1).net] == [nn.Linear]
    assert sum(isinstance(m, nn.Linear) for m in MLP(8, 16, 4, depth=3).net) == 3


def test_batch_not_divisible_by_accumulation_is_refused():
    with pytest.raises(ConfigError, match=r"optim\.batch_size"):
        validate(apply_overrides(get_preset("tiny"), {"optim.accumulation_steps": "5"}))
