"""byol: Bootstrap Your Own Latent (Grill et al. 2020), faithful to the paper and the released code."""

from byol.config import Config, get_preset
from byol.export import load_encoder
from byol.loss import byol_loss, regression_loss
from byol.networks import MLP, OnlineNetwork, ResNet, TargetNetwork, build_online_network
from byol.train import TrainState, ViewBatch, pretrain, resume, train_step

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "Config",
    "OnlineNetwork",
    "ResNet",
    "TargetNetwork",
    "TrainState",
    "ViewBatch",
    "build_online_network",
    "byol_loss",
    "get_preset",
    "load_encoder",
    "pretrain",
    "regression_loss",
    "resume",
    "train_step",
]
