"""The encoder in torchvision's ResNet key layout (byol.interop, `byol export --format torchvision`)."""

import json
from pathlib import Path

import pytest
import torch

from byol.cli import main
from byol.evaluate.common import load_encoder_from_run
from byol.export import load_encoder
from byol.interop import architecture, from_torchvision, to_torchvision
from byol.networks import ResNet

# Generated from torchvision's own model definitions by benchmarks/torchvision_keys.py (run by `make peers`).
REFERENCE = json.loads((Path(__file__).parent / "data" / "torchvision_resnet_keys.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_export_has_torchvisions_keys_and_shapes_but_the_classifier(name):
    depth, width = (int(n) for n in name.split("x"))
    with torch.device("meta"):
        ours = {k: list(v.shape) for k, v in to_torchvision(ResNet(depth, width).state_dict()).items()}
    theirs = {k: v for k, v in REFERENCE[name].items() if not k.startswith("fc.")}
    assert ours == theirs
    assert set(REFERENCE[name]) - set(theirs) == {"fc.weight", "fc.bias"}


def _randomised(encoder: ResNet) -> ResNet:
    generator = torch.Generator().manual_seed(0)
    for module in encoder.modules():  # BN statistics away from 0 / 1, so that a misplaced one shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
    return encoder.eval()


@pytest.mark.parametrize(("depth", "width", "stem", "channels"),
                         [(18, 1, "imagenet", 3), (50, 0.25, "imagenet", 3), (10, 0.125, "cifar", 1),
                          (34, 0.125, "imagenet", 3), (101, 0.0625, "cifar", 3)])  # fmt: skip
def test_a_torchvision_layout_state_dict_round_trips_to_the_same_features(depth, width, stem, channels):
    original = _randomised(ResNet(depth, width, stem, channels))
    exported = to_torchvision(original.state_dict())
    exported |= {"fc.weight": torch.zeros(10, original.out_dim), "fc.bias": torch.zeros(10)}  # a classifier too
    arguments = architecture(exported)
    assert (arguments["depth"], arguments["stem"], arguments["in_channels"]) == (depth, stem, channels)
    rebuilt = ResNet(**arguments)
    rebuilt.load_state_dict(from_torchvision(exported))  # strict: every tensor, nothing left over
    x = torch.randn(2, channels, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (rebuilt.eval()(x) - original(x)).abs().max() < 1e-6


def test_export_torchvision_writes_a_state_dict_that_reads_without_pickle_and_loads_back(finished_run, tmp_path):
    out = tmp_path / "enc.pth"
    assert main(["export", str(finished_run), "--out", str(out), "--format", "torchvision"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc.json", "enc.pth", "enc.safetensors"]
    state = torch.load(out, weights_only=True)  # tensors only
    assert "conv1.weight" in state and "layer1.0.conv1.weight" in state and not any(k.startswith("stem") for k in state)
    assert json.loads((tmp_path / "enc.json").read_text())["layout"] == "torchvision"
    expected_encoder = load_encoder_from_run(finished_run).encoder.eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = expected_encoder(x)
        for path in (out, out.with_suffix(".safetensors")):
            assert (load_encoder(path)(x) - expected).abs().max() < 1e-6
        # a checkpoint of torchvision's layout from elsewhere: wrapped, DDP-prefixed, with a classifier, no JSON
        foreign = tmp_path / "foreign" / "resnet.pth"
        foreign.parent.mkdir()
        wrapped = {f"module.{k}": v for k, v in state.items()} | {"module.fc.weight": torch.zeros(5, 8)}
        torch.save({"state_dict": wrapped}, foreign)
        loaded = load_encoder(foreign)
        assert (loaded(x) - expected).abs().max() < 1e-6
        assert loaded.metadata["depth"] == expected_encoder.depth
    features = tmp_path / "f.npz"
    assert main(["embed", str(out), "--out", str(features), "--dataset", "synthetic", "--quiet"]) == 0
    # the evaluations take an export as they take a run (the result named with --out: an export has no run)
    knn = tmp_path / "knn.json"
    assert main(["knn", str(out), "--quiet", "--k", "5", "--out", str(knn)]) == 0
    assert json.loads(knn.read_text())["dataset"] == "synthetic"  # what the export says it was pretrained on
    assert main(["knn", str(foreign), "--quiet", "--k", "5", "--out", str(knn)]) == 2  # says nothing: --dataset
    assert main(["knn", str(foreign), "--quiet", "--k", "5", "--out", str(knn), "--dataset", "synthetic",
                 "--image-size", "16"]) == 0  # fmt: skip


def test_pretraining_starts_from_a_torchvision_layout_encoder(finished_run, tmp_path, capsys):
    from byol.checkpoint import latest_checkpoint, load_checkpoint

    out = tmp_path / "start.pth"
    assert main(["export", str(finished_run), "--out", str(out), "--format", "torchvision"]) == 0
    start = torch.load(out, weights_only=True)
    run = tmp_path / "run"
    tiny = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.max_steps", "1",
            "--optim.base_lr", "0"]  # fmt: skip  # lr 0: the weights stay where they started
    assert main([*tiny, "--run-dir", str(run), "--model.init", str(out)]) == 0
    state = load_checkpoint(latest_checkpoint(run))["state"]
    for name in ("online", "target"):
        encoder = {k.removeprefix("encoder."): v for k, v in state[name].items() if k.startswith("encoder.")}
        assert torch.equal(to_torchvision(encoder)["conv1.weight"], start["conv1.weight"])
        assert torch.equal(to_torchvision(encoder)["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])
    capsys.readouterr()
    assert main([*tiny, "--run-dir", str(tmp_path / "other"), "--model.init", str(out), "--model.width", "0.25"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set --model.depth, --model.width and --model.stem to match it" in err[0], err
    assert not (tmp_path / "other").exists()  # refused before anything was written
