import math

import pytest
import torch
from torch import Tensor

from byol.loss import byol_loss, closed_form_predictor, l2_normalize, projection_std, regression_loss, unified_loss


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """Test oracle: SimCLR's NT-Xent over the 2N views, the mean over anchors of
    −ln(exp(s⁺/T) / Σ_{k≠anchor} exp(s_k/T))."""
    z = l2_normalize(torch.cat((z1, z2)))  # (2N, d)
    n = len(z1)
    logits = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    positives = torch.cat((torch.arange(n, 2 * n), torch.arange(0, n)))
    return torch.nn.functional.cross_entropy(logits, positives)


def test_regression_loss_equals_both_closed_forms():
    p, z = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    p_hat, z_hat = p / p.norm(dim=1, keepdim=True), z / z.norm(dim=1, keepdim=True)
    expected_mse = ((p_hat - z_hat) ** 2).sum(dim=1)
    expected_cos = 2 - 2 * torch.nn.functional.cosine_similarity(p, z, dim=1)
    torch.testing.assert_close(regression_loss(p, z), expected_mse)
    torch.testing.assert_close(regression_loss(p, z), expected_cos)


def test_loss_is_scale_invariant_and_bounded():
    p, z = torch.randn(8, 16), torch.randn(8, 16)
    torch.testing.assert_close(regression_loss(3.0 * p, 0.1 * z), regression_loss(p, z))
    assert torch.allclose(regression_loss(p, p), torch.zeros(8), atol=1e-6)
    assert torch.allclose(regression_loss(p, -p), torch.full((8,), 4.0))


def test_symmetric_loss_sums_the_two_view_orders_and_swaps_symmetrically():
    p1, p2, z1, z2 = (torch.randn(8, 16) for _ in range(4))
    total = byol_loss(p1, p2, z1, z2)
    torch.testing.assert_close(total, regression_loss(p1, z2).mean() + regression_loss(p2, z1).mean())
    torch.testing.assert_close(byol_loss(p2, p1, z2, z1), total)  # swapping the views
    # summed, not averaged: identical pairs of terms give twice one term
    torch.testing.assert_close(byol_loss(p1, p1, z2, z2), 2 * regression_loss(p1, z2).mean())


def test_no_gradient_reaches_the_target_side():
    p1, p2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    z1, z2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p1.grad.abs().sum() > 0
    assert z1.grad is None and z2.grad is None


def test_projection_std_is_inverse_sqrt_d_when_spread_and_zero_when_collapsed():
    d = 64
    spread = projection_std(torch.randn(4096, d))
    assert abs(spread.item() * d**0.5 - 1) < 0.05
    assert projection_std(torch.ones(16, d) + 1e-9 * torch.randn(16, d)).item() < 1e-6


def test_nt_xent_equals_a_hand_computed_value():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    t = 0.5
    views = torch.cat((z1, z2))
    views = views / views.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(4):
        positive = (i + 2) % 4
        denominator = sum(math.exp(float(views[i] @ views[k]) / t) for k in range(4) if k != i)
        total += -math.log(math.exp(float(views[i] @ views[positive]) / t) / denominator)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 4, rel=1e-6)
    # the same numbers written out for anchor 0: cos to z1[1] = 0, to z2[0] = 1/√2 (positive), to z2[1] = −1/√2
    r = 1 / math.sqrt(2)
    anchor0 = -math.log(math.exp(r / t) / (math.exp(0) + math.exp(r / t) + math.exp(-r / t)))
    assert anchor0 == pytest.approx(-math.log(math.exp(float(views[0] @ views[2]) / t) / sum(
        math.exp(float(views[0] @ views[k]) / t) for k in (1, 2, 3))))  # fmt: skip


def test_unified_objective_reduces_to_byol_and_to_simclr():
    p1, p2, z1, z2 = (torch.randn(6, 8, dtype=torch.float64) for _ in range(4))
    torch.testing.assert_close(unified_loss(p1, p2, z1, z2, beta=0.0), byol_loss(p1, p2, z1, z2))
    alpha = 0.3
    simclr = unified_loss(z1, z2, z1, z2, beta=1.0, alpha=alpha, stop_gradient=False)
    torch.testing.assert_close(simclr, 4 * alpha * nt_xent(z1, z2, alpha) + 4)


def test_loss_without_normalisation_is_the_squared_error():
    p1, p2, z1, z2 = (torch.randn(5, 4) for _ in range(4))
    expected = ((p1 - z2) ** 2).sum(1).mean() + ((p2 - z1) ** 2).sum(1).mean()
    torch.testing.assert_close(unified_loss(p1, p2, z1, z2, normalize=False), expected)


def test_closed_form_predictor_minimises_the_batch_regression_error():
    g = torch.Generator().manual_seed(0)
    z, target = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    ridge = 1e-4
    w = closed_form_predictor(z, target, ridge)
    lam = ridge * (z.T @ z).diagonal().mean()
    # a generic least-squares solve of the same ridge problem: [Z; √λ I] Wᵀ ≈ [Z'; 0]
    a = torch.cat((z, lam.sqrt() * torch.eye(8)))
    b = torch.cat((target, torch.zeros(8, 8)))
    torch.testing.assert_close(w.T, torch.linalg.lstsq(a, b).solution, atol=1e-4, rtol=1e-4)
    error = ((z @ w.T - target) ** 2).sum()
    for _ in range(5):  # any perturbation of W increases the error
        assert ((z @ (w + 0.01 * torch.randn(8, 8)).T - target) ** 2).sum() > error
