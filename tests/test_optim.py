import subprocess
import sys

import pytest
import torch
from torch import nn

from byol.optim import LARS, SGD, is_excluded_from_lars, lars_param_groups

ETA, MOMENTUM, WD, LR = 1e-3, 0.9, 0.5, 0.1


def _model():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0, 2.0], [0.0, 3.0, 4.0]]))
        model[0].bias.copy_(torch.tensor([0.5, -0.5]))
    return model


def _set_grads(model, scale=1.0):
    for p in model.parameters():
        p.grad = torch.full_like(p, scale) + torch.arange(p.numel(), dtype=p.dtype).view_as(p) * 0.1


def test_exclusion_rule_names_biases_and_norm_parameters():
    model = _model()
    groups = lars_param_groups(model, WD)
    excluded = [g for g in groups if not g["lars_adaptation"]]
    assert len(excluded) == 1 and excluded[0]["weight_decay"] == 0.0
    assert {id(p) for p in excluded[0]["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
    }
    assert is_excluded_from_lars(model[1], "weight") and not is_excluded_from_lars(model[0], "weight")


def test_two_lars_steps_equal_the_formula():
    model = _model()
    opt = LARS(lars_param_groups(model, WD), lr=LR, momentum=MOMENTUM, eta=ETA)
    w0 = model[0].weight.detach().clone()
    b0 = model[0].bias.detach().clone()
    mu_w, mu_b = torch.zeros_like(w0), torch.zeros_like(b0)
    w, b = w0, b0
    for scale in (1.0, -2.0):
        _set_grads(model, scale)
        g_w, g_b = model[0].weight.grad.clone(), model[0].bias.grad.clone()
        opt.step()
        u = g_w + WD * w
        trust = ETA * w.norm() / u.norm()
        mu_w = MOMENTUM * mu_w + trust * u
        w = w - LR * mu_w
        mu_b = MOMENTUM * mu_b + g_b  # excluded: plain momentum SGD, no decay, no trust ratio
        b = b - LR * mu_b
        torch.testing.assert_close(model[0].weight.detach(), w)
        torch.testing.assert_close(model[0].bias.detach(), b)


def test_zero_norm_weight_uses_trust_one():
    model = _model()
    with torch.no_grad():
        model[0].weight.zero_()
    opt = LARS(lars_param_groups(model, WD), lr=LR, momentum=MOMENTUM, eta=ETA)
    _set_grads(model)
    g = model[0].weight.grad.clone()
    opt.step()
    torch.testing.assert_close(model[0].weight.detach(), -LR * g)  # u = g (w = 0), trust = 1


@pytest.mark.parametrize("exclude", [True, False])
def test_without_the_trust_ratio_it_is_torch_sgd(exclude):
    """optim.optimizer sgd: momentum SGD with coupled weight decay, on every parameter when nothing is
    excluded (the peers' CIFAR-10 recipe) or, as for LARS, not on biases and BN γ/β."""
    model, reference = _model(), _model()
    opt = LARS(lars_param_groups(model, WD, adaptation=False, exclude=exclude), lr=LR, momentum=MOMENTUM, eta=ETA)
    decayed = [reference[0].weight] if exclude else list(reference.parameters())
    others = [p for p in reference.parameters() if all(p is not q for q in decayed)]
    groups = [{"params": decayed, "weight_decay": WD}, *([{"params": others, "weight_decay": 0.0}] if others else [])]
    torch_sgd = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM)
    for scale in (1.0, -2.0, 0.5):
        _set_grads(model, scale)
        _set_grads(reference, scale)
        opt.step()
        torch_sgd.step()
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q)


def test_lr_scale_groups_for_a_named_submodule():
    model = nn.ModuleDict({"predictor": nn.Linear(2, 2), "encoder": nn.Linear(2, 2)})
    groups = lars_param_groups(model, WD, {"predictor": 10.0})
    scaled = [g for g in groups if g["lr_scale"] == 10.0]
    assert {id(p) for g in scaled for p in g["params"]} == {id(p) for p in model["predictor"].parameters()}


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        LARS(_model().parameters(), momentum=1.5)


@pytest.mark.parametrize(
    "options", [{"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, {"momentum": 0.9}, {"weight_decay": 0.5}]
)
def test_sgd_takes_torchs_sgd_steps_bit_for_bit(options):
    """The evaluations' SGD (torch's, without the wrappers that import torch._dynamo) against torch.optim.SGD: the
    same parameters after 4 steps, a learning rate changed between them, and the same state_dict."""
    ours, theirs = _model(), _model()
    theirs.load_state_dict(ours.state_dict())
    a, b = SGD(ours.parameters(), lr=LR, **options), torch.optim.SGD(theirs.parameters(), lr=LR, **options)
    for step in range(4):
        for model, optimizer in ((ours, a), (theirs, b)):
            for group in optimizer.param_groups:
                group["lr"] = LR / (step + 1)
            optimizer.zero_grad()
            _set_grads(model, scale=step + 1.0)
            optimizer.step()
    for (name, x), y in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    saved, expected = a.state_dict(), b.state_dict()
    assert saved["param_groups"] == expected["param_groups"]
    for index, state in expected["state"].items():
        assert torch.equal(saved["state"][index]["momentum_buffer"], state["momentum_buffer"])


_DYNAMO_PROBE = """
import sys, torch
from torch import nn
from byol.optim import LARS, lars_param_groups
from byol.evaluate.common import fit_classifier
model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
optimizer = LARS(lars_param_groups(model, 1e-6), lr=0.1)
model(torch.randn(4, 3)).square().sum().backward()
optimizer.step()
optimizer.load_state_dict(optimizer.state_dict())
optimizer.zero_grad()
assert all(p.grad is None for p in model.parameters())
batch = (torch.randn(8, 3), torch.arange(8) % 2)  # the evaluations' optimizer (linear, fine-tuning)
fit_classifier(nn.Linear(3, 2), lambda epoch: iter([batch]), steps_per_epoch=1, epochs=2, lr=0.1, weight_decay=1e-4)
print("torch._dynamo" in sys.modules)
"""


def test_lars_and_the_evaluations_sgd_work_without_importing_torch_dynamo():
    # torch's wrappers on Optimizer methods import torch._dynamo on first use, 1.7 s of a run's start-up on a CPU
    result = subprocess.run([sys.executable, "-c", _DYNAMO_PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr


def test_lars_state_dict_round_trips_in_torchs_format():
    model = _model()
    optimizer = LARS(lars_param_groups(model, WD), lr=LR)
    _set_grads(model)
    optimizer.step()
    saved = optimizer.state_dict()
    assert set(saved) == {"state", "param_groups"} and all("momentum_buffer" in s for s in saved["state"].values())
    other = LARS(lars_param_groups(_model(), WD), lr=LR)
    other.load_state_dict(saved)
    reloaded = other.state_dict()
    assert reloaded["param_groups"] == saved["param_groups"]
    for index, state in saved["state"].items():
        assert torch.equal(reloaded["state"][index]["momentum_buffer"], state["momentum_buffer"])
