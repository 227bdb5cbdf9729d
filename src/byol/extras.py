"""The optional extras (``pip install byol[EXTRA]``) and the one-line refusal when one is missing."""

from __future__ import annotations

import importlib.util

from byol.errors import ConfigError

# module → (the extra that installs it, the pip package)
EXTRAS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnx", "onnxscript"),
    "onnxruntime": ("onnx", "onnxruntime"),
    "huggingface_hub": ("hub", "huggingface_hub"),
    "sklearn": ("viz", "scikit-learn"),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "wandb": ("wandb", "wandb"),
}


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str) -> None:
    """Refuses (exit status 2) when ``module`` is not installed, naming the extra that installs it."""
    if not available(module):
        extra, package = EXTRAS[module]
        raise ConfigError(f"{purpose} needs the package {package}: pip install 'byol[{extra}]'")
