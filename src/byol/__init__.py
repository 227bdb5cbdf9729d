"""byol: Bootstrap Your Own Latent (Grill et al. 2020), faithful to the paper and the released code.

The names below are imported on first use, so that `import byol` (and `byol --help`) does not import torch.
"""

from typing import TYPE_CHECKING

from byol.lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "byol.config",
    "get_preset": "byol.config",
    "load_encoder": "byol.export",
    "byol_loss": "byol.loss",
    "regression_loss": "byol.loss",
    "MLP": "byol.networks",
    "OnlineNetwork": "byol.networks",
    "ResNet": "byol.networks",
    "TargetNetwork": "byol.networks",
    "build_online_network": "byol.networks",
    "TrainState": "byol.train",
    "ViewBatch": "byol.train",
    "pretrain": "byol.train",
    "resume": "byol.train",
    "train_step": "byol.train",
}
__all__ = [  # noqa: RUF022 (as _EXPORTS, by module)
    "Config",
    "get_preset",
    "load_encoder",
    "byol_loss",
    "regression_loss",
    "MLP",
    "OnlineNetwork",
    "ResNet",
    "TargetNetwork",
    "build_online_network",
    "TrainState",
    "ViewBatch",
    "pretrain",
    "resume",
    "train_step",
]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:
    from byol.config import Config, get_preset
    from byol.export import load_encoder
    from byol.loss import byol_loss, regression_loss
    from byol.networks import MLP, OnlineNetwork, ResNet, TargetNetwork, build_online_network
    from byol.train import TrainState, ViewBatch, pretrain, resume, train_step
