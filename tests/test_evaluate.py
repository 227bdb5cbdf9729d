import dataclasses
import json
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from byol.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.data import ArrayDataset, load_dataset
from byol.errors import CheckpointError, ConfigError
from byol.evaluate import (
    LinearConfig,
    balanced_subset,
    classification_metrics,
    knn_scores,
    linear_evaluation,
    load_encoder_from_run,
)
from byol.evaluate.common import split_train_val, validation_size
from byol.evaluate.frozen import FrozenEvaluation, KnnMonitor
from byol.evaluate.knn import KnnConfig
from byol.evaluate.runner import EvaluationRequest, run_evaluation
from byol.report import write_report
from byol.train import pretrain

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    config = apply_overrides(get_preset("tiny"), {"train.knn_every": 1})
    pretrain(config, path, progress=False)
    return path


def test_knn_on_hand_made_features():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.1], [0.05, 3.0], [-1.0, 0.2]])
    scores = knn_scores(train, labels, test, num_classes=3, k=2, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 1, 2]
    # weights are exp(cos / T) over the k nearest, divided by the nearest's: the first query's two neighbours are
    # both class 0
    cos = torch.nn.functional.normalize(test[:1], dim=1) @ torch.nn.functional.normalize(train[:2], dim=1).T
    torch.testing.assert_close(scores[0, 0], torch.exp(cos / 0.1).sum() / torch.exp(cos.max() / 0.1))
    assert scores[0, 1] == 0 and scores[0, 2] == 0


@settings(max_examples=60, deadline=None)
@given(temperature=st.floats(1e-6, 1e3), seed=st.integers(0, 2**16), k=st.integers(1, 12))
def test_knn_votes_are_finite_for_any_temperature_and_small_temperatures_vote_like_one_nn(temperature, seed, k):
    g = torch.Generator().manual_seed(seed)
    train, test = torch.randn(40, 8, generator=g), torch.randn(15, 8, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    scores = knn_scores(train, labels, test, num_classes=4, k=k, temperature=temperature)
    assert torch.isfinite(scores).all() and (scores.max(1).values >= 1).all()  # the nearest neighbour weighs 1
    # where the nearest neighbour is ahead of the next by more than 50 T, the others together weigh < 12 e^-50:
    # the vote is the nearest neighbour's label (at T = 0.01 the unshifted weights overflowed float32)
    top2 = (F.normalize(test, dim=1) @ F.normalize(train, dim=1).T).topk(2, dim=1)
    clear = top2.values[:, 0] - top2.values[:, 1] > 50 * temperature
    assert torch.equal(scores.argmax(1)[clear], labels[top2.indices[clear, 0]])


def test_metrics_top1_top5_and_mean_per_class():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0], [5.0, 0, 0, 0, 0, 1]])
    m = classification_metrics(logits, torch.tensor([0, 0, 5]), 6)
    assert m["top1"] == pytest.approx(100 / 3) and m["top5"] == pytest.approx(100.0)
    assert m["mean_per_class"] == pytest.approx(25.0)  # class 0: 1/2 right, class 5: 0/1


def _separable(n_per_class=200, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    images = torch.rand(len(labels), 3, 4, 4, generator=g) * 60
    images[torch.arange(len(labels)), labels % 3] += 150 * (labels[:, None, None] >= 0)  # class sets a channel
    images[:, :, 0, 0] = (labels * 60).view(-1, 1).float()  # and a pixel level
    return ArrayDataset(
        name="blobs",
        images=images.to(torch.uint8),
        labels=labels,
        classes=tuple("abcd"),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )


def test_linear_protocol_on_separable_features_exceeds_95_percent():
    train, test = _separable(), _separable(seed=1)
    config = LinearConfig(mode="cached", base_lrs=(0.1, 0.4), epochs=30, batch_size=64, val_size=100)
    result = linear_evaluation(
        nn.Flatten(), train=train, test=test, image_size=4, device=CPU, config=config, progress=False
    )
    assert result["top1"] > 95 and result["chosen_base_lr"] in (0.1, 0.4)


def test_hyperparameters_are_chosen_without_the_test_split():
    train, test = _separable(), _separable(seed=1)
    scrambled = dataclasses.replace(test, images=torch.zeros_like(test.images), labels=torch.zeros_like(test.labels))
    config = LinearConfig(mode="cached", base_lrs=(0.001, 0.4), epochs=5, batch_size=64, val_size=100)
    real, fake = (
        linear_evaluation(nn.Flatten(), train=train, test=t, image_size=4, device=CPU, config=config, progress=False)
        for t in (test, scrambled)
    )
    assert real["sweep"] == fake["sweep"] and real["chosen_base_lr"] == fake["chosen_base_lr"]
    assert real["top1"] != fake["top1"]


def test_bn_statistics_do_not_change_during_linear_evaluation(run_dir):
    encoder = load_encoder_from_run(run_dir).encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    data = load_dataset("synthetic", "train", image_size=16)
    test = load_dataset("synthetic", "test", image_size=16)
    config = LinearConfig(mode="augmented", base_lrs=(0.1,), epochs=1, batch_size=64, val_size=64)
    linear_evaluation(encoder, train=data, test=test, image_size=16, device=CPU, config=config, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())


def test_label_subset_is_class_balanced_and_seeded():
    labels = torch.arange(10).repeat_interleave(100)
    subset = balanced_subset(labels, 0.1, seed=3)
    assert torch.bincount(labels[subset]).tolist() == [10] * 10
    assert torch.equal(subset, balanced_subset(labels, 0.1, seed=3))
    assert not torch.equal(subset, balanced_subset(labels, 0.1, seed=4))
    assert torch.bincount(labels[balanced_subset(labels, 0.001, 0)]).tolist() == [1] * 10
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="label fraction"):
            balanced_subset(labels, bad, 0)


def test_the_online_encoder_is_the_one_evaluated(run_dir):
    payload = load_checkpoint(latest_checkpoint(run_dir))
    encoder = load_encoder_from_run(run_dir).encoder
    weight = encoder.stem[0].weight
    assert torch.equal(weight, payload["state"]["online"]["encoder.stem.0.weight"])
    assert not torch.equal(weight, payload["state"]["target"]["encoder.stem.0.weight"])
    random = load_encoder_from_run(run_dir, init="random").encoder
    assert not torch.equal(random.stem[0].weight, weight) and random.out_dim == encoder.out_dim


def test_protocols_write_json_and_the_report_collects_them(run_dir, capsys):
    assert main(["knn", str(run_dir), "--quiet"]) == 0
    assert main(["knn", str(run_dir), "--quiet", "--init", "random"]) == 0
    assert main(["finetune", str(run_dir), "--quiet", "--label-fraction", "0.1", "--epochs", "1", "--lrs", "0.05",
                 "--batch-size", "16"]) == 0  # fmt: skip
    knn = json.loads((run_dir / "eval" / "knn_synthetic_pretrained.json").read_text())
    assert knn["encoder"] == "online" and 0 <= knn["top1"] <= 100
    ft = json.loads((run_dir / "eval" / "finetune-0.1_synthetic_pretrained.json").read_text())
    train = load_dataset("synthetic", "train")
    pool = split_train_val(train.labels, validation_size(0, len(train)), seed=0)[0]  # outside the validation split
    per_class = [int((train.labels[pool] == c).sum()) for c in range(len(train.classes))]
    assert ft["labelled_images"] == sum(max(1, round(0.1 * n)) for n in per_class) and ft["chosen_epochs"] == 1
    assert main(["finetune", str(run_dir), "--quiet", "--label-fraction", "1", "--epochs", "1", "--lrs", "0.05",
                 "--batch-size", "64", "--val-size", "40"]) == 0  # fmt: skip
    every = json.loads((run_dir / "eval" / "finetune-1_synthetic_pretrained.json").read_text())
    assert every["labelled_images"] == len(train) - 40  # every training image outside the validation split
    report = write_report(run_dir)
    text = report.read_text()
    assert "kNN (k=200, T=0.1) | synthetic | random" in text and "fine-tune on 10% of the labels" in text
    for plot in ("views.png", "embedding.png", "neighbours.png", "clusters.png", "loss.png", "tau.png",
                 "learning_rate.png", "collapse.png", "knn.png", "probe.png"):  # fmt: skip
        assert f"![{plot}]({plot})" in text and (report.parent / plot).stat().st_size > 5000
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "knn_top1" in r] == [0, 1, 2]  # at init, then every epoch


def test_transfer_to_another_dataset(run_dir, tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(20)]}
        (root / name).write_bytes(pickle.dumps(batch))
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    request = EvaluationRequest(
        "knn", run_dir, dataset="cifar10", data_dir=str(tmp_path), image_size=16, knn=KnnConfig(k=5)
    )
    result, path = run_evaluation(request, progress=False)
    assert result["dataset"] == "cifar10" and result["pretrained_on"] == "synthetic"
    assert path.name == "knn_cifar10_pretrained.json"


def test_bad_checkpoints_and_fractions_are_refused(run_dir, tmp_path, capsys):
    payload = load_checkpoint(latest_checkpoint(run_dir))
    config = json.loads(payload["config"])
    config["model"]["depth"] = 34  # the weights are a ResNet-18's
    payload["config"] = json.dumps(config)
    save_checkpoint(tmp_path / "other", 1, payload)
    with pytest.raises(CheckpointError, match="does not match"):
        load_encoder_from_run(tmp_path / "other")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(latest_checkpoint(run_dir).read_bytes()[:1000])
    assert main(["knn", str(broken), "--quiet"]) == 2
    assert "cannot be read safely" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["finetune", str(run_dir), "--label-fraction", "1.5"])
    assert e.value.code == 2 and "must lie in (0, 1]" in capsys.readouterr().err


def test_the_frozen_evaluation_samples_labelled_images_with_the_runs_seed(run_dir):
    config = apply_overrides(get_preset("tiny"), {"train.seed": 3})
    train = load_dataset("synthetic", "train", "", 16)
    train.labels[:100] = -1  # unlabelled images never vote
    a = FrozenEvaluation.from_config(config, CPU, train=train, max_train=200, max_test=50)
    b = FrozenEvaluation.from_config(config, CPU, train=train, max_train=200, max_test=50)
    assert len(a.train) == 200 and len(a.test) == 50 and bool((a.train.labels >= 0).all())
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    other = FrozenEvaluation.from_config(apply_overrides(config, {"train.seed": 4}), CPU, train=train, max_train=200)
    assert not torch.equal(other.train.images, a.train.images) and len(other.test) == 256  # no limit: all
    encoder = load_encoder_from_run(run_dir).encoder
    knn, linear = a.knn_and_linear(encoder)
    assert knn["top1"] == a.knn(encoder)["top1"]  # one feature extraction serves both protocols
    assert linear["settings"]["standardize"] and linear["settings"]["epochs"] == 10
    monitor = KnnMonitor(config, train, CPU)
    assert len(monitor.evaluation.train) == 412 and monitor(encoder) == pytest.approx(
        FrozenEvaluation.from_config(config, CPU, train=train, max_train=10_000, max_test=10_000).knn(encoder)["top1"]
    )


@settings(max_examples=50, deadline=None)
@given(
    logits=st.lists(st.floats(-1e4, 1e4), min_size=6, max_size=6),
    label=st.integers(0, 2),
    alpha=st.floats(0.5, 50),
    beta=st.floats(0, 1),
)
def test_the_appendix_c_loss_is_cross_entropy_of_clipped_logits_plus_their_penalty(logits, label, alpha, beta):
    from byol.evaluate.linear import regularized_loss

    x = torch.tensor(logits, dtype=torch.float64).reshape(2, 3)
    y = torch.tensor([label, (label + 1) % 3])
    clipped = [[alpha * math.tanh(v / alpha) for v in row] for row in x.tolist()]
    assert all(abs(v) <= alpha for row in clipped for v in row)
    cross_entropy = sum(math.log(sum(math.exp(v - max(row)) for v in row)) + max(row) - row[int(t)]
                        for row, t in zip(clipped, y, strict=True)) / 2  # fmt: skip
    penalty = beta * sum(v * v for row in clipped for v in row) / 6
    assert regularized_loss(x, y, alpha, beta).item() == pytest.approx(cross_entropy + penalty, rel=1e-9, abs=1e-9)


def test_the_appendix_c_variant_runs_with_the_runs_pretraining_views(run_dir):
    assert main(["linear", str(run_dir), "--quiet", "--mode", "appendix-c", "--epochs", "1", "--lrs", "0.1",
                 "--batch-size", "64"]) == 0  # fmt: skip
    result = json.loads((run_dir / "eval" / "linear-appendix-c_synthetic_pretrained.json").read_text())
    assert result["protocol"] == "linear (appendix C.1: pretraining views, α = 20, β = 0.01)"
    assert result["settings"]["augment_preset"] == get_preset("tiny").augment.preset and 0 <= result["top1"] <= 100
