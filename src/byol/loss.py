"""BYOL's objective (paper, section 3.2, equation 2).

For one ordered pair of views the loss is the mean squared error between the ℓ2-normalised prediction and
the ℓ2-normalised target projection,

    L(p, z') = ‖p/‖p‖ − z'/‖z'‖‖² = 2 − 2·cos(p, z'),

with a stop-gradient on z'. The loss is symmetrised by feeding v' to the online network and v to the target
and the two terms are SUMMED (L_total = L + L~, paper eq. 2 and the released ``loss_fn``). Averaging them
instead halves the gradient; peers who did so lost 7–11 points of accuracy (SPEC §7).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

# Released code: l2_normalize(x, axis=-1, epsilon=1e-12) divides by sqrt(max(‖x‖², ε)).
_NORM_EPS = 1e-12


def l2_normalize(x: Tensor) -> Tensor:
    """x / ‖x‖ along the last axis, as the released code computes it."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=_NORM_EPS))


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """Per-sample 2 − 2·cos(p, z) = ‖p̂ − ẑ‖², shape (N,). No stop-gradient here: callers decide."""
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
