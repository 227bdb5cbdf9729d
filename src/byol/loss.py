"""BYOL's objective (paper, section 3.2, equation 2).

For one ordered pair of views the loss is the mean squared error between the ℓ2-normalised prediction and
the ℓ2-normalised target projection,

    L(p, z') = ‖p/‖p‖ − z'/‖z'‖‖² = 2 − 2·cos(p, z'),

with a stop-gradient on z'. The loss is symmetrised by feeding v' to the online network and v to the target
and the two terms are SUMMED (L_total = L + L~, paper eq. 2 and the released ``loss_fn``). Averaging them
instead halves the gradient; peers who did so lost 7–11 points of accuracy (SPEC §7).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

# Released code: l2_normalize(x, axis=-1, epsilon=1e-12) divides by sqrt(max(‖x‖², ε)).
_NORM_EPS = 1e-12


def l2_normalize(x: Tensor) -> Tensor:
    """x / ‖x‖ along the last axis, as the released code computes it."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=_NORM_EPS))


def regression_loss(p: Tensor, z: Tensor, normalize: bool = True) -> Tensor:
    """Per-sample 2 − 2·cos(p, z) = ‖p̂ − ẑ‖², shape (N,). No stop-gradient here: callers decide.

    ``normalize=False`` is the ablation of appendix F.6: the plain squared error ‖p − z‖².
    """
    if not normalize:
        return ((p - z) ** 2).sum(dim=-1)
    return 2.0 - 2.0 * (l2_normalize(p) * l2_normalize(z)).sum(dim=-1)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """Symmetric BYOL loss: mean L(p1, sg(z2)) + mean L(p2, sg(z1)), the two terms summed.

    p1, p2: online predictions of views 1 and 2; z1, z2: target projections of views 1 and 2.
    The target side is detached here, so no gradient can reach the target network.
    """
    return regression_loss(p1, z2.detach()).mean() + regression_loss(p2, z1.detach()).mean()


def projection_std(z: Tensor) -> Tensor:
    """Collapse monitor: the std over the batch of the ℓ2-normalised projections, averaged over dimensions.

    ≈ 1/√d for well-spread projections, → 0 when every image maps to the same point (SimSiam, section 4.1).
    """
    return F.normalize(z.detach().float(), dim=-1).std(dim=0).mean()


def collapse_floor(dim: int) -> float:
    """0.1/√d: a projection std (:func:`projection_std`) below a tenth of the healthy 1/√d counts as collapse."""
    return 0.1 / math.sqrt(dim)


def _contrastive_log_sum_exp(p: Tensor, z_other: Tensor, z_same: Tensor, alpha: float) -> Tensor:
    """Per-sample ln(Σ_j exp(S(v_i, v'_j)/α) + Σ_{j≠i} exp(S(v_i, v_j)/α)), S the cosine of p and z."""
    p_hat, other_hat, same_hat = l2_normalize(p), l2_normalize(z_other), l2_normalize(z_same)
    to_other = p_hat @ other_hat.T / alpha  # (N, N): every view' of the batch, the positive included
    to_same = p_hat @ same_hat.T / alpha  # (N, N): the other images' same-side view
    to_same = to_same.masked_fill(torch.eye(len(p), dtype=torch.bool, device=p.device), float("-inf"))
    return torch.logsumexp(torch.cat((to_other, to_same), dim=1), dim=1)


def unified_loss(
    p1: Tensor,
    p2: Tensor,
    z1: Tensor,
    z2: Tensor,
    beta: float = 0.0,
    alpha: float = 0.1,
    normalize: bool = True,
    stop_gradient: bool = True,
) -> Tensor:
    """The objective of paper section 5 / appendix F.4, symmetrised like the BYOL loss.

    Per view order: mean(2 − 2·S(v_i, v'_i)) + β·2α·mean(ln Σ_j exp(S(v_i, v'_j)/α) + Σ_{j≠i} exp(S(v_i, v_j)/α)),
    which is −InfoNCE_{α,β} of equation 8 up to an additive constant. β = 0 is exactly :func:`byol_loss`;
    with β = 1, no predictor and no target network (p = z, no stop-gradient) it equals 4α times SimCLR's NT-Xent
    over the 2N views plus 4. ``stop_gradient=False`` lets gradients reach z (the no-target-network rows).
    """
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    loss = regression_loss(p1, z2, normalize).mean() + regression_loss(p2, z1, normalize).mean()
    if beta != 0.0:
        contrastive = (
            _contrastive_log_sum_exp(p1, z2, z1, alpha).mean() + _contrastive_log_sum_exp(p2, z1, z2, alpha).mean()
        )
        loss = loss + beta * 2.0 * alpha * contrastive
    return loss


def closed_form_predictor(z: Tensor, target: Tensor, ridge: float = 1e-4) -> Tensor:
    """The optimal linear predictor of appendix I.2 on one batch: W = argmin Σ_i ‖W z_i − z'_i‖² + λ‖W‖².

    Solved as (ZᵀZ + λI) Wᵀ = Zᵀ Z', λ = ridge · mean(diag ZᵀZ) so it is defined when the batch is smaller than
    the dimension. Returns W (d, d); computed without gradient (the predictor is not learned).
    """
    with torch.no_grad():
        z, target = z.float(), target.float()
        gram = z.T @ z
        lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
        eye = torch.eye(gram.shape[0], device=z.device)
        return torch.linalg.solve(gram + lam * eye, z.T @ target).T
