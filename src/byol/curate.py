"""An encoder at work before any label exists, on the features `byol embed` writes: images like this one
(``search``), near-duplicates and train/test leaks (``duplicates``), which images to label first (``select``),
and the groups of a collection (``clusters``).

Everything reads the embed .npz (:func:`read_embeddings`): ``features`` (N, D) float32, ``paths`` (N,) where the
images are files, ``index`` (N,) the rows' indices in their split, ``labels``, ``digests`` (each image's content
SHA-256) and ``source`` (the encoder and the data it embedded, as JSON). Similarity is cosine, as in the kNN
monitor. ``features`` is memory-mapped straight out of the .npz (numpy writes its members uncompressed), so a
million rows open at once and a search reads them in chunks: memory stays flat whatever the set's size.
"""

from __future__ import annotations

import functools
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from byol.choices import SELECT_METHODS as METHODS
from byol.choices import SELECT_SPACES as SPACES
from byol.errors import ConfigError, DataError, quoted

CHUNK = 8192  # rows per block of a scan (4 MB of 128-d features): a block stays in cache while it is scored
DUPLICATE_THRESHOLD = 0.995  # best F1 on a calibration set apart from the one that scores it (docs/curation.md)
COPY_THRESHOLD = 0.99525  # the same, where the .npz holds copy views (`byol embed --copy-crops`)
EXACT_KMEANS = 5_000_000  # rows × clusters up to which k-means is exact (Lloyd's), minibatch past it
# TypiClust (Hacohen et al., ICML 2022) as its authors' code runs it: typicality is the inverse mean squared distance
# to the 20 nearest images of the cluster (half the cluster where it is smaller); clusters of 5 images or fewer are
# passed over while larger ones have images left; k-means restarted 10 times up to 50 clusters (scikit-learn's
# KMeans then), once past that. As many clusters as images to choose, as the paper says (its code caps them at 500:
# docs/curation.md)
TYPICALITY_NEIGHBOURS = 20
TYPICAL_MIN_CLUSTER = 5
TYPICAL_RESTARTS = (50, 10)  # (up to how many clusters, restarts)

# an image's copy views, as `byol embed --copy-crops` makes them: copy crops (K, D), its whole image and crops
# colour-normalised (1+K, D), and those normalised views' pixel descriptors (1+K, P)
CopyViews = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class Embeddings:
    """An embed .npz, read: ``features`` memory-mapped (N, D); the rest in memory."""

    path: Path
    features: np.ndarray
    names: list[str]  # each row's file, or "<dataset> <split> #<index>" where the images are not files
    labels: np.ndarray
    index: np.ndarray
    digests: list[str]  # "" where the .npz predates them
    source: dict[str, Any]
    crops: np.ndarray | None = None  # (N, K, D) features of each image's copy crops, where embed made them
    normalised: np.ndarray | None = None  # (N, 1+K, D): its whole image and copy crops colour-normalised, with them
    pixels: np.ndarray | None = None  # (N, 1+K, P): the pixel descriptors of those normalised views, with them
    head: np.ndarray | None = None  # (N, P): the online projector's output, where embed read a run or checkpoint

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @functools.cached_property
    def norms(self) -> np.ndarray:
        """Each row's L2 norm, computed once (part of opening the set for searches)."""
        return row_norms(self.features)


def _member(archive: Path, name: str) -> np.ndarray:
    """A member of an uncompressed .npz, memory-mapped where numpy stored it (else read)."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(f"{name}.npy")
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            header = f.tell()
        if info.compress_type != zipfile.ZIP_STORED or dtype.hasobject:
            return np.load(archive)[name]
    with open(archive, "rb") as raw:  # the local file header's length: 30 bytes + its name + its extra field
        raw.seek(info.header_offset + 26)
        skip = 30 + int.from_bytes(raw.read(2), "little") + int.from_bytes(raw.read(2), "little")
    return np.memmap(archive, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C",
                     offset=info.header_offset + skip + header)  # fmt: skip


def read_embeddings(path: Path) -> Embeddings:
    """The .npz `byol embed` wrote, checked: one line naming what is wrong, never a traceback."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{quoted(path)} does not exist; make it with `byol embed ENCODER --out {path.name}`")
    try:
        with np.load(path) as arrays:
            keys = set(arrays.files)
            if "features" not in keys:
                raise DataError(f"{quoted(path)} has no features array; it is not a `byol embed` file")
            features = _member(path, "features")
            crops = _member(path, "copy_crops") if "copy_crops" in keys else None
            normalised = _member(path, "copy_normalised") if "copy_normalised" in keys else None
            pixels = _member(path, "copy_pixels") if "copy_pixels" in keys else None
            head = _member(path, "head") if "head" in keys else None
            n = features.shape[0] if features.ndim == 2 else -1
            small = {k: arrays[k] for k in ("labels", "index", "paths", "digests", "source") if k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as e:
        raise DataError(f"{quoted(path)} is not a readable .npz of `byol embed` ({e})") from None
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating) or n < 1:
        raise DataError(f"{quoted(path)}: features must be a non-empty (N, D) float array, got {features.shape}")
    if any(len(small[k]) != n for k in ("labels", "index", "paths", "digests") if k in small):
        raise DataError(f"{quoted(path)}: its arrays have different lengths; the file is damaged")
    if head is not None and (head.ndim != 2 or head.shape[0] != n or not np.issubdtype(head.dtype, np.floating)):
        raise DataError(f"{quoted(path)}: head {head.shape} {head.dtype} must be (N, P) floats for its {n} rows")
    if crops is not None and (crops.ndim != 3 or crops.shape[0] != n or crops.shape[2] != features.shape[1]):
        raise DataError(f"{quoted(path)}: copy_crops {crops.shape} do not match features {features.shape}")
    if crops is not None and (normalised is None or pixels is None):
        raise DataError(f"{quoted(path)} holds copy crops without their colour-normalised views or pixel "
                        "descriptors (an earlier `byol embed --copy-crops`); make it again with `byol embed "
                        "--copy-crops`")  # fmt: skip
    if normalised is not None and (crops is None or normalised.shape != (n, crops.shape[1] + 1, features.shape[1])):
        raise DataError(f"{quoted(path)}: copy_normalised {normalised.shape} do not match copy_crops "
                        f"{None if crops is None else crops.shape}")  # fmt: skip
    if pixels is not None and (normalised is None or pixels.ndim != 3 or pixels.shape[:2] != normalised.shape[:2]):
        raise DataError(f"{quoted(path)}: copy_pixels {pixels.shape} do not match copy_normalised "
                        f"{None if normalised is None else normalised.shape}")  # fmt: skip
    source = json.loads(str(small["source"])) if "source" in small else {}
    index = small.get("index", np.arange(n))
    names = [str(p) for p in small["paths"]] if "paths" in small else [
        f"{source.get('dataset', 'image')} {source.get('split', '')} #{i}" for i in index.tolist()]  # fmt: skip
    digests = [str(d) for d in small["digests"]] if "digests" in small else [""] * n
    return Embeddings(path, features, names, small.get("labels", np.full(n, -1)), index, digests, source, crops,
                      normalised, pixels, head)  # fmt: skip


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def row_norms(features: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """The L2 norm of each row, read ``chunk`` rows at a time (N,)."""
    return np.concatenate([
        np.sqrt(np.einsum("ij,ij->i", *(np.asarray(features[s : s + chunk], dtype=np.float32),) * 2))
        for s in range(0, features.shape[0], chunk)
    ])  # fmt: skip


def nearest(
    features: np.ndarray, queries: np.ndarray, k: int, norms: np.ndarray | None = None, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of each query among ``features`` (N, D), read ``chunk`` rows at a time
    (4 bytes of score per row and query are kept, not the features); ``norms``: the rows' norms where known
    (:attr:`Embeddings.norms`). Returns (similarities (Q, k) descending, rows (Q, k))."""
    norms = np.maximum(row_norms(features, chunk) if norms is None else norms, 1e-12)
    q = _unit(np.atleast_2d(queries))
    n, k = features.shape[0], min(k, features.shape[0])
    best_s, best_i = np.empty((len(q), k), dtype=np.float32), np.empty((len(q), k), dtype=np.int64)
    group = max(1, (1 << 24) // n)  # queries scored together: at most 64 MB of scores
    for first in range(0, len(q), group):
        qs = q[first : first + group]
        scores = np.empty((len(qs), n), dtype=np.float32)
        for start in range(0, n, chunk):
            block = np.asarray(features[start : start + chunk], dtype=np.float32)
            scores[:, start : start + len(block)] = (block @ qs.T).T / norms[start : start + len(block)]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_s = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_s, axis=1, kind="stable")
        best_s[first : first + len(qs)] = np.take_along_axis(top_s, order, 1)
        best_i[first : first + len(qs)] = np.take_along_axis(top, order, 1)
    return best_s, best_i


def near_pairs(
    a: np.ndarray, b: np.ndarray | None, threshold: float, chunk: int | None = None,
    a_copy: CopyViews | None = None, b_copy: CopyViews | None = None,
) -> list[tuple[int, int, float]]:  # fmt: skip
    """Every pair (i in a, j in b) with similarity >= ``threshold``; ``b`` None: pairs within ``a``, i < j. Scored
    ``chunk`` rows of ``a`` at a time (default: as many as keep a block of scores at 64 MB). Without copy views the
    similarity is the cosine of the two images' features. With them (``a_copy`` and, unless ``b`` is None,
    ``b_copy``: :data:`CopyViews`), it is :func:`copy_similarity`: the mean of three matches, each the best of the
    two whole images and of each whole image against each crop of the other: the encoder's features of the images
    as they are, of them colour-normalised, and the pixel descriptors of them colour-normalised. A cropped copy
    meets the photo's own crop; a recoloured copy meets it after both are normalised; a blurred one keeps its
    coarse pixels."""
    ua = _unit(a)
    ub = ua if b is None else _unit(b)
    views_a = unit_views(a_copy)
    views_b = views_a if b is None else unit_views(b_copy)
    chunk = chunk or max(1, (1 << 24) // max(len(ub), 1))
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(ua), chunk):
        rows_a = slice(start, start + chunk)
        if views_a is None or views_b is None:
            sims = ua[rows_a] @ ub.T
        else:
            sims = copy_similarity(ua[rows_a], ub, [v[rows_a] for v in views_a], views_b)
        rows, cols = np.nonzero(sims >= threshold)
        keep = (rows + start < cols) if b is None else np.ones(len(rows), dtype=bool)
        rows, cols = rows[keep], cols[keep]
        pairs += zip((rows + start).tolist(), cols.tolist(), sims[rows, cols].astype(float).tolist(), strict=True)
    return pairs


def unit_views(views: Sequence[np.ndarray] | None) -> list[np.ndarray] | None:
    """Copy views (:func:`copy_views`) as unit float32 rows, as :func:`copy_similarity` takes them."""
    return None if views is None else [_unit(np.asarray(v, dtype=np.float32)) for v in views]


def copy_similarity(
    whole_a: np.ndarray, whole_b: np.ndarray, views_a: Sequence[np.ndarray], views_b: Sequence[np.ndarray]
) -> np.ndarray:
    """(len(a), len(b)): :func:`near_pairs`' similarity with copy views (unit rows, :data:`CopyViews` of N images):
    the mean of the plain, the colour-normalised and the pixel descriptors' best match."""
    (crops_a, normal_a, pixels_a), (crops_b, normal_b, pixels_b) = views_a, views_b
    sims = best_match(whole_a, whole_b, crops_a, crops_b)
    sims += best_match(normal_a[:, 0], normal_b[:, 0], normal_a[:, 1:], normal_b[:, 1:])
    sims += best_match(pixels_a[:, 0], pixels_b[:, 0], pixels_a[:, 1:], pixels_b[:, 1:])
    return sims / 3


def best_match(whole_a: np.ndarray, whole_b: np.ndarray, crops_a: np.ndarray, crops_b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)): the best cosine of a's whole image against b's and each of b's crops, and of each of a's
    crops against b's whole image (unit rows; crops (N, K, D))."""
    sims = whole_a @ whole_b.T
    for k in range(crops_a.shape[1]):
        np.maximum(sims, whole_a @ crops_b[:, k].T, out=sims)
        np.maximum(sims, crops_a[:, k] @ whole_b.T, out=sims)
    return sims


def component_labels(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The connected component of each of ``n`` nodes joined by the edges (rows[e], cols[e]) (scipy)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = coo_matrix((np.ones(len(rows)), (np.asarray(rows), np.asarray(cols))), shape=(n, n))
    return connected_components(edges, directed=False)[1]


def groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components of size > 1 of the graph on ``n`` rows whose edges are ``pairs``, largest first."""
    edges = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    labels = component_labels(n, edges[:, 0], edges[:, 1])
    found: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        found.setdefault(label, []).append(i)
    return sorted((g for g in found.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def kmeans(features: np.ndarray, k: int, seed: int, restarts: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's k-means on the unit features, exact (Lloyd's KMeans, the best of ``restarts``) where rows ×
    clusters stays under 5 million (seconds on a CPU), MiniBatchKMeans past that: (cluster of each row, centres
    (k, D))."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = _unit(np.asarray(features))
    if not 1 <= k <= len(x):
        raise ConfigError(f"--k must lie in [1, {len(x)}] (the number of images), got {k}")
    model: Any = (
        KMeans(k, n_init=restarts, random_state=seed) if len(x) * k <= EXACT_KMEANS
        else MiniBatchKMeans(k, n_init=1, random_state=seed, batch_size=4096)
    )  # fmt: skip
    assignment = model.fit_predict(x)
    return assignment.astype(np.int64), model.cluster_centers_.astype(np.float32)


def centre_distances(features: np.ndarray, assignment: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's distance to its cluster's centre, both on the unit sphere (0 to 2; large: an outlier)."""
    x, c = _unit(np.asarray(features)), _unit(centres)[assignment]
    return np.sqrt(np.maximum(2 - 2 * np.einsum("ij,ij->i", x, c), 0))


def typicality(x: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS, chunk: int = 1024) -> np.ndarray:
    """TypiClust's typicality of each row of ``x`` (unit rows): 1 / mean squared distance to its nearest
    ``neighbours`` (at most half the rows, at least one), ``chunk`` rows at a time (memory ``chunk`` × N, not N²,
    for a cluster of any size)."""
    if len(x) == 1:
        return np.ones(1)
    k = max(1, min(neighbours, len(x) // 2))
    mean_distance = np.empty(len(x))
    for start in range(0, len(x), chunk):
        distances = np.maximum(2 - 2 * (x[start : start + chunk] @ x.T), 0)  # squared, on the unit sphere
        distances[np.arange(len(distances)), np.arange(start, start + len(distances))] = np.inf  # not itself
        mean_distance[start : start + len(distances)] = np.partition(distances, k - 1, axis=1)[:, :k].mean(axis=1)
    return 1.0 / (mean_distance + 1e-12)


def select(features: np.ndarray, count: int, method: str, seed: int) -> list[int]:
    """``count`` rows to label first. typical (TypiClust): k-means into ``count`` clusters, then in turns, largest
    cluster first, the most typical row left in each cluster of more than 5 rows (the smaller ones once those run
    out); diverse: k-center greedy (each next row the farthest from those chosen, from the row nearest the mean);
    random: a seeded sample."""
    n = len(features)
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not valid; choose one of {', '.join(METHODS)}")
    if not 1 <= count <= n:
        raise ConfigError(f"--count must lie in [1, {n}] (the number of images), got {count}")
    rng = np.random.default_rng(seed)
    if method == "random":
        return sorted(rng.choice(n, size=count, replace=False).tolist())
    x = _unit(np.asarray(features))
    if method == "diverse":
        chosen = [int(np.argmax(x @ _unit(x.mean(0, keepdims=True))[0]))]
        distance = np.sqrt(np.maximum(2 - 2 * (x @ x[chosen[0]]), 0))
        for _ in range(count - 1):
            chosen.append(int(np.argmax(distance)))
            distance = np.minimum(distance, np.sqrt(np.maximum(2 - 2 * (x @ x[chosen[-1]]), 0)))
        return chosen
    most, restarts = TYPICAL_RESTARTS
    assignment, _ = kmeans(x, count, seed, restarts if count <= most else 1)
    by_size = np.argsort(-np.bincount(assignment, minlength=count), kind="stable")
    left = {int(c): np.flatnonzero(assignment == c) for c in by_size}
    turns = [c for c in left if len(left[c]) > TYPICAL_MIN_CLUSTER]
    chosen = []
    while len(chosen) < count:
        turns = [c for c in turns if len(left[c])] or [c for c in left if len(left[c])]
        for cluster in turns[: count - len(chosen)]:
            members = left[cluster]
            best = int(np.argmax(typicality(x[members])))
            chosen.append(int(members[best]))
            left[cluster] = np.delete(members, best)
    return chosen


def selection_space(e: Embeddings, space: str | None) -> tuple[str, np.ndarray]:
    """The rows `select` chooses among: the projector's output where the .npz has it (TypiClust clusters a
    self-supervised head's output, and it chose better than the encoder's features on held-out images:
    docs/curation.md), else the encoder's features; ``space`` names one."""
    if space not in (None, *SPACES):
        raise ConfigError(f"--space {space!r} is not valid; choose one of {', '.join(SPACES)}")
    if space == "head" and e.head is None:
        raise ConfigError(f"{quoted(e.path)} has no head features: an exported encoder has no projector; embed a run "
                          "or a checkpoint for them, or choose --space features")  # fmt: skip
    if space == "features" or e.head is None:
        return "features", e.features
    return "head", e.head


def embed_image(embeddings: Embeddings, image: Path) -> np.ndarray:
    """The features of an image file that is not in the set, from the encoder, at the size, of the view (centre
    crop or whole image) and with the normalisation the .npz records (as `byol embed` made them: unaugmented, the
    encoder in inference mode)."""
    import torch

    from byol.data.folder import ImageFolder
    from byol.distributed import resolve_device
    from byol.evaluate.common import extract
    from byol.export import load_pretrained

    encoder_path = embeddings.source.get("encoder")
    if not encoder_path or not Path(encoder_path).exists():
        raise ConfigError(
            f"{quoted(embeddings.path)} does not name an encoder that exists here ({encoder_path or 'none recorded'}); "
            "query by row number, or make the .npz again with `byol embed`"
        )
    pretrained = load_pretrained(Path(encoder_path))
    s = embeddings.source
    one = ImageFolder(name="query", root=image.parent, paths=(str(image),), labels=torch.tensor([-1]), classes=())
    if "mean" in s and "std" in s:  # the set's normalisation (an .npz from before they were recorded: a folder's)
        one = replace(one, mean=tuple(s["mean"]), std=tuple(s["std"]))
    size = int(s.get("image_size") or pretrained.config.data.image_size)
    whole = s.get("view") == "whole"
    found = extract(pretrained.encoder, one, image_size=size, device=resolve_device("auto"), progress=False,
                    whole=whole)  # fmt: skip
    if len(found.features) != 1:
        raise DataError(f"{quoted(image)} could not be read as an image")
    return found.features.numpy()


def thumbnails(embeddings: Embeddings, rows: Sequence[int], size: int = 64) -> list[np.ndarray]:
    """The images of ``rows``, as (size, size, 3) uint8 pictures, read from the data the .npz records."""
    from byol.data import load_dataset
    from byol.visualize import dataset_thumbnails

    s = embeddings.source
    if not s.get("dataset"):
        raise DataError(f"{quoted(embeddings.path)} does not record the data it embedded; make it again with "
                        "`byol embed` to draw its images")  # fmt: skip
    images = load_dataset(s["dataset"], s["split"], s.get("data_dir") or "", int(s.get("image_size", 32)),
                          s.get("labels", "auto"))  # fmt: skip
    return dataset_thumbnails(images, [int(embeddings.index[r]) for r in rows], size)


def copy_views(e: Embeddings) -> CopyViews | None:
    """The copy views `byol embed --copy-crops` made for ``e`` (see :func:`near_pairs`), or None."""
    if e.crops is None or e.normalised is None or e.pixels is None:
        return None
    return (e.crops, e.normalised, e.pixels)


def find_duplicates(e: Embeddings, other: Embeddings | None, threshold: float) -> dict[str, Any]:
    """Within ``e``: groups of images whose features reach ``threshold`` (cosine) or whose contents are equal
    (``exact``: one digest for the whole group). With ``other``: each image of ``e`` with a twin in ``other``."""
    if other is not None:
        if other.features.shape[1] != e.features.shape[1]:
            raise ConfigError(f"{quoted(other.path)} holds {other.features.shape[1]}-d features and {quoted(e.path)} "
                              f"{e.features.shape[1]}-d: compare features of one encoder")  # fmt: skip
        best: dict[int, tuple[int, float]] = {}
        copy = (copy_views(e), copy_views(other))  # near_pairs matches views where both sets have them
        for i, j, s in near_pairs(np.asarray(e.features), np.asarray(other.features), threshold, None, *copy):
            if s > best.get(i, (0, -2.0))[1]:
                best[i] = (j, s)
        digests = {d: j for j, d in enumerate(other.digests) if d}
        for i in range(len(e)):
            if e.digests[i] and e.digests[i] in digests:
                best[i] = (digests[e.digests[i]], 1.0)
        twins = [{"row": i, "path": e.names[i], "other_row": j, "other": other.names[j], "similarity": s}
                 for i, (j, s) in sorted(best.items())]  # fmt: skip
        return {"twins": sorted(twins, key=lambda t: -t["similarity"])}
    pairs = [(i, j) for i, j, _ in near_pairs(np.asarray(e.features), None, threshold, None, copy_views(e))]
    by_digest: dict[str, list[int]] = {}
    for i, digest in enumerate(e.digests):
        if digest:
            by_digest.setdefault(digest, []).append(i)
    pairs += [(rows[0], r) for rows in by_digest.values() for r in rows[1:]]
    found = [
        {"size": len(g), "exact": len({e.digests[i] for i in g}) == 1 and bool(e.digests[g[0]]),
         "rows": g, "paths": [e.names[i] for i in g]}
        for g in groups(len(e), pairs)
    ]  # fmt: skip
    return {"groups": found, "exact": sum(g["exact"] for g in found), "images": sum(g["size"] for g in found)}


def cluster_collection(e: Embeddings, k: int, seed: int, sheets: Path | None, per_sheet: int = 16) -> dict[str, Any]:
    """k-means of the collection: each image's cluster and its distance to the centre (large: an outlier), each
    cluster's size, and in ``sheets`` a contact sheet per cluster (its images nearest the centre first, then the
    farthest, the outliers, on a second row)."""
    x = np.asarray(e.features)
    assignment, centres = kmeans(x, k, seed)
    distance = centre_distances(x, assignment, centres)
    clusters = []
    for c in np.argsort(-np.bincount(assignment, minlength=k), kind="stable").tolist():
        members = np.flatnonzero(assignment == c)
        order = members[np.argsort(distance[members], kind="stable")]
        entry: dict[str, Any] = {"cluster": c, "size": len(members),
                                 "mean_distance": float(distance[members].mean()) if len(members) else 0.0}  # fmt: skip
        if sheets is not None and len(members):
            sheets.mkdir(parents=True, exist_ok=True)
            entry["sheet"] = str(sheets / f"cluster-{c:03d}.png")
            _contact_sheet(e, c, order, distance, Path(entry["sheet"]), per_sheet)
        clusters.append(entry)
    images = [{"row": i, "path": e.names[i], "cluster": int(assignment[i]), "distance": float(distance[i])}
              for i in range(len(e))]  # fmt: skip
    return {"k": k, "seed": seed, "clusters": clusters, "images": images}


def _contact_sheet(e: Embeddings, cluster: int, order: np.ndarray, distance: np.ndarray, path: Path,
                   per_sheet: int) -> None:  # fmt: skip
    from byol.visualize import picture_rows

    width = max(1, per_sheet // 2)
    central, outliers = order[:width].tolist(), order[::-1][: min(width, max(len(order) - width, 0))].tolist()
    rows = [("nearest the centre", central)] + [("farthest (outliers)", outliers)] * bool(outliers)
    pictures = thumbnails(e, [r for _, rs in rows for r in rs])
    drawn, at = [], 0
    for label, rs in rows:
        drawn.append((label, pictures[at : at + len(rs)], [f"{distance[r]:.3f}" for r in rs]))
        at += len(rs)
    picture_rows(path, drawn, f"cluster {cluster}: {len(order)} images (distance to the centre under each)")
