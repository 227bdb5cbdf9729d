"""Your own photos (issue 34): folders flat, nested or by class, hidden files, EXIF orientation, decoding at the
size the views need, unreadable files in evaluation, and unlabelled runs end to end."""

import json
import logging
import os
import tempfile
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

import byol.policies
import byol.train
from byol.augment import get_views
from byol.cli import main
from byol.data import decode as decode_module
from byol.data import eval_batches, labelled, load_dataset
from byol.data.decode import MARGIN, SCALES, FolderCrops, decode_crops, decode_scale, load_oriented, random_box
from byol.data.folder import walk_images
from byol.errors import DataError

CPU = torch.device("cpu")


def _png(path: Path, value: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _mac_debris(folder: Path) -> None:
    """What a folder copied from a Mac holds beside its images: AppleDouble files, .DS_Store, __MACOSX."""
    for image in [p for p in folder.rglob("*.png")]:
        (image.parent / f"._{image.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble, not an image")
    (folder / ".DS_Store").write_bytes(b"Bud1 not an image")
    _png(folder / ".ipynb_checkpoints" / "copy.png")
    _png(folder / "__MACOSX" / "x.png")


# --- what a folder holds -------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "dog", "2019", ".hidden", "__MACOSX", "._x", "ünï", "sp ace"])
FILES = st.sampled_from(["x.jpg", "y.PNG", "z.webp", "._x.jpg", ".DS_Store", "notes.txt", "raw.heic"])
TREES = st.lists(st.tuples(st.lists(NAMES, max_size=3), FILES), min_size=1, max_size=12)


def _is_image(relative: str) -> bool:
    parts = relative.split("/")
    return not any(p.startswith(".") or p == "__MACOSX" for p in parts) and parts[-1].lower().endswith(
        (".jpg", ".png", ".webp")
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREES)
def test_every_image_below_a_folder_is_found_once_and_nothing_hidden_is(tmp_path_factory, tree):
    root = tmp_path_factory.mktemp("tree")
    written = set()
    for folders, name in tree:
        relative = "/".join([*folders, name])
        path = root / relative
        if any(parent.is_file() for parent in path.parents) or path.is_dir():
            continue  # a name already taken by a file or a folder
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        written.add(relative)
    found, unread = walk_images(root)
    assert found == sorted(r for r in written if _is_image(r))
    assert unread == sum(1 for r in written if r.endswith(".heic") and not any(
        p.startswith(".") or p == "__MACOSX" for p in r.split("/")))  # fmt: skip
    if not found:
        with pytest.raises(DataError, match="holds no image") as e:
            load_dataset("imagefolder", "train", str(root))
        assert "\n" not in str(e.value) and (".heic" in str(e.value)) == bool(unread)
        return
    dataset = load_dataset("imagefolder", "train", str(root))
    folders = {r.split("/", 1)[0] for r in found if "/" in r}
    by_class = all("/" in r for r in found) and len(folders) >= 2
    assert labelled(dataset) == by_class and dataset.layout == ("by class" if by_class else dataset.layout)
    if not by_class:  # unlabelled: every image trains, none is held out
        assert sorted(os.path.relpath(p, root).replace(os.sep, "/") for p in dataset.paths) == found
        assert (dataset.labels == -1).all() and dataset.classes == ()
    else:
        assert dataset.classes == tuple(sorted(unicodedata.normalize("NFC", f) for f in folders))


def test_layouts_flat_nested_and_by_class_and_the_labels_setting(tmp_path):
    flat, nested, classes = tmp_path / "flat", tmp_path / "nested", tmp_path / "classes"
    for i in range(6):
        _png(flat / f"{i}.png", i)
        _png(nested / ("loose.png" if i == 0 else f"{2018 + i % 2}/trip{i % 3}/{i}.png"), i)
    for i in range(40):  # enough that the held-out tenth (chosen by a path hash) is not empty
        _png(classes / ("cat" if i % 2 else "dog") / "deeper" / f"{i}.png", i)
    for folder in (flat, nested, classes):
        _mac_debris(folder)
    f, n, c = (load_dataset("imagefolder", "train", str(p)) for p in (flat, nested, classes))
    assert (f.layout, len(f), f.classes) == ("flat", 6, ())
    assert (n.layout, len(n), n.classes) == ("nested", 6, ())
    assert c.layout == "by class" and c.classes == ("cat", "dog") and len(c) + len(load_dataset(
        "imagefolder", "val", str(classes))) == 40  # fmt: skip
    assert not labelled(f) and not labelled(n) and labelled(c)
    none = load_dataset("imagefolder", "train", str(classes), labels="none")
    assert none.layout == "nested" and len(none) == 40 and not labelled(none)  # every image, no hold-out
    with pytest.raises(DataError, match="outside class folders"):
        load_dataset("imagefolder", "train", str(nested), labels="folders")
    with pytest.raises(DataError, match=r"data\.labels must be one of"):
        load_dataset("imagefolder", "train", str(flat), labels="maybe")


def test_a_symlink_loop_ends_and_a_linked_folder_is_read_once(tmp_path):
    _png(tmp_path / "photos" / "a" / "1.png")
    _png(tmp_path / "photos" / "b" / "2.png")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "a" / "loop")
    os.symlink(tmp_path / "photos" / "b", tmp_path / "photos" / "again")
    found, _ = walk_images(tmp_path / "photos")
    assert len(found) == 2 and {Path(f).name for f in found} == {"1.png", "2.png"}


def test_a_class_named_in_nfd_matches_the_same_name_in_nfc(tmp_path):
    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    for split, name in (("train", nfd), ("val", nfc)):
        for c in (name, "tea"):
            _png(tmp_path / split / c / "0.png")
    train, val = (load_dataset("imagefolder", s, str(tmp_path)) for s in ("train", "val"))
    assert train.classes == val.classes == ("café", "tea") and sorted(val.labels.tolist()) == [0, 1]


# --- decoding ------------------------------------------------------------------------------------------------

# What each EXIF orientation asks a viewer to do to the stored pixels; the stored pixels of an upright image U
# with orientation o are STORE[o](U).
STORE = {
    1: lambda im: im, 2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180), 4: lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    5: lambda im: im.transpose(Image.Transpose.TRANSPOSE), 6: lambda im: im.transpose(Image.Transpose.ROTATE_90),
    7: lambda im: im.transpose(Image.Transpose.TRANSVERSE), 8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
}  # fmt: skip


def _upright() -> Image.Image:
    """64x40, four flat quadrants of distinct colours: any wrong turn or flip moves a colour."""
    pixels = np.zeros((40, 64, 3), np.uint8)
    pixels[:20, :32], pixels[:20, 32:], pixels[20:, :32], pixels[20:, 32:] = (
        (250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0))  # fmt: skip
    return Image.fromarray(pixels)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_in_training_evaluation_and_embedding(tmp_path, orientation):
    upright = _upright()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photos" / "phone.jpg"
    path.parent.mkdir()
    STORE[orientation](upright).save(path, quality=95, exif=exif)
    assert np.abs(np.asarray(load_oriented(str(path)), float) - np.asarray(upright, float)).mean() < 4
    sizes = []
    crop = decode_crops(str(path), 32, lambda w, h: sizes.append((w, h)) or [(0, 0, w, h)])[0]
    assert sizes == [(64, 40)]  # boxes are drawn on the upright size
    expected = np.asarray(upright.resize((32, 32), Image.Resampling.BICUBIC), float)
    assert np.abs(crop.permute(1, 2, 0).numpy().astype(float) - expected).mean() < 6
    folder = load_dataset("imagefolder", "train", str(tmp_path / "photos"))
    centre = next(eval_batches(folder, batch_size=1, device=CPU, image_size=16)).images[0]  # evaluation and embed
    reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # Pillow's own reading of the tag
    side = 40 * 224 / 256
    box = ((64 - side) / 2, (40 - side) / 2, (64 + side) / 2, (40 + side) / 2)
    expected = np.asarray(reference.resize((16, 16), Image.Resampling.BICUBIC, box=box), float)
    assert np.abs(centre.permute(1, 2, 0).numpy().astype(float) - expected).mean() < 2


def _photo(path: Path, width: int = 1280, height: int = 960, seed: int = 0) -> Path:
    """A photo-like JPEG: smooth shapes, edges and fine texture (a decode at reduced scale must keep them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 127 + 60 * np.sin(x / 37 + rng.uniform(0, 6)) * np.cos(y / 53) + 40 * ((x // 97 + y // 83) % 2)
    image = image[..., None] + rng.normal(0, 6, (height, width, 3)) + np.array([0, 20, -20])
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def test_decoding_at_the_size_the_views_need_keeps_the_same_boxes_and_nearly_the_same_pixels(tmp_path):
    for i in range(4):
        _photo(tmp_path / "photos" / f"{i}.jpg", seed=i)
    folder = load_dataset("imagefolder", "train", str(tmp_path / "photos"))
    views = get_views("byol")
    reduced = FolderCrops(folder, size=48, views=views, seed=3)
    full = FolderCrops(folder, size=48, views=views, seed=3, reduced=False)
    scales, errors, means = [], [], []
    for epoch in range(3):
        reduced.epoch = full.epoch = epoch
        for index in range(len(folder)):
            boxes = reduced.boxes(index)(1280, 960)
            assert boxes == full.boxes(index)(1280, 960)  # the crop law and its seed do not change
            scales.append(decode_scale(boxes, 48))
            a, b = reduced[index], full[index]
            for x, y in zip(a[:2], b[:2], strict=True):
                errors.append((x.float() - y.float()).abs().mean().item())
                means.append((x.float().mean().item(), y.float().mean().item(), x.float().std().item(),
                              y.float().std().item()))  # fmt: skip
    assert max(scales) > 1  # the reduced path was taken (else the test compares a path with itself)
    # of 255 levels; boxes are cut at whole pixels of the decoded image: at 1/8 scale an edge moves by up to half
    # a decoded pixel, at most 0.4 of an output pixel (decode_scale keeps MARGIN = 1.25 decoded pixels per output
    # pixel), which is most of this difference (measured: mean 1.55, largest 3.58)
    assert np.mean(errors) < 2.0 and max(errors) < 4, (np.mean(errors), max(errors))
    m = np.array(means)
    assert np.abs(m[:, 0] - m[:, 1]).max() < 1.0 and np.abs(m[:, 2] - m[:, 3]).max() < 1.5


@settings(max_examples=200, deadline=None)
@given(
    sides=st.lists(st.tuples(st.floats(1, 5000), st.floats(1, 5000)), min_size=1, max_size=2),
    size=st.integers(8, 512),
)
def test_the_decode_scale_is_the_largest_that_keeps_every_crop_above_the_margin(sides, size):
    boxes = [(10.0, 20.0, 10.0 + w, 20.0 + h) for w, h in sides]
    scale = decode_scale(boxes, size)
    smallest = min(min(w, h) for w, h in sides)
    assert scale in (1, *SCALES)
    assert scale == 1 or smallest / scale >= MARGIN * size
    larger = [s for s in SCALES if s > scale]
    assert all(smallest / s < MARGIN * size for s in larger)


def test_a_crop_box_follows_the_released_law_whatever_the_decode(tmp_path):
    rng = np.random.default_rng(0)
    view = get_views("byol")[0]
    for _ in range(200):
        left, top, right, bottom = random_box(4032, 3024, view, rng)
        assert 0 <= left < right <= 4032 and 0 <= top < bottom <= 3024


def test_an_unreadable_file_in_evaluation_is_left_out_never_replaced(tmp_path):
    for i in range(7):
        _png(tmp_path / ("a" if i < 3 else "b") / f"{i}.png", i)
    bad = tmp_path / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a cut PNG
    folder = load_dataset("imagefolder", "train", str(tmp_path), labels="none")  # all 7, none held out
    batches = list(eval_batches(folder, batch_size=3, device=CPU, image_size=8))
    kept = torch.cat([b.indices for b in batches]).tolist()
    assert [folder.paths[i] for i in kept] == [p for p in folder.paths if p != str(bad)]  # in order, once each
    assert [s for b in batches for s in b.skipped] == [str(bad)]
    whole = torch.cat([b.images for b in batches])
    for row, i in enumerate(kept):  # each row is its own image, not a neighbour standing in for the bad one
        alone = next(iter(eval_batches(folder.subset(torch.tensor([i])), batch_size=1, device=CPU, image_size=8)))
        assert torch.equal(whole[row], alone.images[0])


def test_a_broken_folder_stops_evaluation_in_one_line(tmp_path, monkeypatch):
    for i in range(8):
        (tmp_path / f"{i}.jpg").write_bytes(b"garbage")
    monkeypatch.setattr(decode_module, "MAX_CONSECUTIVE_FAILURES", 4)
    folder = load_dataset("imagefolder", "train", str(tmp_path))
    with pytest.raises(DataError, match="unreadable images in a row"):
        list(eval_batches(folder, batch_size=2, device=CPU, image_size=8))


# --- unlabelled runs end to end ------------------------------------------------------------------------------

TINY = ["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data.image_size", "16",
        "--optim.batch_size", "8", "--train.max_steps", "3", "--quiet"]  # fmt: skip


def test_a_flat_folder_pretrains_and_says_what_it_skips_then_evaluates_on_a_named_labelled_set(
    tmp_path, caplog, capsys
):
    photos, labelled_dir = tmp_path / "photos", tmp_path / "labelled"
    for i in range(24):
        _png(photos / f"IMG_{i:04d}.png", i, size=(30, 20))
        _png(labelled_dir / ("cat" if i % 2 else "dog") / f"{i}.png", 100 + i, size=(20, 20))
    _mac_debris(photos)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main([*TINY, "--data-dir", str(photos), "--train.knn_every", "1", "--run-dir", str(run)]) == 0
    assert "online probe skipped" in caplog.text and "kNN monitor skipped" in caplog.text
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("data_wait_s" in r and r["data_wait_s"] >= 0 for r in records if "byol_loss" in r)
    capsys.readouterr()
    assert main(["knn", str(run), "--quiet", "--k", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no labels" in err and "--data-dir" in err and len(err.splitlines()) == 1
    assert main(["knn", str(run), "--quiet", "--k", "3", "--data-dir", str(labelled_dir)]) == 0
    assert main(["report", str(run), "--quiet"]) == 0
    report = (run / "report" / "report.md").read_text()
    # what the encoder learned, without labels: the t-SNE map coloured by k-means cluster, each query with its
    # nearest neighbours among the run's own images, and the clusters' contact sheet
    assert all(f"![{p}]({p})" in report for p in ("embedding.png", "neighbours.png", "clusters.png"))
    out = tmp_path / "features.npz"
    assert main(["embed", str(run), "--out", str(out), "--quiet"]) == 0
    saved = np.load(out)
    assert sorted(saved["paths"].tolist()) == sorted(str(p) for p in photos.glob("IMG_*.png"))
    assert saved["features"].shape[0] == 24 and (saved["labels"] == -1).all()

    run2 = tmp_path / "run2"
    with caplog.at_level(logging.INFO):
        caplog.clear()
        assert main([*TINY, "--data-dir", str(photos), "--train.knn_every", "1", "--data.eval_dir",
                     str(labelled_dir), "--run-dir", str(run2)]) == 0  # fmt: skip
    assert "kNN monitor skipped" not in caplog.text
    assert any("knn_top1" in json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines())
    assert main(["knn", str(run2), "--quiet", "--k", "3"]) == 0  # the run's evaluation set by default


@pytest.mark.parametrize(("fetch_s", "step_s"), [(1.0, 0.0), (1.0, 3.0), (0.0, 1.0), (0.05, 1.0)])
def test_the_loop_measures_its_wait_for_data_and_says_when_it_is_data_bound(
    tmp_path, monkeypatch, caplog, fetch_s, step_s
):
    now = [0.0]  # a clock of the test's own: fetching a batch takes fetch_s, a step step_s, nothing else time
    monkeypatch.setattr(byol.policies, "clock", lambda: now[0])
    real_epoch, real_step = byol.train.TrainBatches.epoch, byol.train.train_step

    def slow_epoch(self, epoch, start_step=0):
        for batch in real_epoch(self, epoch, start_step):
            now[0] += fetch_s
            yield batch

    def slow_step(*args, **kwargs):
        now[0] += step_s
        return real_step(*args, **kwargs)

    monkeypatch.setattr(byol.train.TrainBatches, "epoch", slow_epoch)
    monkeypatch.setattr(byol.train, "train_step", slow_step)
    with caplog.at_level(logging.WARNING):
        assert main(["pretrain", "--preset", "tiny", "--train.max_steps", "3", "--quiet", "--run-dir",
                     str(tmp_path / "run")]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step 1 waits for its own batch and for the next (fetched while its backward pass runs); later steps for one
    assert [r["data_wait_s"] for r in records if "byol_loss" in r] == [2 * fetch_s, fetch_s, fetch_s]
    data_bound = fetch_s / (fetch_s + step_s) > byol.policies.DATA_BOUND_SHARE
    assert caplog.text.count("data-bound") == int(data_bound)  # said once, not at every record


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exif=st.binary(min_size=0, max_size=40), alpha=st.binary(min_size=2, max_size=8), seed=st.integers(0, 2**16))
def test_odd_photo_files_give_at_most_one_line_naming_the_file_and_no_raw_warning(tmp_path, caplog, exif, alpha, seed):
    """A JPEG with a damaged EXIF block (generated bytes after a valid header) and a palette PNG with per-entry
    transparency: Pillow warns about both. Each file is decoded, by the readers and by `byol prepare`, with no
    Python warning escaping and at most one log line per file, naming it."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    rng = np.random.default_rng(seed)
    pixels = Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    pixels.save(folder / "exif.jpg", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + exif)
    palette = Image.fromarray(rng.integers(0, 4, (24, 20), dtype=np.uint8), mode="P")
    palette.putpalette(list(rng.integers(0, 255, 12, dtype=np.uint8)))
    palette.save(folder / "palette.png", transparency=alpha)
    decode_module._WARNED.clear()
    caplog.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning that escapes fails the test
        for name in ("exif.jpg", "palette.png"):
            for _ in range(2):  # twice: an image read every epoch is named once
                load_oriented(str(folder / name))
                decode_crops(str(folder / name), 8, lambda w, h: [(0, 0, w, h)])
        assert main(["prepare", str(folder), "--out", str(folder.with_name(folder.name + "-out")), "--quiet"]) == 0
    for name in ("exif.jpg", "palette.png"):
        lines = [r.getMessage() for r in caplog.records if str(folder / name) in r.getMessage()]
        assert len(lines) <= 1 and all("\n" not in line for line in lines), lines
