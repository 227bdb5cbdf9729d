"""MLflow (its local file store) and Weights & Biases (offline mode): each record a run writes to metrics.jsonl is
read back from the tracker's own files, under the same names and steps; the config as parameters; the run's files,
its report and its exports as artifacts; a resumed run continues the same tracker run."""

import collections
import json
import logging

import pytest

from byol.cli import main
from byol.config import flatten, get_preset
from byol.errors import ConfigError
from byol.length import configure
from byol.loggers import TRACKERS_FILE

TINY = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.max_steps", "8",
        "--train.log_every", "2", "--train.knn_every", "1", "--train.checkpoint_every", "4"]  # fmt: skip


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _by_key(records):
    """{name: [(step, value), ...]} of metrics.jsonl, in file order."""
    series = {}
    for record in records:
        for key, value in record.items():
            if key != "step":
                series.setdefault(key, []).append((record["step"], value))
    return series


def test_mlflow_gets_every_record_the_config_and_the_files(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "byol-test")
    run = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run), "--train.loggers", "mlflow"]) == 0
    assert main(["report", str(run), "--no-embedding"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "enc.safetensors")]) == 0

    run_id = json.loads((run / TRACKERS_FILE).read_text())["mlflow"]["run_id"]
    client = MlflowClient(store)
    found = client.get_run(run_id)
    assert client.get_experiment(found.info.experiment_id).name == "byol-test" and found.info.run_name == "run"
    expected = _by_key(_records(run))
    assert set(found.data.metrics) == set(expected)
    for key, series in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == sorted(series), key  # float64 both ways: equal, not close
    config = json.loads((run / "config.json").read_text())
    assert found.data.params == {k: str(v) for k, v in flatten(config).items()}
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "environment.json", "metrics.jsonl", "report", "enc.safetensors", "enc.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run_id, "report")} >= {"report/report.md", "report/loss.png"}


def test_a_resumed_run_logs_to_the_same_mlflow_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    assert main([*TINY, "--run-dir", str(run), "--train.loggers", "mlflow"]) == 0
    first = json.loads((run / TRACKERS_FILE).read_text())["mlflow"]["run_id"]
    (run / "checkpoints" / "step_000000008.pt").unlink()  # as if killed after step 4's checkpoint
    assert main(["pretrain", "--resume", "--run-dir", str(run), "--quiet"]) == 0
    client = MlflowClient(store)
    assert json.loads((run / TRACKERS_FILE).read_text())["mlflow"]["run_id"] == first
    assert [r.info.run_id for r in client.search_runs([client.get_run(first).info.experiment_id])] == [first]
    steps = [m.step for m in client.get_metric_history(first, "byol_loss")]
    assert sorted(steps) == [2, 4, 6, 6, 8, 8]  # the resumed steps logged again to the same run


def _wandb_records(path):
    """The protobuf records of a .wandb file: LevelDB's log format (32 KiB blocks, 7-byte headers: checksum,
    length, type FULL/FIRST/MIDDLE/LAST) after W&B's 7-byte header, read here so that the test needs no reader
    of wandb's (the package has none public)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending, records = 7, 32768, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_gets_every_record_and_the_config(tmp_path, monkeypatch, caplog):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="byol.loggers"):
        assert main([*TINY, "--run-dir", str(run), "--train.loggers", "wandb"]) == 0
    assert not [r.getMessage() for r in caplog.records if r.name == "byol.loggers"]  # W&B never dropped on the way
    import wandb

    # what the command's exit does (W&B's atexit hook): wait until W&B's service has written all it holds. Read
    # before it, a finished run's offline file was once still empty (CI, 7,344 bytes on disk a moment later)
    wandb.teardown()

    run_id = json.loads((run / TRACKERS_FILE).read_text())["wandb"]["run_id"]
    (path,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = _wandb_records(path)
    logged = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            step = items.pop("_step")
            logged.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    expected = {}
    for record in _records(run):
        expected.setdefault(record["step"], {}).update({k: v for k, v in record.items() if k != "step"})
    kinds = collections.Counter(r.WhichOneof("record_type") for r in records)
    assert logged == expected, (path.stat().st_size, kinds)
    config = {}  # the run record's config, beside W&B's own key (_wandb)
    for record in records:
        if record.WhichOneof("record_type") == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    config.pop("_wandb", None)
    assert config == flatten(json.loads((run / "config.json").read_text()))
    assert any(r.WhichOneof("record_type") == "artifact" for r in records)  # the run's files, at its end


def test_a_missing_tracker_package_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("byol.loggers.available", lambda module: False)
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main([*TINY, "--run-dir", str(run), "--train.loggers", "mlflow,wandb"]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "byol.loggers"]
    assert said == [
        "no mlflow logging: the mlflow package is not installed (pip install 'byol[mlflow]')",
        "no wandb logging: the wandb package is not installed (pip install 'byol[wandb]')",
    ]
    assert not (run / TRACKERS_FILE).exists() and len(_records(run)) > 0


def test_a_tracker_that_fails_is_named_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///proc/no-such-dir/mlruns")  # a store that cannot be made
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main([*TINY, "--run-dir", str(run), "--train.loggers", "mlflow"]) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "byol.loggers"]
    assert len(said) == 1 and said[0].startswith("mlflow logging is off: it could not start") and "\n" not in said[0]


@pytest.mark.parametrize("value", ["comet", "mlflow,neptune", "tensorboard"])
def test_an_unknown_tracker_is_refused_naming_the_valid_ones(value):
    with pytest.raises(ConfigError, match=r"train.loggers: .* choose one of mlflow, wandb"):
        configure("tiny", {"train.loggers": value})
    assert get_preset("tiny").train.loggers == ""
