"""Pictures of a run: a few images beside their T and T′ views, a 2-D map of the learned embeddings, and
segmentation predictions beside their masks.

The views are drawn with the run's own preset, size and seed from a generator of their own, so the same run
always shows the same pictures and the training RNG is never touched. The map is scikit-learn's t-SNE
(``pip install byol[viz]``), not a hand-written projection.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from byol.augment import TwoViews, evaluation_view
from byol.config import Config
from byol.data import Dataset, eval_batches
from byol.errors import DataError, quoted
from byol.extras import require
from byol.files import atomic_write, cache_home

VIEW_IMAGES = 8  # images in a view grid
log = logging.getLogger(__name__)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files, no display): the one place the package imports it. Where
    matplotlib could not make its cache folder (``XDG_CACHE_HOME`` naming a file, a read-only home), it would
    print two raw lines at import and then use a temporary folder; here it is given a temporary folder of its
    own first (removed at exit), and the user is told in one line."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        home = cache_home() / "matplotlib"
        try:
            home.mkdir(parents=True, exist_ok=True)
            usable = os.access(home, os.W_OK)
        except OSError:
            usable = False
        if not usable:
            folder = tempfile.mkdtemp(prefix="byol-matplotlib-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            os.environ["MPLCONFIGDIR"] = folder
            log.info("matplotlib cannot keep its cache in %s; it uses %s for this command", quoted(home), folder)
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its INFO lines (a font cache built) are its own
    import matplotlib.pyplot as plt

    return plt


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


def segmentation_picture(
    path: Path, rows: Sequence[tuple[Tensor, Tensor, Tensor]], names: Sequence[str], void: int, title: str
) -> None:
    """A PNG of segmentation rows, each an image (uint8 (3, h, w)), its true mask and the predicted one (class
    ids at the mask's size) side by side, classes in a fixed palette with a legend, void black."""
    plt = pyplot()
    from matplotlib.patches import Patch

    palette = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    colours = np.array([palette(i % palette.N)[:3] for i in range(len(names))])

    def coloured(mask: Tensor) -> np.ndarray:
        ids = mask.numpy()
        out = np.zeros((*ids.shape, 3))
        valid = (ids != void) & (ids >= 0) & (ids < len(names))
        out[valid] = colours[ids[valid]]
        return out

    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.3 * len(rows) + 0.9), dpi=100, squeeze=False)
    for r, (image, truth, prediction) in enumerate(rows):
        pictures = (image.permute(1, 2, 0).numpy(), coloured(truth), coloured(prediction))
        for c, (picture, label) in enumerate(zip(pictures, ("image", "mask", "prediction"), strict=True)):
            axes[r, c].imshow(picture, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(label)
    handles = [Patch(color=colours[i], label=name) for i, name in enumerate(names)] + [Patch(color="k", label="void")]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    save_png(fig, path)


def picture_rows(path: Path, rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str]]], title: str) -> None:
    """A PNG of rows of thumbnails: each row a label on its left, its (h, w, 3) uint8 pictures (all one size), a
    caption under each (a similarity, a distance). Nearest neighbours (a query, then what the encoder finds like
    it) and cluster contact sheets are drawn with it: one mosaic in one image, quick to draw whatever its size."""
    plt = pyplot()
    size = rows[0][1][0].shape[0] if rows and rows[0][1] else 64
    pad, caption = 4, 14  # pixels around each picture, and below it for its caption
    columns = max(1, max(len(pictures) for _, pictures, _ in rows))
    cell_w, cell_h = size + pad, size + pad + caption
    mosaic = np.full((len(rows) * cell_h + pad, columns * cell_w + pad, 3), 255, dtype=np.uint8)
    for r, (_, pictures, _) in enumerate(rows):
        for c, picture in enumerate(pictures):
            top, left = pad + r * cell_h, pad + c * cell_w
            mosaic[top : top + size, left : left + size] = picture[:size, :size]
    dpi, margin, band = 100, 1.3, 0.4  # inches: the row labels' margin on the left, the title's band on top
    width_in, height_in = mosaic.shape[1] / dpi, mosaic.shape[0] / dpi
    fig_w = max(width_in + margin, 0.065 * len(title) + 0.2)  # wide enough for the title
    fig = plt.figure(figsize=(fig_w, height_in + band), dpi=dpi)
    ax = fig.add_axes((margin / fig_w, 0, width_in / fig_w, height_in / (height_in + band)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for r, (label, pictures, captions) in enumerate(rows):
        ax.text(-6, pad + r * cell_h + size / 2, label, ha="right", va="center", fontsize=8)
        for c, text in enumerate(captions[: len(pictures)]):
            ax.text(pad + c * cell_w + size / 2, pad + r * cell_h + size + 2, text, ha="center", va="top", fontsize=7)
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    save_png(fig, path)


def save_png(fig: Any, path: Path) -> None:
    """A figure as a PNG file, written atomically, and closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def dataset_thumbnails(images: Dataset, indices: Sequence[int], size: int = 64) -> list[np.ndarray]:
    """Images ``indices`` of a dataset as (size, size, 3) uint8 pictures, upright, whole (not cropped)."""
    from PIL import Image

    from byol.data import Files
    from byol.data.decode import load_oriented

    pictures = []
    for i in indices:
        if isinstance(images, Files):
            picture = load_oriented(images.read(int(i)))
        else:
            pixels = images.images[int(i)].numpy().transpose(1, 2, 0)
            picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
        pictures.append(np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC)))
    return pictures
