"""Weighted k-nearest-neighbour classifier on ℓ2-normalised features (the kNN monitor of lightly/solo-learn).

Each test image votes with its k most cosine-similar training images, each neighbour weighted by
exp(similarity / T); the class with the largest total weight wins. Defaults k = 200, T = 0.1 (SPEC §5).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from byol.errors import ConfigError
from byol.evaluate.common import classification_metrics
from byol.evaluate.settings import KnnConfig


@torch.no_grad()
def knn_scores(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int,
    k: int = KnnConfig.k,
    temperature: float = KnnConfig.temperature,
    chunk_size: int = 1024,
) -> Tensor:
    """Per-class vote weights (N_test, num_classes), each row scaled so that its nearest neighbour weighs 1;
    argmax is the prediction, top-5 reads from it too."""
    if k < 1 or temperature <= 0:
        raise ConfigError(f"kNN needs k >= 1 and temperature > 0, got k={k}, T={temperature}")
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        query = F.normalize(test_features[start : start + chunk_size].float(), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)  # (n, k), most similar first
        # exp(s / T) shifted by each row's largest s: the same vote up to a positive factor per row (argmax and
        # top-5 unchanged), and finite for any T > 0 (exp(1 / 0.01) alone overflows float32)
        weights = torch.exp((similarity - similarity[:, :1]) / temperature)
        votes = torch.zeros(query.shape[0], num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, train_labels[index], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_on_features(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    num_classes: int,
    k: int = KnnConfig.k,
    temperature: float = KnnConfig.temperature,
) -> dict[str, Any]:
    """kNN metrics from features already extracted; unlabelled training images (label −1) do not vote."""
    labelled = train_labels >= 0
    scores = knn_scores(
        train_features[labelled], train_labels[labelled], test_features, num_classes=num_classes, k=k,
        temperature=temperature,
    )  # fmt: skip
    return {
        "protocol": f"kNN (k={k}, T={temperature})",
        **classification_metrics(scores, test_labels, num_classes),
        "settings": {"k": k, "temperature": temperature},
    }
