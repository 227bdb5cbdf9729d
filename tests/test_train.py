import pytest
import torch
from torch import nn

from byol.config import apply_overrides, get_preset
from byol.errors import TrainingError
from byol.train import Schedule, create_state, train_step

SCHEDULE = Schedule(max_steps=10, warmup_steps=0, steps_per_epoch=5, batch_size=8, base_lr=0.5, base_ema=0.9)


def _state():
    return create_state(get_preset("tiny"), 3, 4, torch.device("cpu"))


def _views():
    return torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), torch.arange(8) % 4


def test_each_view_is_its_own_bn_batch_and_target_runs_in_train_mode():
    state = _state()
    sizes = []
    state.online.encoder.stem[1].register_forward_hook(lambda m, i, o: sizes.append((m.training, i[0].shape[0])))
    target_bn = state.target.encoder.stem[1]
    before = target_bn.running_mean.clone()
    train_step(state, *_views(), SCHEDULE)
    assert sizes == [(True, 8), (True, 8)]  # two separate batches of 8, never one of 16
    assert not torch.equal(target_bn.running_mean, before)  # batch statistics → running stats move


def test_no_gradient_reaches_the_target_and_ema_follows_the_optimizer_step():
    state = _state()
    xi0 = {n: p.clone() for n, p in state.target.named_parameters()}
    metrics = train_step(state, *_views(), SCHEDULE)
    assert metrics["tau"] == 0.9 and state.step == 1
    theta1 = dict(state.online.named_parameters())
    for name, param in state.target.named_parameters():
        assert param.grad is None and not param.requires_grad
        torch.testing.assert_close(param, 0.9 * xi0[name] + 0.1 * theta1[name].detach())


def test_online_probe_learns_from_stop_gradient_features_only():
    state = _state()
    v1, v2, labels = _views()
    grads = []
    state.online.encoder.stem[0].weight.register_hook(lambda g: grads.append(g.clone()))
    train_step(state, v1, v2, labels, SCHEDULE)
    with_probe = grads[-1]
    state2 = create_state(
        apply_overrides(get_preset("tiny"), {"train.online_probe": "false"}), 3, 4, torch.device("cpu")
    )
    assert state2.probe is None
    state2.online.encoder.stem[0].weight.register_hook(lambda g: grads.append(g.clone()))
    train_step(state2, v1, v2, labels, SCHEDULE)
    torch.testing.assert_close(with_probe, grads[-1])  # the probe adds no gradient to the encoder
    assert state.probe is not None and state.probe.weight.grad is not None  # while the probe itself learns


def test_non_finite_loss_stops_before_any_update():
    state = _state()
    before = {n: p.clone() for n, p in state.online.named_parameters()}
    v1, v2, labels = _views()
    v1[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="step 0"):
        train_step(state, v1, v2, labels, SCHEDULE)
    assert all(torch.equal(p, before[n]) for n, p in state.online.named_parameters())
    assert state.step == 0


def test_predictor_lr_scale_reaches_the_optimizer():
    config = apply_overrides(get_preset("tiny"), {"optim.predictor_lr_scale": "10"})
    state = create_state(config, 3, 4, torch.device("cpu"))
    train_step(state, *_views(), SCHEDULE)
    lrs = {g["lr_scale"]: g["lr"] for g in state.optimizer.param_groups}
    assert lrs[10.0] == pytest.approx(10 * lrs[1.0])


def test_schedule_counts_epochs_in_optimizer_steps():
    config = apply_overrides(get_preset("tiny"), {"train.epochs": "3", "optim.warmup_epochs": "0.5"})
    s = Schedule.create(config, steps_per_epoch=8)
    assert (s.max_steps, s.warmup_steps) == (24, 4)
    assert isinstance(_state().probe, nn.Linear)


@pytest.mark.slow
def test_compiled_step_matches_the_eager_step():
    compiled_config = apply_overrides(get_preset("tiny"), {"train.compile": "true"})
    eager, compiled = _state(), create_state(compiled_config, 3, 4, torch.device("cpu"))
    batch = _views()
    for _ in range(2):
        a = train_step(eager, *batch, SCHEDULE)
        b = train_step(compiled, *batch, SCHEDULE)
        assert abs(a["byol_loss"].item() - b["byol_loss"].item()) < 1e-4
