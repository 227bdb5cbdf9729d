"""Segmentation transfer (appendix D.4): the dilated encoder, the FCN head, mIoU from the confusion matrix,
the training views, a synthetic set learned, and `byol segment` on folders good and bad."""

import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from byol.cli import main
from byol.data.masks import CAMVID, Classes, SegmentationSplit, fraction_subset, read_classes, read_split
from byol.evaluate.segment import (
    SegmentationData,
    SegmentationNetwork,
    SegmentConfig,
    augment,
    confusion_matrix,
    learning_rate,
    scores,
    segmentation_transfer,
)
from byol.evaluate.settings import PAPER_LRS
from byol.networks import ResNet, dilate_last_stage

# ------------------------------------------------------------------------------------------- the network


@pytest.mark.parametrize(("depth", "stem", "side"), [(18, "imagenet", 16), (50, "imagenet", 16), (18, "cifar", 4)])
def test_dilation_keeps_the_weights_and_the_features_where_it_cannot_matter(depth, stem, side):
    """An input whose last-stage input is 1x1: a dilated 3x3 convolution sees only its centre tap, as the
    undilated one does, and stride 1 or 2 on one pixel gives one pixel, so the features are the same."""
    torch.manual_seed(0)
    plain = ResNet(depth=depth, width=0.125, stem=stem).eval()
    dilated = dilate_last_stage(ResNet(depth=depth, width=0.125, stem=stem)).eval()
    dilated.load_state_dict(plain.state_dict())  # the same weights load: dilation changes no shape
    x = torch.randn(2, 3, side, side)
    assert plain.stages[:-1](plain.stem(x)).shape[-2:] == (1, 1)
    assert torch.allclose(plain.feature_map(x), dilated.feature_map(x), atol=1e-6)
    # where the receptive field does change, dilation changes the output and keeps the resolution
    big = torch.randn(1, 3, side * 8, side * 8)
    assert dilated.feature_map(big).shape[-1] == 2 * plain.feature_map(big).shape[-1]


def test_total_stride_is_16_with_the_imagenet_stem_and_4_with_the_cifar_stem():
    for stem, stride in (("imagenet", 16), ("cifar", 4)):
        encoder = dilate_last_stage(ResNet(depth=18, width=0.125, stem=stem))
        assert encoder.feature_map(torch.zeros(1, 3, 64, 64)).shape[-1] == 64 // stride


@pytest.mark.parametrize(("depth", "out_dim"), [(18, 512), (50, 2048)])
def test_fcn_head_shapes_for_depths_18_and_50(depth, out_dim):
    encoder = ResNet(depth=depth, width=1.0, stem="imagenet")
    model = SegmentationNetwork(encoder, num_classes=21).eval()
    convs = [m for m in model.head if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.dilation) for c in convs] == [
        (out_dim, 256, (3, 3), (6, 6)), (256, 256, (3, 3), (6, 6)), (256, 21, (1, 1), (1, 1)),
    ]  # fmt: skip
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.head) == 2
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 33, 49)).shape == (1, 21, 33, 49)  # upsampled to the input
        assert model(torch.zeros(1, 3, 32, 32), size=(50, 45)).shape == (1, 21, 50, 45)
    narrow = SegmentationNetwork(ResNet(depth=18, width=0.25, stem="cifar"), num_classes=3)
    assert narrow.head[0].out_channels == 64  # 256 scaled with the encoder's width
    assert encoder.stages[-1][0].conv2.dilation == (1, 1)  # the caller's encoder is left as it was


# ------------------------------------------------------------------------------------------------ metrics


def per_image_iou(truths, predictions, num_classes, void):
    """mIoU by sets of pixel positions, image by image: an independent computation of the same figure."""
    intersection, union = np.zeros(num_classes), np.zeros(num_classes)
    for truth, prediction in zip(truths, predictions, strict=True):
        valid = truth != void
        for c in range(num_classes):
            t, p = (truth == c) & valid, (prediction == c) & valid
            intersection[c] += np.logical_and(t, p).sum()
            union[c] += np.logical_or(t, p).sum()
    present = union > 0
    return 100 * (intersection[present] / union[present]).mean()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 6), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1),
    st.booleans(),
)  # fmt: skip
def test_miou_from_the_confusion_matrix_matches_a_per_image_computation(classes, images, h, w, seed, big_void):
    rng = np.random.default_rng(seed)
    void = 255 if big_void else classes  # VOC's 255, or the id right after the classes (CamVid's 11)
    truths = [np.where(rng.random((h, w)) < 0.2, void, rng.integers(0, classes, (h, w))) for _ in range(images)]
    predictions = [rng.integers(0, classes, (h, w)) for _ in range(images)]
    confusion = sum(
        confusion_matrix(torch.from_numpy(t), torch.from_numpy(p), classes, void)
        for t, p in zip(truths, predictions, strict=True)
    )
    assert confusion.sum() == sum((t != void).sum() for t in truths)  # void is never counted
    result = scores(confusion)
    if confusion.sum():
        assert result["miou"] == pytest.approx(per_image_iou(truths, predictions, classes, void))
        accuracy = 100 * sum(((t == p) & (t != void)).sum() for t, p in zip(truths, predictions, strict=True))
        assert result["pixel_acc"] == pytest.approx(accuracy / confusion.sum().item())


def test_a_void_pixel_predicted_as_anything_changes_no_score():
    truth = torch.tensor([[0, 1], [11, 11]])
    base = scores(confusion_matrix(truth, torch.tensor([[0, 1], [0, 0]]), 11, 11))
    other = scores(confusion_matrix(truth, torch.tensor([[0, 1], [5, 1]]), 11, 11))
    assert base == other and base["miou"] == 100.0
    assert base["iou"][5] is None  # absent from truth and prediction: no IoU, not a zero in the mean


# ------------------------------------------------------------------------------------------ training views


@settings(max_examples=30, deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(8, 48), st.integers(0, 2**31))
def test_the_view_moves_image_and_mask_together(h, w, crop, seed):
    """An image whose first channel is its mask's ids: after scaling, padding, cropping and flipping, every
    non-void pixel of the view's mask still sits on its own id in the image (nearest for both here), and padding
    is void in the mask."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 5, (h, w), generator=torch.Generator().manual_seed(seed))
    config = SegmentConfig(crop_size=crop)
    image = torch.stack([mask.float(), torch.zeros(h, w), torch.ones(h, w)])
    ratio_free = SegmentConfig(crop_size=crop, scale_range=(1.0, 1.0))
    for cfg in (config, ratio_free):
        view, view_mask = augment(image, mask, cfg, void=255, g=g)
        assert view.shape == (3, crop, crop) and view_mask.shape == (crop, crop)
        padded = view_mask == 255
        assert torch.all(view[2][padded] == 0) and torch.allclose(view[2][~padded], torch.ones(1), atol=1e-5)
        if cfg is ratio_free:  # no resampling: the ids in the image are exactly the mask's
            assert torch.equal(view[0][~padded].long(), view_mask[~padded])


def test_the_learning_rate_drops_tenfold_at_70_and_90_percent():
    assert [learning_rate(s, 100, 0.1, (0.7, 0.9)) for s in (0, 69, 70, 89, 90, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    assert pytest.approx((1e-3, 10**-2.5, 1e-2, 10**-1.5, 1e-1)) == PAPER_LRS


def test_mask_fractions_are_seeded_and_keep_at_least_one():
    assert fraction_subset(367, 0.1, 0) == fraction_subset(367, 0.1, 0)
    assert len(fraction_subset(367, 0.1, 0)) == 37 and fraction_subset(367, 0.1, 0) != fraction_subset(367, 0.1, 1)
    assert len(fraction_subset(5, 0.01, 3)) == 1


# ------------------------------------------------------------------------------------------ learning


def shapes_split(count, seed, size=24):
    """Squares (class 1) and discs (class 2) of random colours on a noisy background (class 0), a void border."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    yy, xx = np.mgrid[:size, :size]
    for _ in range(count):
        image = rng.integers(0, 80, (size, size, 3))
        mask = np.zeros((size, size), dtype=np.int64)
        flip = rng.integers(2)
        for shape in (1, 2):
            r = rng.integers(size // 8, size // 5 + 1)  # each in its own half, swapped at random: no overlap
            half = (shape + flip) % 2 * size // 2
            cy, cx = rng.integers(r + 1, size - r - 1), half + rng.integers(r + 1, size // 2 - r - 1)
            square = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            inside = square if shape == 1 else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            image[inside] = [200, 60, 60] if shape == 1 else [60, 200, 200]
            mask[inside] = shape
        mask[0, :] = 3  # void
        images.append(torch.from_numpy(image.astype(np.uint8)).permute(2, 0, 1).contiguous())
        masks.append(torch.from_numpy(mask))
    return SegmentationSplit("synthetic", images, masks, masks, [f"{i}.png" for i in range(count)])


def test_a_synthetic_shapes_set_is_learned_to_90_miou():
    torch.manual_seed(0)
    classes = Classes(("background", "square", "disc"), void=3)
    data = SegmentationData(shapes_split(48, 0, 48), None, shapes_split(16, 2, 48), classes)
    encoder = ResNet(depth=18, width=0.125, stem="cifar")
    config = SegmentConfig(lr=0.1, iterations=60, batch_size=8, crop_size=48, scale_range=(0.75, 1.25))
    result, _ = segmentation_transfer(encoder, data, config=config, device=torch.device("cpu"), progress=False)
    assert result["miou"] >= 90, result["per_class_iou"]
    assert result["sweep"] == [] and result["chosen_lr"] == 0.1
    assert sum(map(sum, result["seeds"][0]["confusion"])) == sum(int((m != 3).sum()) for m in data.test.masks)


def test_the_sweep_picks_the_lr_with_the_best_held_out_miou_and_skips_a_diverged_one():
    classes = Classes(("background", "square", "disc"), void=3)
    data = SegmentationData(shapes_split(16, 0), None, shapes_split(4, 2), classes)
    config = SegmentConfig(lrs=(1e-4, 0.1, 1e5), iterations=8, batch_size=4, crop_size=16)
    encoder = ResNet(depth=18, width=0.125, stem="cifar")
    result, _ = segmentation_transfer(encoder, data, config=config, device=torch.device("cpu"), progress=False)
    scored = {row["lr"]: row["held_out_miou"] for row in result["sweep"]}
    assert scored[1e5] is None  # diverged, not chosen
    assert result["chosen_lr"] == max((lr for lr in scored if scored[lr] is not None), key=scored.get)
    assert result["sweep_on"] == "held-out part of train"


# ------------------------------------------------------------------------------------------ the command


def write_folder(root, counts=(("train", 6), ("val", 2), ("test", 3)), size=(20, 16), classes=True):
    for split, count in counts:
        data = shapes_split(count, len(split), size=24)
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            image = data.images[i].permute(1, 2, 0).numpy()[: size[1], : size[0]]
            Image.fromarray(image).save(root / split / "images" / f"img{i}.jpg", quality=95)
            Image.fromarray(data.masks[i].numpy()[: size[1], : size[0]].astype(np.uint8)).save(
                root / split / "masks" / f"img{i}.png"
            )
    if classes:
        (root / "classes.json").write_text(json.dumps({"classes": ["background", "square", "disc"], "void": 3}))
    return root


FAST = ["--iterations", "3", "--batch-size", "2", "--crop-size", "16", "--lrs", "0.01,0.1", "--quiet"]


def test_segment_writes_the_result_and_the_picture_for_a_run(finished_run, tmp_path, capsys):
    finished_run = shutil.copytree(finished_run, tmp_path / "run")  # the shared run is only read
    folder = write_folder(tmp_path / "shapes")
    assert main(["segment", str(finished_run), "--data-dir", str(folder), "--seeds", "2", *FAST]) == 0
    result = json.loads((finished_run / "eval" / "segment_shapes.json").read_text())
    assert (finished_run / "eval" / "segment_shapes.png").stat().st_size > 0
    assert result["classes"] == ["background", "square", "disc"] and result["void_id"] == 3
    assert [run["seed"] for run in result["seeds"]] == [0, 1] and result["chosen_lr"] in (0.01, 0.1)
    assert result["miou"] == pytest.approx(sum(run["miou"] for run in result["seeds"]) / 2)
    assert result["sweep_on"] == "val" and len(result["sweep"]) == 2
    for run in result["seeds"]:
        assert scores(torch.tensor(run["confusion"]))["miou"] == pytest.approx(run["miou"])
    assert "mIoU" in capsys.readouterr().out
    # the report shows it, with the picture
    assert main(["report", str(finished_run), "--no-embedding", "--quiet"]) == 0
    report = (finished_run / "report" / "report.md").read_text()
    assert "segment_shapes.png" in report and "not a byol evaluation result" not in report


def test_segment_reads_an_export_with_out_and_a_folder_without_classes_json(finished_run, tmp_path):
    folder = write_folder(tmp_path / "shapes", counts=(("train", 5), ("test", 2)), classes=False)
    out = tmp_path / "seg.json"
    args = ["segment", str(finished_run.parent / "enc.safetensors"), "--data-dir", str(folder), "--out", str(out)]
    assert main([*args, "--void-id", "3", "--frozen", "--mask-fraction", "0.5", *FAST]) == 0
    result = json.loads(out.read_text())
    assert result["classes"] == ["0", "1", "2"] and result["settings"]["frozen"]
    assert result["seeds"][0]["masks"] == 3 and result["sweep_on"] == "held-out part of train"


def bad_folder(tmp_path, case):
    folder = write_folder(tmp_path / "data")
    if case == "mask size":
        Image.new("L", (7, 7)).save(folder / "train" / "masks" / "img2.png")
    elif case == "id beyond the classes":
        Image.fromarray(np.full((16, 20), 9, dtype=np.uint8)).save(folder / "test" / "masks" / "img1.png")
    elif case == "image without mask":
        (folder / "val" / "masks" / "img0.png").unlink()
    elif case == "empty split":
        for path in (folder / "test" / "images").iterdir():
            path.unlink()
    elif case == "colour mask":
        Image.new("RGB", (20, 16)).save(folder / "train" / "masks" / "img0.png")
    elif case == "classes.json":
        (folder / "classes.json").write_text("{not json")
    elif case == "void is a class":
        (folder / "classes.json").write_text(json.dumps({"classes": ["a", "b"], "void": 1}))
    elif case == "no train folder":
        (folder / "train" / "images").rename(folder / "train" / "pictures")
    return folder


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("mask size", "img2.png"), ("id beyond the classes", "holds id 9"), ("image without mask", "has no mask"),
        ("empty split", "holds no image"), ("colour mask", "not class ids"), ("classes.json", "classes.json"),
        ("void is a class", "void id 1"), ("no train folder", "is not a folder"),
    ],
)  # fmt: skip
def test_bad_folders_get_one_line_and_exit_2_before_anything_is_written(finished_run, tmp_path, capsys, case, named):
    folder = bad_folder(tmp_path, case)
    out = tmp_path / "out.json"
    assert main(["segment", str(finished_run), "--data-dir", str(folder), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("byol segment: error:") and named in err, err
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_camvid_names_and_void_are_known_and_checked(tmp_path):
    classes = read_classes(tmp_path, "camvid", None)
    assert classes.names == CAMVID[0] and classes.void == 11 and len(classes) == 11
    assert read_classes(tmp_path, "camvid", 255).void == 255
    assert read_classes(tmp_path, "folder", None) is None


def test_masks_are_resized_by_nearest_neighbour_only(tmp_path):
    folder = write_folder(tmp_path / "shapes", counts=(("train", 2),), size=(20, 16))
    split = read_split(folder, "train", read_classes(folder, "folder", None), scale=0.55, progress=False)
    for mask, full in zip(split.masks, split.full_masks, strict=True):
        assert mask.shape == (9, 11) and full.shape == (16, 20)
        assert set(mask.unique().tolist()) <= set(full.unique().tolist())  # no blended id
    assert split.images[0].shape == (3, 9, 11) and split.images[0].dtype == torch.uint8


def test_no_evaluation_writes_over_the_architecture_file_of_the_export_it_reads(finished_run, tmp_path, capsys):
    """`--out enc.json` beside `enc.safetensors` would replace the export's architecture file: refused, unchanged."""
    export = tmp_path / "enc.safetensors"
    shutil.copy(finished_run.parent / "enc.safetensors", export)
    shutil.copy(finished_run.parent / "enc.json", tmp_path / "enc.json")
    before = (tmp_path / "enc.json").read_bytes()
    folder = write_folder(tmp_path / "shapes")
    for args in (
        ["knn", str(export), "--dataset", "synthetic", "--out", str(tmp_path / "enc.json"), "--quiet"],
        ["segment", str(export), "--data-dir", str(folder), "--out", str(tmp_path / "enc.json"), *FAST],
    ):
        assert main(args) == 2, args
        assert "would overwrite" in capsys.readouterr().err
        assert (tmp_path / "enc.json").read_bytes() == before
