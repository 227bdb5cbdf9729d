"""LARS (You et al. 2017) exactly as BYOL's released code applies it (``optimizers.py``; SPEC §4).

For each parameter w with gradient g, in this order:

    u     = g + wd·w                                  weight decay enters before the trust ratio
    trust = η·‖w‖/‖u‖,   or 1 when ‖w‖ = 0 or ‖u‖ = 0    layer-wise adaptation
    μ     ← m·μ + trust·u                              momentum on the adapted update (no dampening)
    w     ← w − lr·μ                                   the learning rate multiplies the momentum buffer

with η = 1e-3 and m = 0.9, no Nesterov. Parameters excluded by :func:`is_excluded_from_lars` (biases and
normalisation γ/β) skip BOTH the weight decay and the trust ratio: for them the step is plain momentum SGD,
μ ← m·μ + g, w ← w − lr·μ.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_excluded_from_lars(module: nn.Module, param_name: str) -> bool:
    """The released code's rule: biases (``path[-1] == 'b'``) and normalisation-layer parameters."""
    return param_name == "bias" or isinstance(module, _NORM_LAYERS)


def lars_param_groups(
    model: nn.Module,
    weight_decay: float,
    lr_scales: Mapping[str, float] | None = None,
    adaptation: bool = True,
    exclude: bool = True,
) -> list[dict[str, Any]]:
    """Parameter groups for :class:`LARS`: excluded parameters get no weight decay and no adaptation.

    ``lr_scales`` maps a sub-module prefix (``"predictor"``) to a learning-rate multiplier (paper App. I).
    Each group carries ``lr_scale``; the training loop sets ``lr = lr_scale · schedule(step)``.
    ``adaptation=False`` drops the trust ratio everywhere (momentum SGD); ``exclude=False`` excludes nothing.
    """
    scales = dict(lr_scales or {})
    groups: dict[tuple[bool, float], list[Tensor]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            scale = next((s for prefix, s in scales.items() if full_name.startswith(prefix + ".")), 1.0)
            excluded = exclude and is_excluded_from_lars(module, param_name)
            groups.setdefault((excluded, scale), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if excluded else weight_decay,
            "lars_adaptation": adaptation and not excluded,
            "lr_scale": scale,
        }
        for (excluded, scale), params in sorted(groups.items())
    ]


def _plain(name: str) -> Any:
    """``torch.optim.Optimizer.<name>`` without the ``torch._disable_dynamo`` wrapper torch puts on it."""
    method = getattr(torch.optim.Optimizer, name)
    return getattr(method, "__wrapped__", method)


class SGD(torch.optim.SGD):
    """torch's SGD, its own update, without the ``torch._disable_dynamo`` wrappers torch puts on an optimizer's
    methods (as :class:`LARS`): the evaluations' optimizer (linear, fine-tuning, segmentation) then costs no 1.5 s
    import of torch._dynamo in a command that never compiles it. Updates are torch.optim.SGD's, bit for bit."""

    zero_grad = _plain("zero_grad")
    add_param_group = _plain("add_param_group")
    state_dict = _plain("state_dict")
    load_state_dict = _plain("load_state_dict")
    step = torch.no_grad()(getattr(torch.optim.SGD.step, "__wrapped__", torch.optim.SGD.step))


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling with the update order of the module docstring.

    Group options: ``lr``, ``weight_decay``, ``momentum``, ``eta`` and ``lars_adaptation`` (False for the
    excluded parameters, which also get weight_decay 0 from :func:`lars_param_groups`).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        eta: float = 1e-3,
    ) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or eta <= 0:
            raise ValueError(
                f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and eta > 0; "
                f"got lr={lr}, weight_decay={weight_decay}, momentum={momentum}, eta={eta}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "eta": eta,
            "lars_adaptation": True,
            "lr_scale": 1.0,
        }
        super().__init__(params, defaults)

    # torch wraps these four in torch._disable_dynamo, whose first call imports torch._dynamo: 1.7 of the 2.5 s
    # before a CPU run's first step. The plain methods do the same work; only compiled code calling them
    # would trace them instead of breaking the graph (the runs compile the forward passes, never the optimizer).
    zero_grad = _plain("zero_grad")
    add_param_group = _plain("add_param_group")
    state_dict = _plain("state_dict")
    load_state_dict = _plain("load_state_dict")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates: list[Tensor] | tuple[Tensor, ...] = [p.grad for p in params]
            if group["weight_decay"] != 0.0:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            if group["lars_adaptation"]:
                w = torch.stack(torch._foreach_norm(params))  # one vector of norms: a few kernels per group,
                u = torch.stack(torch._foreach_norm(updates))  # not a few per parameter
                trust = torch.where((w > 0) & (u > 0), group["eta"] * w / u, 1.0)
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffers.append(state["momentum_buffer"])
            torch._foreach_mul_(buffers, group["momentum"])
            torch._foreach_add_(buffers, updates)
            torch._foreach_add_(params, buffers, alpha=-group["lr"])
        return loss
