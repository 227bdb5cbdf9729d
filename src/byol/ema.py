"""The target network's exponential moving average (paper, section 3.2 and appendix A).

After each optimizer step, ξ ← τ·ξ + (1 − τ)·θ, with the cosine schedule

    τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2,

k the optimizer step and K the total number of optimizer steps (released ``target_ema``), so τ_0 = τ_base
and τ_K = 1. Under gradient accumulation k and K count optimizer steps, not micro-batches.

The ``constant`` schedule keeps τ_k = τ_base. The paper's τ ablations need it at τ_base = 0: "stop gradient of
online" (Table 5a) and "τ = 0 over the full training" (appendix I, Table 21) make the target the online network
at every step; the cosine schedule started at 0 would instead rise to a slow moving average (τ = 0.5 halfway,
0.85 at three quarters) and measure something else.

BN buffers: the EMA covers parameters only, as in the released code. The target keeps its own running
statistics, updated by its own forward passes; they are never used in training, because the target runs
with batch statistics (train mode), and only the online encoder is evaluated or exported.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TAU_SCHEDULES = ("cosine", "constant")


def target_ema(step: int, base_ema: float, max_steps: int, schedule: str = "cosine") -> float:
    """τ_k of the cosine schedule (steps past ``max_steps`` give τ = 1), or τ_base for ``constant``."""
    if not 0.0 <= base_ema <= 1.0:
        raise ValueError(f"base_ema must lie in [0, 1], got {base_ema}")
    if max_steps <= 0:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"unknown τ schedule {schedule!r}; valid schedules are: {', '.join(TAU_SCHEDULES)}")
    if schedule == "constant":
        return base_ema
    progress = min(max(step, 0), max_steps) / max_steps
    return 1.0 - (1.0 - base_ema) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """In place: ξ ← τ·ξ + (1 − τ)·θ for every target parameter, matched to the online one by name.

    τ = 1 leaves ξ untouched and τ = 0 copies θ exactly (``lerp`` with weight 1 returns its end point).
    """
    online_params = dict(online.named_parameters())
    xi: list[torch.Tensor] = []
    theta: list[torch.Tensor] = []
    for name, param in target.named_parameters():
        if name not in online_params:
            raise KeyError(f"target parameter {name!r} has no online counterpart")
        xi.append(param)
        theta.append(online_params[name].detach())
    if tau == 1.0:
        return
    torch._foreach_lerp_(xi, theta, 1.0 - tau)
