"""Export of the online encoder (safetensors + JSON architecture), its loading and `byol embed`."""

import json
import os

import numpy as np
import pytest
import torch

from byol import load_encoder
from byol.cli import main
from byol.errors import CheckpointError
from byol.evaluate.common import load_encoder_from_run
from byol.export import export_encoder


def test_export_round_trip_gives_identical_features(finished_run, tmp_path, capsys):
    assert main(["export", str(finished_run), "--out", str(tmp_path / "enc.safetensors")]) == 0
    encoder = load_encoder(tmp_path / "enc.safetensors")
    original = load_encoder_from_run(finished_run).encoder.eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(encoder(x), original(x))
    assert encoder.metadata["network"] == "online encoder" and not encoder.training
    assert main(["embed", str(tmp_path / "enc.safetensors"), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 0
    saved = np.load(tmp_path / "f.npz")
    assert saved["features"].shape == (256, encoder.out_dim) and saved["labels"].shape == (256,)
    assert saved["index"].tolist() == list(range(256))
    # an in-memory set is embedded whole, and says so: an image file of one of its rows, searched for, is embedded
    # whole too (not centre-cropped) and finds that row at similarity 1
    assert json.loads(str(saved["source"]))["view"] == "whole"
    from PIL import Image

    from byol.data import load_split

    pixels = load_split("synthetic", "test", image_size=16).images[3]
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / "row3.png")
    found = tmp_path / "found.json"
    assert main(["search", str(tmp_path / "f.npz"), "--query", str(tmp_path / "row3.png"), "--k", "1",
                 "--out", str(found)]) == 0  # fmt: skip
    (best,) = json.loads(found.read_text())["neighbours"]
    assert best["row"] == 3 and best["similarity"] == pytest.approx(1.0, abs=1e-5)


def test_tampered_export_is_refused(finished_run, tmp_path):
    weights, meta = export_encoder(finished_run, tmp_path / "enc.safetensors")
    data = json.loads(meta.read_text())
    data["depth"] = 34
    meta.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="does not hold the encoder"):
        load_encoder(weights)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_encoder(weights)


def test_export_writes_weights_and_architecture_side_by_side(finished_run, tmp_path):
    weights, meta = export_encoder(finished_run, tmp_path / "model.safetensors")
    assert weights.name == "model.safetensors" and meta.name == "model.json"
    assert weights.read_bytes()[:8] != meta.read_bytes()[:8]
    assert sorted(os.listdir(tmp_path)) == ["model.json", "model.safetensors"]  # no temp file left


# torch.onnx's export (about 5 s): `make test-slow`; the default suite keeps the safetensors export's round trip
# and the torchvision layout's (tests/test_interop.py)
@pytest.mark.slow
def test_onnx_export_has_a_dynamic_batch_axis_and_agrees_with_the_encoder(finished_run, tmp_path):
    import onnx
    import onnxruntime

    assert main(["export", str(finished_run), "--out", str(tmp_path / "enc.onnx"), "--format", "onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    encoder = load_encoder_from_run(finished_run).encoder.eval()
    for n in (1, 7):
        x = torch.rand(n, 3, 16, 16)
        (features,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(features - encoder(x).numpy()).max() < 1e-4
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "enc.onnx")).metadata_props}
    assert meta["depth"] == 18 and meta["network"] == "online encoder" and len(meta["mean"]) == 3
    assert sorted(os.listdir(tmp_path)) == ["enc.onnx"]


def test_hub_folder_reads_back_through_load_encoder_and_from_pretrained(finished_run, tmp_path, monkeypatch):
    from byol.hub import HubEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may reach the network
    folder = tmp_path / "hub"
    assert main(["export", str(finished_run), "--out", str(folder), "--format", "hub"]) == 0
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = load_encoder_from_run(finished_run).encoder.eval()(x)
        assert torch.equal(load_encoder(folder)(x), expected)
        from_hub = HubEncoder.from_pretrained(folder)
        assert torch.equal(from_hub(x), expected) and not from_hub.training
    assert from_hub.metadata["pretrained_on"] == "synthetic"
    assert main(["export", str(finished_run), "--out", str(folder), "--format", "hub"]) == 0  # replaces its own
    assert sorted(os.listdir(tmp_path)) == ["hub"]  # nothing left beside it
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickled")
    with pytest.raises(CheckpointError):
        load_encoder(folder)


def test_a_hub_export_through_a_link_replaces_the_export_it_names_and_keeps_the_link(finished_run, tmp_path):
    first = tmp_path / "exports" / "v1"
    assert main(["export", str(finished_run), "--out", str(first), "--format", "hub"]) == 0
    before = (first / "config.json").read_bytes()
    latest = tmp_path / "latest"
    latest.symlink_to(first, target_is_directory=True)
    (first / "config.json").write_bytes(before.replace(b'"network"', b'"older": 1, "network"'))
    assert main(["export", str(finished_run), "--out", str(latest), "--format", "hub"]) == 0
    assert latest.is_symlink() and latest.resolve() == first.resolve()
    assert (latest / "config.json").read_bytes() == before  # the new export, where the link points
    assert sorted(os.listdir(tmp_path)) == ["exports", "latest"] and os.listdir(tmp_path / "exports") == ["v1"]


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (lambda run, t: ["export", str(run), "--out", str(t / "e.onnx"), "--format", "onnx"], "onnx"),
        (lambda run, t: ["export", str(run), "--out", str(t / "hub"), "--format", "hub"], "hub"),
        (lambda run, t: ["report", str(run)], "viz"),
    ],
)
def test_a_missing_extra_is_named_in_one_line(finished_run, tmp_path, monkeypatch, capsys, args, extra):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    monkeypatch.setattr("byol.extras.available", lambda module: False)
    assert main(args(run, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'byol[{extra}]'" in err[0], err
    assert not (tmp_path / "e.onnx").exists() and not (tmp_path / "hub").exists()


def test_a_flipped_bit_in_the_weights_is_caught_by_the_digest(finished_run, tmp_path, monkeypatch):
    from byol.hub import HubEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights, _ = export_encoder(finished_run, tmp_path / "enc.safetensors")
    folder = export_encoder(finished_run, tmp_path / "hub", format="hub")[0]
    for path in (weights, folder / "model.safetensors"):
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x40  # inside the last tensor's data: safetensors' header check cannot see it
        path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not hold the weights"):
        load_encoder(weights)
    with pytest.raises(CheckpointError, match="does not hold the weights"):
        load_encoder(folder)
    with pytest.raises(CheckpointError, match="does not hold the weights"):
        HubEncoder.from_pretrained(folder)
