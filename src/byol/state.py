"""What a training step works on: the run's state (networks, optimizer, step, augmentation RNG) and its constants
(the schedules in optimizer steps, the objective with the paper's ablations). ``byol.train`` steps it, a checkpoint
stores :meth:`TrainState.state_dict`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from byol.config import Config
from byol.errors import CheckpointError, first_line
from byol.networks import OnlineNetwork, TargetNetwork, ViewOutputs
from byol.optim import LARS
from byol.precision import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """Everything the step needs from the config and the dataset size, counted in optimizer steps."""

    max_steps: int
    warmup_steps: int
    steps_per_epoch: int
    batch_size: int
    base_lr: float
    base_ema: float
    tau_schedule: str = "cosine"

    @classmethod
    def create(cls, config: Config, steps_per_epoch: int) -> Schedule:
        max_steps = config.train.max_steps or max(1, round(config.train.epochs * steps_per_epoch))
        warmup = min(max_steps, round(config.optim.warmup_epochs * steps_per_epoch))
        return cls(
            max_steps=max_steps,
            warmup_steps=warmup,
            steps_per_epoch=steps_per_epoch,
            batch_size=config.optim.batch_size,
            base_lr=config.optim.base_lr,
            base_ema=config.target.base_ema,
            tau_schedule=config.target.schedule,
        )


@dataclass(frozen=True)
class Objective:
    """What a step optimises. The defaults are BYOL; the rest are the paper's ablations.

    target_network: ema | online-sg | online (section 5, appendix F.4); predictor: mlp | none | closed-form
    (appendix I.2); beta, temperature: the unified objective's negative-pairs weight and temperature;
    normalize: the ℓ2 normalisation of the regression loss (appendix F.6); accumulation_steps: micro-batches
    per optimizer step (Table 16).
    """

    target_network: str = "ema"
    predictor: str = "mlp"
    beta: float = 0.0
    temperature: float = 0.1
    normalize: bool = True
    accumulation_steps: int = 1

    @classmethod
    def from_config(cls, config: Config) -> Objective:
        loss = config.loss
        return cls(
            target_network=config.target.network,
            predictor=config.model.predictor,
            beta=loss.beta,
            temperature=loss.temperature,
            normalize=loss.normalize,
            accumulation_steps=config.optim.accumulation_steps,
        )


class SiameseForward(nn.Module):
    """Both views through the online network (each its own BN batch) and the online probe on stop-gradient y,
    in ONE forward call: DistributedDataParallel wraps this module and expects one forward per backward."""

    def __init__(self, online: OnlineNetwork, probe: nn.Linear | None) -> None:
        super().__init__()
        self.online = online
        self.probe = probe

    def forward(self, view1: Tensor, view2: Tensor) -> tuple[ViewOutputs, ViewOutputs, Tensor | None]:
        online1, online2 = self.online(view1), self.online(view2)
        logits = self.probe(online1.y.detach()) if self.probe is not None else None
        return online1, online2, logits


@dataclass
class TrainState:
    """Online θ (with the online probe), target ξ (None without a target network), optimizer, step and the
    augmentation RNG, plus the run's constants: its schedules, its objective and its precision. ``forward``
    runs :class:`SiameseForward` (under torchrun wrapped in DistributedDataParallel, compiled or not:
    ``byol.compiling``),
    ``target_forward`` the target (compiled or not); both share their parameters with ``online`` / ``target``."""

    online: OnlineNetwork
    target: TargetNetwork | None
    probe: nn.Linear | None
    optimizer: LARS
    generator: torch.Generator
    schedule: Schedule
    objective: Objective
    precision: Precision
    forward: nn.Module
    target_forward: nn.Module | None
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict() if self.target is not None else {},
            "probe": self.probe.state_dict() if self.probe is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
        }

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        try:
            self.online.load_state_dict(payload["online"])
            if self.target is not None:
                self.target.load_state_dict(payload["target"])
            if self.probe is not None:
                self.probe.load_state_dict(payload["probe"])
            self.optimizer.load_state_dict(payload["optimizer"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint does not match this architecture: {first_line(e)}") from None
        self.generator.set_state(payload["generator"])
        self.step = int(payload["step"])
