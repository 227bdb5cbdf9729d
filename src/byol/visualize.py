"""Pictures of a run: a few images beside their T and T′ views, and a 2-D map of the learned embeddings.

The views are drawn with the run's own preset, size and seed from a generator of their own, so the same run
always shows the same pictures and the training RNG is never touched. The map is scikit-learn's t-SNE
(``pip install byol[viz]``), not a hand-written projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from byol.augment import TwoViews, evaluation_view
from byol.config import Config
from byol.data import Dataset, eval_batches
from byol.errors import DataError
from byol.extras import require

VIEW_IMAGES = 8  # images in a view grid
MAP_IMAGES = 2000  # test images in an embedding map: t-SNE takes seconds on a CPU at this size


class ViewSamples(NamedTuple):
    """``count`` images and one T and one T′ view of each, as RGB floats in [0, 1] of the run's view size."""

    images: Tensor  # (N, 3, S, S)
    view1: Tensor
    view2: Tensor


def _rgb(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """A normalised view back to [0, 1] RGB (grey images repeated on three channels)."""
    x = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return x.clamp(0.0, 1.0).expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.clamp(0.0, 1.0)


def view_samples(config: Config, dataset: Dataset, count: int = VIEW_IMAGES) -> ViewSamples:
    """Seeded images of ``dataset`` and their views under the run's T and T′. Image folders are centre-cropped
    at decode time first (the training loop crops them at decode time instead, with the same distribution)."""
    size, a = config.data.image_size, config.augment
    generator = torch.Generator().manual_seed(config.train.seed)
    chosen = torch.randperm(len(dataset), generator=generator)[: min(count, len(dataset))]
    batch = next(
        eval_batches(dataset.subset(chosen), batch_size=count, device=torch.device("cpu"), image_size=size), None
    )
    if batch is None:  # an unreadable file is left out of its batch: here every one was
        raise DataError(f"all {len(chosen)} images sampled from {dataset.name} are unreadable images: "
                        "the dataset looks broken")  # fmt: skip
    views = TwoViews(a.preset, size, mean=dataset.mean, std=dataset.std, crop_min_scale=a.crop_min_scale)
    view1, view2 = views(batch.images, generator)
    zeros, ones = (0.0,) * dataset.channels, (1.0,) * dataset.channels
    images = evaluation_view(batch.images, size, zeros, ones)  # resized to the view size, in [0, 1]
    return ViewSamples(
        _rgb(images, zeros, ones), _rgb(view1, dataset.mean, dataset.std), _rgb(view2, dataset.mean, dataset.std)
    )


def image_grid(samples: ViewSamples, pad: int = 2) -> Tensor:
    """One (3, H, W) picture: the images on the first row, their T views on the second, T′ on the third."""
    rows = []
    for row in samples:
        framed = torch.nn.functional.pad(row, (pad, pad, pad, pad), value=1.0)  # (N, 3, S + 2p, S + 2p)
        rows.append(torch.cat(list(framed), dim=2))
    return torch.cat(rows, dim=1)


def embedding_map(features: Tensor, seed: int) -> np.ndarray:
    """A 2-D t-SNE map (N, 2) of ``features`` (scikit-learn; ``pip install byol[viz]``), seeded."""
    require("sklearn", "the embedding map")
    from sklearn.manifold import TSNE

    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()  # kNN's cosine geometry
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(x)
