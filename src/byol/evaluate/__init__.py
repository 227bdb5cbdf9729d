"""The paper's evaluation protocols (linear, semi-supervised fine-tuning, transfer) and the kNN monitor."""

from byol.evaluate.common import (
    balanced_subset,
    classification_metrics,
    extract_features,
    load_encoder_from_run,
    split_train_val,
    write_result,
)
from byol.evaluate.finetune import FinetuneConfig, finetune_evaluation
from byol.evaluate.frozen import FrozenEvaluation
from byol.evaluate.knn import KnnConfig, knn_on_features, knn_scores
from byol.evaluate.linear import LinearConfig, linear_evaluation

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
