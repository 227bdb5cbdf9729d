"""The curation commands' figures (issue 53), printed; docs/curation.md keeps them with these commands.

    # search: top-10 of one query over 1,000,000 random 128-d features in a memory-mapped .npz, one thread
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/curation.py search --work /tmp/cur
    # duplicates: planted near-duplicates among real photos (CIFAR-10), a BYOL encoder pretrained here
    .venv/bin/python benchmarks/curation.py duplicates --encoder RUN --cifar /tmp/c10 --work /tmp/cur
    # select: which N CIFAR-10 train images to label; a linear classifier on them, test top-1, 5 seeds (select
    # chooses in the projector's output, as `byol select` does on an .npz from a run; --space features: the encoder's)
    .venv/bin/python benchmarks/curation.py select --encoder RUN --cifar /tmp/c10 --work /tmp/cur

duplicates: a calibration set (10,000 CIFAR-10 train images, 500 of them planted again, changed) chooses the
threshold, the one with the best F1 of planted pairs; the scoring set (the 10,000 test images, 500 planted) is
scored at that threshold and at the package's default. A planted copy is the original re-encoded as JPEG (quality
70), resized (to 24 px and back to 32), cropped to 90% of its side (and resized back), or recoloured (brightness and
saturation × 0.9-1.1), each a quarter of the plants, with one more of the four on top for half of them. A pair
counts as found when the two images are in one group; precision counts every pair of images the groups join.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from byol.choices import SELECT_SPACES
from byol.curate import (
    Embeddings,
    _unit,
    component_labels,
    copy_similarity,
    copy_views,
    nearest,
    read_embeddings,
    select,
    selection_space,
    unit_views,
)

BYOL = [sys.executable, "-m", "byol"]


def bench_search(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "million.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        features = rng.standard_normal((1_000_000, 128), dtype=np.float32)
        np.savez(path, features=features, labels=np.full(len(features), -1), index=np.arange(len(features)))
    start = time.perf_counter()
    e = read_embeddings(path)
    norms = e.norms  # computed once on opening, as `byol search` does
    opened = time.perf_counter() - start
    query = np.asarray(e.features[123_456])
    times = []
    for _ in range(7):
        start = time.perf_counter()
        _, rows = nearest(e.features, query, 10, norms)
        times.append(time.perf_counter() - start)
    features = np.asarray(e.features)
    exact = np.argsort(-(features @ query / np.linalg.norm(features, axis=1)))[:10]
    median, same = sorted(times)[3] * 1000, rows[0].tolist() == exact.tolist()
    print(f"1,000,000 x 128 features: opened (memory-mapped, row norms computed) in {opened * 1000:.1f} ms")
    print(
        f"top-10 of one query: median {median:.1f} ms, best {min(times) * 1000:.1f} ms, slowest "
        f"{max(times) * 1000:.1f} ms over 7 (the first reads the file); the rows of a full sort: {same}"
    )


def _cifar(root: Path, names: list[str]) -> np.ndarray:
    batches = []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            batches.append(pickle.load(f, encoding="bytes"))
    images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    labels = np.concatenate([b[b"labels"] for b in batches])
    return images, labels


def _change(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=70)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "resize":
        return image.resize((24, 24), Image.Resampling.BICUBIC).resize((32, 32), Image.Resampling.BICUBIC)
    if kind == "crop":
        side = round(32 * 0.9)
        x, y = rng.integers(0, 32 - side + 1, size=2)
        return image.crop((x, y, x + side, y + side)).resize((32, 32), Image.Resampling.BICUBIC)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.9, 1.1))


def planted_set(images: np.ndarray, folder: Path, plants: int, seed: int) -> list[tuple[str, str]]:
    """Every image as a PNG, then ``plants`` of them again, changed; returns the planted (original, copy) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"img{i:05d}.png")
    kinds = ["jpeg", "resize", "crop", "recolour"]
    pairs = []
    for n, i in enumerate(rng.choice(len(images), size=plants, replace=False).tolist()):
        copy = _change(Image.fromarray(images[i]), kinds[n % 4], rng)
        if n % 2:
            copy = _change(copy, kinds[(n // 4 + n + 1) % 4], rng)
        Image.fromarray(np.asarray(copy)).save(folder / f"dup{n:05d}.png")
        pairs.append((f"img{i:05d}.png", f"dup{n:05d}.png"))
    return pairs


def _embed(encoder: str, folder: Path, out: Path, crops: bool = False) -> None:
    if not out.exists():
        subprocess.run([*BYOL, "embed", encoder, "--dataset", "imagefolder", "--data-dir", str(folder),
                        "--split", "train", "--out", str(out), "--quiet", *(["--copy-crops"] if crops else [])],
                       check=True)  # fmt: skip


def _scores(e, truth: set[frozenset[str]], thresholds) -> list[tuple[float, float, float, int]]:
    """(threshold, precision, recall, pairs joined) per threshold, as `byol duplicates` groups (connected
    components of the pairs at or above it), the similarity matrix computed once."""
    names = [Path(n).name for n in e.names]
    where = {n: i for i, n in enumerate(names)}
    planted = np.array([[where[a], where[b]] for a, b in (tuple(p) for p in truth)])
    x = _unit(np.asarray(e.features))
    views = unit_views(copy_views(e))
    if views is None:
        return group_scores(x @ x.T, planted, thresholds)
    return group_scores(copy_similarity(x, x, views, views), planted, thresholds)  # as near_pairs scores a pair


def group_scores(sims: np.ndarray, planted: np.ndarray, thresholds) -> list[tuple[float, float, float, int]]:
    """(threshold, precision, recall, pairs joined) per threshold of the groups `byol duplicates` makes from the
    similarity matrix ``sims`` (connected components of the pairs at or above it); ``planted``: (P, 2) rows."""
    np.fill_diagonal(sims, -1.0)
    rows = []
    for t in thresholds:
        i, j = np.nonzero(np.triu(sims >= t, 1))
        component = component_labels(len(sims), i, j)
        sizes = np.bincount(component)
        joined = int((sizes * (sizes - 1) // 2).sum())
        hit = int((component[planted[:, 0]] == component[planted[:, 1]]).sum())
        rows.append((float(t), hit / max(joined, 1), hit / len(planted), joined))
    return rows


def bench_duplicates(encoder: str, cifar: Path, work: Path, crops: bool = False) -> None:
    train, _ = _cifar(cifar, [f"data_batch_{i}" for i in range(1, 6)])
    test, _ = _cifar(cifar, ["test_batch"])
    sets = {"calibration": (train[:10000], 500, 1), "scoring": (test, 500, 2)}  # of one size: as many strangers meet
    found = {}
    for name, (images, plants, seed) in sets.items():
        folder = work / f"dups-{name}"
        pairs_file = work / f"dups-{name}.json"
        if not pairs_file.exists():
            pairs_file.write_text(json.dumps(planted_set(images, folder, plants, seed)))
        npz = work / f"dups-{name}{'-crops' if crops else ''}.npz"
        _embed(encoder, folder, npz, crops)
        planted = {frozenset(p) for p in json.loads(pairs_file.read_text())}
        found[name] = (read_embeddings(npz), planted)
    e, truth = found["calibration"]
    table = _scores(e, truth, np.round(np.arange(0.90, 0.9995, 0.0025), 4) if not crops else
                    np.round(np.arange(0.990, 0.99991, 0.00025), 5))  # fmt: skip
    best = max(table, key=lambda r: 2 * r[1] * r[2] / max(r[1] + r[2], 1e-9))
    print("calibration set (10,000 CIFAR-10 train images + 500 planted): threshold, precision, recall, pairs")
    for t, p, r, n in table:
        print(f"  {t:.5f}  {p:.3f}  {r:.3f}  {n}{'   <- best F1' if t == best[0] else ''}")
    e, truth = found["scoring"]
    ((_, p, r, n),) = _scores(e, truth, [best[0]])
    print(
        f"scoring set (10,000 CIFAR-10 test images + 500 planted) at {best[0]:.5f}: precision {p:.3f}, "
        f"recall {r:.3f} ({n} pairs joined, {len(truth)} planted)"
    )


def _features(encoder: str, cifar: Path, work: Path, split: str) -> Embeddings:
    out = work / f"cifar10-{split}.npz"
    if not out.exists():
        subprocess.run([*BYOL, "embed", encoder, "--dataset", "cifar10", "--data-dir", str(cifar), "--split", split,
                        "--out", str(out), "--quiet"], check=True)  # fmt: skip
    return read_embeddings(out)


HELD_OUT = 10_000  # --held-out: the last train images grade, the others are chosen from (the test split unused)


def bench_select(
    encoder: str, cifar: Path, work: Path, counts: list[int], seeds: int, space: str | None, held_out: bool
) -> None:
    """`select` chooses in ``space`` (as the command does: the head where the .npz has it); the classifier is
    always trained on the encoder's features of the chosen images. ``held_out``: chosen from the first 40,000
    train images, graded on the last 10,000 (how a setting is chosen without the test split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = _features(encoder, cifar, work, "train")
    space, choose_in = selection_space(train, space)
    train_x, train_y, choose_in = np.asarray(train.features), train.labels, np.asarray(choose_in)
    scaler = StandardScaler().fit(train_x)  # statistics of every train image: no label is used
    if held_out:
        pool_s, pool_y, choose_in = scaler.transform(train_x[:-HELD_OUT]), train_y[:-HELD_OUT], choose_in[:-HELD_OUT]
        grade_s, grade_y, graded = scaler.transform(train_x[-HELD_OUT:]), train_y[-HELD_OUT:], "held-out train"
    else:
        test = _features(encoder, cifar, work, "test")
        pool_s, pool_y = scaler.transform(train_x), train_y
        grade_s, grade_y, graded = scaler.transform(np.asarray(test.features)), test.labels, "test"
    print(f"select chooses among {len(choose_in)} images in the {space} space ({choose_in.shape[1]}-d); "
          f"graded on the {graded} images")  # fmt: skip
    results: dict[tuple[str, int], list[float]] = {}
    for count in counts:
        for method in ("random", "typical", "diverse"):
            for seed in range(seeds):
                rows = select(choose_in, count, method, seed)
                classifier = LogisticRegression(max_iter=2000, C=1.0).fit(pool_s[rows], pool_y[rows])
                top1 = 100 * float((classifier.predict(grade_s) == grade_y).mean())
                results.setdefault((method, count), []).append(top1)
                print(
                    f"  N={count} {method} seed {seed}: {top1:.2f} ({len(set(pool_y[rows].tolist()))} classes)",
                    flush=True,
                )
    print(f"N, method, {graded} top-1 mean ± std over seeds, gain over random")
    for count in counts:
        base = np.mean(results[("random", count)])
        for method in ("random", "typical", "diverse"):
            r = results[(method, count)]
            print(f"  {count:>5}  {method:<8} {np.mean(r):6.2f} ± {np.std(r):4.2f}  {np.mean(r) - base:+6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("search", "duplicates", "select"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/byol-curation"))
    parser.add_argument("--encoder", help="a run or export pretrained on CIFAR-10 train images without labels")
    parser.add_argument("--cifar", type=Path, help="folder holding cifar-10-batches-py/")
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--copy-crops", action="store_true", help="duplicates: embed with --copy-crops")
    parser.add_argument("--space", choices=SELECT_SPACES, help="select: as `byol select --space` (default: its own)")
    parser.add_argument("--held-out", action="store_true", help="select: grade on the last 10,000 train images")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "search":
        bench_search(args.work)
    elif args.what == "duplicates":
        bench_duplicates(args.encoder, args.cifar, args.work, args.copy_crops)
    else:
        counts = [int(c) for c in args.counts.split(",")]
        bench_select(args.encoder, args.cifar, args.work, counts, args.seeds, args.space, args.held_out)


if __name__ == "__main__":
    main()
