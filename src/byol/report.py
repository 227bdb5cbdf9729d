"""`byol report RUN_DIR`: what a run learned, as Markdown and PNG pictures, from the run's own files.

Reads ``metrics.jsonl`` (per-step records and kNN records), ``config.json``, ``eval/*.json`` and, where they are
there, the run's checkpoint and dataset; writes ``report.md`` and its pictures into ``RUN_DIR/report/``:
- the training curves; noisy ones (loss, online probe, collapse monitor) raw and faint under a bold moving
  average. The collapse plot shows the healthy level 1/√d and the warning floor 0.1/√d of the projection std;
- the kNN curve of the monitor, where the run has one;
- ``views.png``: 8 images of the training set and their T and T′ views, seeded (the same each time);
- segmentation results (``byol segment``): mIoU, per-class IoU and the picture of test predictions;
- ``embedding.png``: t-SNE maps of test-set representations coloured by class, the BYOL online encoder beside
  a random-init encoder of the same architecture (``pip install byol[viz]``).

A record or an evaluation file that is not what the package writes is left out and named in the report; every
file is written atomically, so an interrupted report leaves the previous one whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byol import rundir
from byol.checkpoint import list_checkpoints
from byol.config import finite_number
from byol.curate import centre_distances, kmeans, nearest
from byol.data import labelled, load_split, use_cache
from byol.distributed import resolve_device
from byol.errors import DataError
from byol.evaluate.common import extract_features, load_encoder_from_run
from byol.evaluate.frozen import MAX_EVAL_IMAGES as MONITOR_IMAGES
from byol.extras import require
from byol.files import atomic_write, remove_debris
from byol.loggers import add_artifacts
from byol.loss import collapse_floor
from byol.rundir import EVAL_DIR, METRICS_FILE, REPORT_DIR
from byol.visualize import MAP_IMAGES, dataset_thumbnails, embedding_map, picture_rows, pyplot, save_png, view_samples

plt = pyplot()
QUERIES, NEIGHBOURS, CLUSTERS = 6, 7, 8  # the neighbours picture: 6 queries, 7 neighbours each; 8 clusters
VIEW_THUMBNAIL = 64  # views.png: the fewest pixels a side of each picture is drawn with

STEP_KEYS = ("step", "epoch", "byol_loss", "tau", "lr", "proj_std")  # what every training record holds
RESULT_KEYS = {"protocol": str, "dataset": str, "init": str, "top1": float, "top5": float, "mean_per_class": float}
SEGMENTATION_KEYS = {"protocol": str, "dataset": str, "init": str, "miou": float, "pixel_acc": float, "miou_std": float}


def _is(value: Any, kind: type) -> bool:
    return finite_number(value) if kind is float else isinstance(value, kind)


def read_metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training-step records, kNN records) of a run; records of neither kind are left out."""
    if not (run_dir / METRICS_FILE).is_file():
        raise DataError(f"{run_dir} holds no {METRICS_FILE}; is it a byol run directory?")
    records = rundir.read_metrics(run_dir)  # records of finite numbers with a step, only
    return [r for r in records if all(k in r for k in STEP_KEYS)], [r for r in records if "knn_top1" in r]


def read_evaluations(run_dir: Path) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, Any]]], list[str]]:
    """The classification results in ``eval/``, the segmentation results (by file name), and the names of the
    files there that are neither."""
    results, segmentations, foreign = [], [], []
    for path in sorted((run_dir / EVAL_DIR).glob("*.json")):
        try:
            result = rundir.read_json(path)
        except DataError:
            result = None
        if isinstance(result, dict) and all(_is(result.get(k), kind) for k, kind in RESULT_KEYS.items()):
            results.append(result)
        elif isinstance(result, dict) and all(_is(result.get(k), kind) for k, kind in SEGMENTATION_KEYS.items()):
            segmentations.append((path.name, result))
        else:
            foreign.append(path.name)
    return results, segmentations, foreign


def _segmentation_lines(run_dir: Path, segmentations: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """A table of the segmentation results (mIoU, pixel accuracy, per-class IoU) and their pictures."""
    lines = ["### Segmentation transfer", ""]
    for name, result in segmentations:
        settings = result.get("settings", {})
        seeds = result.get("seeds", [])
        spread = f" ± {result['miou_std']:.2f} ({len(seeds)} seeds)" if len(seeds) > 1 else ""
        fraction = settings.get("mask_fraction", 1)
        how = ", frozen" if settings.get("frozen") else ", fine-tuned"
        how += f", {100 * fraction:g}% of the masks" if fraction < 1 else ""
        lines += [
            f"**{result['dataset']}**, {result['init']} encoder{how}: mIoU **{result['miou']:.2f}**{spread}, "
            f"pixel accuracy {result['pixel_acc']:.2f}% (`{EVAL_DIR}/{name}`)",
            "",
        ]
        per_class = result.get("per_class_iou", {})
        if isinstance(per_class, dict) and per_class:
            lines += ["| " + " | ".join(per_class) + " |", "|" + " ---: |" * len(per_class)]
            lines += ["| " + " | ".join("–" if v is None else f"{v:.1f}" for v in per_class.values()) + " |", ""]
        picture = Path(name).with_suffix(".png")
        if (run_dir / EVAL_DIR / picture).is_file():
            lines += [f"![{picture}](../{EVAL_DIR}/{picture})", ""]
    return lines


def moving_average(values: list[float], window: int) -> np.ndarray:
    """The mean of each value's ``window`` neighbours, centred on it (fewer at both ends, so the average does not
    lag behind a fast start), as long as ``values``."""
    cumulative = np.cumsum(np.insert(np.asarray(values, dtype=float), 0, 0.0))
    index = np.arange(len(values))
    starts = np.maximum(index - window // 2, 0)
    ends = np.minimum(index + (window + 1) // 2, len(values))
    return (cumulative[ends] - cumulative[starts]) / (ends - starts)


def _plot(path: Path, title: str, ylabel: str, series: list[tuple[str, list[float], list[float]]],
          hlines: tuple[tuple[str, float], ...] = (), smooth: bool = False) -> None:  # fmt: skip
    """Line plots over optimizer steps; ``smooth``: each series raw and faint, its moving average bold."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for label, xs, ys in series:
        if smooth and len(ys) >= 10:
            window = max(5, len(ys) // 20)
            line = ax.plot(xs, ys, linewidth=0.8, alpha=0.3)[0]
            ax.plot(xs, moving_average(ys, window), color=line.get_color(), linewidth=2,
                    label=f"{label} (mean of {window} records)")  # fmt: skip
        else:
            ax.plot(xs, ys, label=label, linewidth=1.5, marker="o" if len(xs) < 30 else None)
    for label, y in hlines:
        ax.axhline(y, linestyle="--", linewidth=1, color="grey")
        ax.annotate(
            label, (ax.get_xlim()[0], y), textcoords="offset points", xytext=(4, 3), fontsize=8, color="dimgray"
        )
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    save_png(fig, path)


def _views_picture(path: Path, config: Any) -> None:
    """``views.png``: a row of images, then a row of their T views and one of their T′ views, as one mosaic
    (pixels enlarged to at least 64 on a side, each shown whole)."""
    d = config.data
    use_cache(d.cache_dir, d.cache_bytes)
    samples = view_samples(config, load_split(d.dataset, "pretrain", d.data_dir, d.image_size, d.labels))
    scale = -(-VIEW_THUMBNAIL // d.image_size)  # whole pixels: nearest, never blurred
    rows = []
    for name, images in zip(("image", "T (view 1)", "T′ (view 2)"), samples, strict=True):
        pictures = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        pictures = pictures.repeat(scale, axis=1).repeat(scale, axis=2)
        rows.append((name, list(pictures), [""] * len(pictures)))
    title = f"views of augment preset '{config.augment.preset}' at {d.image_size} px, seed {config.train.seed}"
    picture_rows(path, rows, title)


def _embedding_pictures(out: Path, run_dir: Path, config: Any, progress: bool) -> list[str]:
    """What the encoder learned, from test-set representations: ``embedding.png``, a t-SNE map of the BYOL
    encoder beside random init, coloured by class where the run's evaluation set has classes and by k-means
    cluster where it is unlabelled; ``neighbours.png``, query images with the images the encoder finds most like
    them; ``clusters.png``, the images nearest the centre of each k-means cluster. Returns the names drawn."""
    d = config.data
    name, data_dir = d.evaluation()
    use_cache(d.cache_dir, d.cache_bytes)
    test = load_split(name, "test", data_dir, d.image_size, d.labels if name == d.dataset else "auto")
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(config.train.seed))[:MAP_IMAGES]
    test = test.subset(chosen.sort().values)
    device = resolve_device("auto")
    features = {}
    for init in ("pretrained", "random"):
        encoder = load_encoder_from_run(run_dir, init).encoder
        features[init] = extract_features(
            encoder, test, image_size=d.image_size, device=device, desc=f"{init} features", progress=progress
        )
    byol = features["pretrained"][0].numpy()
    k = min(CLUSTERS, len(test))
    assignment, centres = kmeans(byol, k, config.train.seed)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), dpi=110)
    for ax, init, title in zip(axes, ("pretrained", "random"), ("BYOL (online encoder)", "random init"), strict=True):
        found, labels = features[init]
        xy = embedding_map(found, config.train.seed)
        colour_by, names = (labels.numpy(), test.classes) if labelled(test) else (
            assignment, tuple(f"cluster {c}" for c in range(k)))  # fmt: skip
        for c, class_name in enumerate(names):
            mine = colour_by == c
            ax.scatter(xy[mine, 0], xy[mine, 1], s=4, color=plt.get_cmap("tab10" if len(names) <= 10
                       else "tab20")(c % 20), label=class_name)  # fmt: skip
        what = "test images" if labelled(test) else "images (unlabelled: coloured by BYOL's k-means clusters)"
        ax.set_title(f"{title}: t-SNE of {len(found)} {name} {what}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(names) <= 20:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=3, fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, out / "embedding.png")

    queries = np.random.default_rng(config.train.seed).choice(len(test), size=min(QUERIES, len(test)), replace=False)
    sims, rows = nearest(byol, byol[queries], NEIGHBOURS + 1)
    pictures = dataset_thumbnails(test, [r for row in rows for r in row.tolist()])
    grid = [("query" if q == 0 else "", pictures[q * (NEIGHBOURS + 1) : (q + 1) * (NEIGHBOURS + 1)],
             ["query", *(f"{s:.3f}" for s in sims[q, 1:])]) for q in range(len(queries))]  # fmt: skip
    picture_rows(out / "neighbours.png", grid, "each query (left) and the test images the BYOL encoder finds most "
                 "like it (cosine similarity under each)")  # fmt: skip

    distance = centre_distances(byol, assignment, centres)
    sheet = []
    for c in np.argsort(-np.bincount(assignment, minlength=k), kind="stable").tolist():
        members = np.flatnonzero(assignment == c)
        central = members[np.argsort(distance[members], kind="stable")][: NEIGHBOURS + 1].tolist()
        sheet.append((f"{c}: {len(members)}", dataset_thumbnails(test, central), [""] * len(central)))
    picture_rows(out / "clusters.png", sheet, f"k-means clusters of the BYOL features (k = {k}): the images nearest "
                 "each centre, largest cluster first")  # fmt: skip
    return ["embedding.png", "neighbours.png", "clusters.png"]


def _picture(make: Any, name: str, notes: list[str]) -> bool:
    """Makes one picture that needs the run's data or checkpoint; where they are not there, a note says why."""
    try:
        make()
    except DataError as e:
        notes.append(f"{name} not drawn: {e}")
        return False
    return True


def _curves(out: Path, steps: list[dict[str, Any]], knn: list[dict[str, Any]], d: int) -> list[str]:
    """The training curves' pictures in ``out``: loss, τ, lr, the collapse monitor, kNN and the probe where the run
    has them; returns their names."""
    x = [r["step"] for r in steps]

    _plot(out / "loss.png", "BYOL loss (sum of both view orders, range 0–8)", "loss",
          [("BYOL loss", x, [r["byol_loss"] for r in steps])], smooth=True)  # fmt: skip
    _plot(out / "tau.png", "target decay rate τ (cosine schedule to 1)", "τ", [("τ", x, [r["tau"] for r in steps])])
    _plot(out / "learning_rate.png", "learning rate (warm-up, then cosine)", "learning rate",
          [("lr", x, [r["lr"] for r in steps])])  # fmt: skip
    _plot(out / "collapse.png", "collapse monitor: std of ℓ2-normalised projections", "std per dimension",
          [("projection std", x, [r["proj_std"] for r in steps])], smooth=True,
          hlines=(("healthy 1/√d", 1 / math.sqrt(d)), ("warning 0.1/√d", collapse_floor(d))))  # fmt: skip
    plots = ["loss.png", "tau.png", "learning_rate.png", "collapse.png"]
    if knn:
        monitor = f"{MONITOR_IMAGES // 1000}k"
        title = f"kNN monitor (k=200, T=0.1): bank ≤ {monitor} train, ≤ {monitor} test images"
        _plot(out / "knn.png", title, "test top-1 (%)",
              [("kNN top-1", [r["step"] for r in knn], [r["knn_top1"] for r in knn])])  # fmt: skip
        plots.append("knn.png")
    probe = [r for r in steps if "probe_acc" in r]
    if probe:
        accuracy = [100 * r["probe_acc"] for r in probe]
        _plot(out / "probe.png", "online probe on stop-gradient y (training batches)", "accuracy (%)",
              [("online probe", [r["step"] for r in probe], accuracy)], smooth=True)  # fmt: skip
        plots.append("probe.png")
    return plots


def write_report(run_dir: str | Path, *, embedding: bool = True, progress: bool = False) -> Path:
    """Writes RUN_DIR/report/report.md and its pictures; returns the Markdown file's path. ``embedding``: the
    t-SNE map too (seconds on a CPU; needs the checkpoint, the test split and scikit-learn)."""
    run_dir = Path(run_dir)
    steps, knn = read_metrics(run_dir)
    if not steps:
        raise DataError(f"{run_dir / METRICS_FILE} holds no training records yet")
    config = rundir.read_config(run_dir)
    embedding = embedding and bool(list_checkpoints(run_dir))
    if embedding:  # refused before anything is written
        require("sklearn", "the report's embedding map (or pass --no-embedding)")
    d = config.model.projection_dim
    out = run_dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    remove_debris(out)  # what a killed report left (a live one's files are not touched)
    plots = _curves(out, steps, knn, d)

    notes: list[str] = []
    if knn:
        notes.append(
            f"The kNN curve is the monitor's: its bank holds at most {MONITOR_IMAGES:,} training images and it grades "
            f"at most {MONITOR_IMAGES:,} test images, so its last point can lie below a `byol knn` of the same encoder "
            "in the table, whose bank is the whole training split."
        )
    if _picture(lambda: _views_picture(out / "views.png", config), "views.png", notes):
        plots.insert(0, "views.png")
    if not embedding:
        notes.append(
            "embedding.png not drawn: "
            + ("--no-embedding" if list_checkpoints(run_dir) else "the run has no checkpoint")
        )
    else:
        drawn: list[str] = []
        if _picture(lambda: drawn.extend(_embedding_pictures(out, run_dir, config, progress)), "embedding.png", notes):
            plots[1:1] = drawn

    last = steps[-1]
    shown = str(run_dir).encode("utf-8", "replace").decode("utf-8")  # a name that is not UTF-8 stays printable
    lines = [
        f"# BYOL run report: `{shown}`",
        "",
        f"Dataset **{config.data.dataset}**, ResNet-{config.model.depth} width {config.model.width}, "
        f"{last['step']} optimizer steps "
        f"({last['epoch']:.2f} epochs). Final BYOL loss {last['byol_loss']:.4f}, τ {last['tau']:.5f}, "
        f"projection std {last['proj_std']:.4f} (healthy ≈ {1 / math.sqrt(d):.4f}, "
        f"collapse < {collapse_floor(d):.4f}).",
        "",
        "## Evaluations",
        "",
    ]
    evaluations, segmentations, foreign = read_evaluations(run_dir)
    if evaluations:
        lines += [
            "| protocol | dataset | encoder | top-1 | top-5 | mean per-class |",
            "| --- | --- | --- | ---: | ---: | ---: |",
        ]
        for e in evaluations:
            lines.append(
                f"| {e['protocol']} | {e['dataset']} | {e['init']} | {e['top1']:.2f} | {e['top5']:.2f} "
                f"| {e['mean_per_class']:.2f} |"
            )
    elif not segmentations:
        lines.append(
            "No evaluation yet (run `byol knn`, `byol linear`, `byol finetune` or `byol segment` on this run)."
        )
    if segmentations:
        lines += [""] * bool(evaluations) + _segmentation_lines(run_dir, segmentations)
    notes += [f"{EVAL_DIR}/{name} is not a byol evaluation result; left out" for name in foreign]
    lines += ["", "## Pictures and training curves", ""] + [f"![{p}]({p})" for p in plots]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    path = out / "report.md"
    text = "\n".join(lines) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8", "replace")))
    add_artifacts(run_dir, [out])  # to the run's experiment trackers, where it logged to any
    return path
