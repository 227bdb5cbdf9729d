import torch

from byol.loss import byol_loss, projection_std, regression_loss


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
