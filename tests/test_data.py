import gzip
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol.augment import get_views
from byol.config import apply_overrides, get_preset
from byol.data import TrainBatches, epoch_permutation, eval_batches, load_dataset
from byol.data import decode as decode_module
from byol.data.arrays import FASHION_MNIST_DIR
from byol.errors import ConfigError, DataError
from byol.train import pretrain

CPU = torch.device("cpu")


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_reader_on_written_idx_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(7) % 10)
    ds = load_dataset("fashion-mnist", "test", str(tmp_path))
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert ds.labels.tolist() == list(range(7))


def test_fashion_mnist_wrong_format_and_missing_files(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x89PNG not idx"))
    with pytest.raises(DataError, match="not an IDX file"):
        load_dataset("fashion-mnist", "test", str(tmp_path))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("fashion-mnist", "train", str(tmp_path))
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("fashion-mnist", "train", str(tmp_path / "nope"))


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files():
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[0] == 9  # the first training image is an ankle boot
    assert 0.27 < train.images.float().mean().item() / 255 < 0.30  # the published mean, 0.2860


def _write_cifar(root: Path, n: int, label_key: str, files: list[str], meta: str, names_key: str, names: list[str]):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for file in files:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key.encode(): list(range(n))}
        (root / file).write_bytes(pickle.dumps(batch))
    (root / meta).write_bytes(pickle.dumps({names_key.encode(): [x.encode() for x in names]}))


def test_cifar10_and_cifar100_python_layout(tmp_path):
    files = [f"data_batch_{i}" for i in range(1, 6)]
    _write_cifar(tmp_path / "cifar-10-batches-py", 4, "labels", [*files, "test_batch"], "batches.meta",
                 "label_names", [f"c{i}" for i in range(10)])  # fmt: skip
    train = load_dataset("cifar10", "train", str(tmp_path))
    assert train.images.shape == (20, 3, 32, 32) and train.classes[3] == "c3" and len(train.classes) == 10
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())[b"data"]
    assert torch.equal(train.images[0], torch.from_numpy(raw[0].reshape(3, 32, 32)))  # channel-major rows
    _write_cifar(tmp_path / "c100" / "cifar-100-python", 3, "fine_labels", ["train", "test"], "meta",
                 "fine_label_names", [f"f{i}" for i in range(100)])  # fmt: skip
    test = load_dataset("cifar100", "test", str(tmp_path / "c100"))
    assert test.images.shape == (3, 3, 32, 32) and len(test.classes) == 100


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_cifar_pickle_with_code_is_refused(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    (root / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        load_dataset("cifar10", "test", str(tmp_path))


def test_stl10_binary_layout_is_column_major(tmp_path):
    root = tmp_path / "stl10_binary"
    root.mkdir()
    image = np.zeros((3, 96, 96), dtype=np.uint8)
    image[0, 10, 20] = 255  # channel 0, row 10, column 20
    image.transpose(0, 2, 1).tofile(root / "train_X.bin")  # the file stores each channel column by column
    np.array([3], dtype=np.uint8).tofile(root / "train_y.bin")
    np.zeros((2, 3, 96, 96), dtype=np.uint8).tofile(root / "unlabeled_X.bin")
    (root / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    train = load_dataset("stl10", "train", str(tmp_path))
    assert train.images[0, 0, 10, 20] == 255 and train.images.sum() == 255
    assert train.labels.tolist() == [2] and train.classes[2] == "k2"  # labels 1..10 become 0..9
    both = load_dataset("stl10", "train+unlabeled", str(tmp_path))
    assert len(both) == 3 and both.labels.tolist() == [2, -1, -1]
    (root / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="multiple of 3x96x96"):
        load_dataset("stl10", "test", str(tmp_path))


def _image_folder(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (40 + 4 * i, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def test_image_folder_scan_decode_and_crops(tmp_path):
    root = _image_folder(tmp_path)
    ds = load_dataset("imagefolder", "train", str(root))
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    batches = TrainBatches(ds, batch_size=3, seed=0, device=CPU, views=get_views("byol"), image_size=24)
    batch = next(batches.epoch(0))
    assert batch.images.shape == (3, 3, 24, 24) and batch.second_crop is not None
    assert batch.second_crop.shape == (3, 3, 24, 24) and not torch.equal(batch.images, batch.second_crop)
    again = next(batches.epoch(0))
    assert torch.equal(batch.images, again.images)  # crops are seeded by (seed, epoch, index)
    centre = next(eval_batches(ds, batch_size=6, device=CPU, image_size=24))
    assert centre.images.shape == (6, 3, 24, 24) and centre.labels.tolist() == ds.labels.tolist()


def test_corrupt_image_is_skipped_named_and_counted(tmp_path, caplog):
    root = _image_folder(tmp_path)
    bad = root / "train" / "cat" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a truncated JPEG
    ds = load_dataset("imagefolder", "train", str(root))
    with caplog.at_level(logging.WARNING):
        batch = next(eval_batches(ds, batch_size=6, device=CPU, image_size=24))
    assert batch.skipped == (str(bad),) and str(bad) in caplog.text
    assert batch.labels.tolist() == [0, 0, 1, 1, 1] and batch.indices.tolist() == [1, 2, 3, 4, 5]  # left out
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # training: the next readable file stands in, the batch stays full
        train = next(TrainBatches(ds, batch_size=6, seed=0, device=CPU, views=get_views("byol"), image_size=24)
                     .epoch(0))  # fmt: skip
    assert train.skipped == (str(bad),) and len(train.images) == 6 and str(bad) in caplog.text


def test_many_consecutive_failures_stop_with_a_clear_error(tmp_path, monkeypatch):
    root = _image_folder(tmp_path)
    for p in (root / "train").rglob("*.*"):
        p.write_bytes(b"garbage")
    monkeypatch.setattr(decode_module, "MAX_CONSECUTIVE_FAILURES", 4)
    ds = load_dataset("imagefolder", "train", str(root))
    with pytest.raises(DataError, match="4 unreadable images in a row"):
        next(eval_batches(ds, batch_size=2, device=CPU, image_size=24))


def test_image_folder_errors_say_what_was_expected(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset("imagefolder", "train", str(tmp_path / "missing"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"holds no image; images are files ending in \.jpg"):
        load_dataset("imagefolder", "train", str(tmp_path))
    (tmp_path / "train" / "empty").mkdir()  # an empty folder is no class of its own
    with pytest.raises(DataError, match="holds no image"):
        load_dataset("imagefolder", "train", str(tmp_path))
    with pytest.raises(ConfigError, match="valid datasets"):
        load_dataset("mnist", "train")


def test_in_memory_batches_are_seeded_permutations_and_resume_mid_epoch():
    ds = load_dataset("synthetic", "train", image_size=16)
    batches = TrainBatches(ds, batch_size=32, seed=7, device=CPU)
    full = list(batches.epoch(2))
    assert len(full) == len(ds) // 32
    resumed = list(batches.epoch(2, start_step=5))
    assert all(torch.equal(a.images, b.images) for a, b in zip(full[5:], resumed, strict=True))
    assert not torch.equal(epoch_permutation(512, 7, 0), epoch_permutation(512, 7, 1))
    rank0, rank1 = (epoch_permutation(512, 7, 0, rank=r, world_size=2) for r in (0, 1))
    assert set(rank0.tolist()).isdisjoint(rank1.tolist()) and len(rank0) == 256


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_pretraining_runs_on_fashion_mnist_with_the_faithful_pipeline(tmp_path):
    config = apply_overrides(get_preset("cpu-demo"), {"train.max_steps": 3, "optim.batch_size": 64})
    state, dataset = pretrain(config, tmp_path, progress=False)
    assert state.step == 3 and dataset.name == "fashion-mnist"
    assert (tmp_path / "checkpoints" / "step_000000003.pt").is_file()


def test_classes_are_matched_by_name_across_splits_and_a_class_train_lacks_is_refused(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for split, classes in (("train", ("ant", "bee", "cat")), ("val", ("bee", "cat"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / split / c / "0.png")
    with caplog.at_level(logging.WARNING):
        val = load_dataset("imagefolder", "val", str(tmp_path))
    assert val.classes == ("ant", "bee", "cat") and sorted(val.labels.tolist()) == [1, 2]  # bee and cat, by name
    assert "holds no ant" in caplog.text
    (tmp_path / "val" / "dog").mkdir()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "val" / "dog" / "0.png")
    with pytest.raises(DataError, match=r"'dog' that .* lacks"):
        load_dataset("imagefolder", "val", str(tmp_path))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_images_are_scaled_to_8_bits_by_their_depth(tmp_path, mode):
    grey = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")  # a 16-bit PNG: Pillow opens it as I;16 (some builds as I)
    with Image.open(tmp_path / "deep.png") as image:
        rgb = np.asarray(decode_module.to_rgb8(image if mode == "I;16" else image.convert("I")))
    assert rgb.shape == (8, 8, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(rgb[..., 0], np.round(grey / 257.0).astype(np.uint8))  # not saturated at 255


def test_an_image_file_name_that_is_not_utf8_is_read(tmp_path):
    import os

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(12):
            name = os.fsdecode(f"{i}-".encode() + b"\xff\xfe.png")
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / c / name)
    train, val = load_dataset("imagefolder", "train", str(tmp_path)), load_dataset("imagefolder", "val", str(tmp_path))
    assert len(train) + len(val) == 24 and len(val) > 0
    batch = next(eval_batches(val, batch_size=4, device=torch.device("cpu"), image_size=8))
    assert batch.images.shape[1:] == (3, 8, 8)


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("data_batch_1", {b"data": np.zeros((6, 3071), np.uint8), b"labels": [0] * 6}, "expected uint8 (N, 3072)"),
        ("data_batch_1", {b"data": np.zeros((6, 3072), np.uint8), b"labels": [0] * 5}, "6 images but 'labels'"),
        ("data_batch_1", {b"data": np.zeros((6, 3072), np.uint8), b"labels": [10] * 6}, "but there are 10 classes"),
        ("batches.meta", {b"names": []}, "'label_names', a list of class names"),
    ],
)
def test_cifar_files_with_the_right_names_and_wrong_contents_are_refused(tmp_path, name, content, words):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / batch).write_bytes(pickle.dumps({b"data": np.zeros((6, 3072), np.uint8), b"labels": list(range(6))}))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    assert len(load_dataset("cifar10", "train", str(tmp_path))) == 30
    (folder / name).write_bytes(pickle.dumps(content))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", str(tmp_path))
    assert words in str(e.value) and "\n" not in str(e.value)
