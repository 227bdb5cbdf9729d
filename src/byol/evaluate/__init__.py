"""The paper's evaluation protocols (linear, semi-supervised fine-tuning, transfer) and the kNN monitor.

The protocols' settings (:mod:`byol.evaluate.settings`) import no torch; the protocols are imported on first use.
"""

from typing import TYPE_CHECKING

from byol.evaluate.settings import FinetuneConfig, KnnConfig, LinearConfig
from byol.lazy import lazy_attributes

_EXPORTS = {
    **dict.fromkeys(
        (
            "balanced_subset",
            "classification_metrics",
            "extract_features",
            "load_encoder_from_run",
            "split_train_val",
            "write_result",
        ),
        "byol.evaluate.common",
    ),
    "finetune_evaluation": "byol.evaluate.finetune",
    "FrozenEvaluation": "byol.evaluate.frozen",
    "knn_on_features": "byol.evaluate.knn",
    "knn_scores": "byol.evaluate.knn",
    "linear_evaluation": "byol.evaluate.linear",
}
__all__ = [
    "FinetuneConfig",
    "FrozenEvaluation",
    "KnnConfig",
    "LinearConfig",
    "balanced_subset",
    "classification_metrics",
    "extract_features",
    "finetune_evaluation",
    "knn_on_features",
    "knn_scores",
    "linear_evaluation",
    "load_encoder_from_run",
    "split_train_val",
    "write_result",
]
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:
    from byol.evaluate.common import (
        balanced_subset,
        classification_metrics,
        extract_features,
        load_encoder_from_run,
        split_train_val,
        write_result,
    )
    from byol.evaluate.finetune import finetune_evaluation
    from byol.evaluate.frozen import FrozenEvaluation
    from byol.evaluate.knn import knn_on_features, knn_scores
    from byol.evaluate.linear import linear_evaluation
