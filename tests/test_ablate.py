"""The ablation runner: tables resolve to valid configs, cells are reused, resumed or refused, the table."""

import dataclasses
import json

import pytest

import byol.ablate as ablate
import byol.evaluate.frozen as frozen
from byol.ablate import TABLES, Row, format_table, run_table
from byol.ablate.runner import _resolve
from byol.ablate.tables import RANDOM_INIT
from byol.config import apply_overrides, get_preset
from byol.errors import ConfigError


def test_every_table_row_resolves_to_a_valid_config():
    base = get_preset("tiny")
    for table in TABLES.values():
        for row in table.rows:
            _resolve(base, row.overrides)
    assert _resolve(base, {"optim.base_lr": "x2"}).optim.base_lr == 2 * base.optim.base_lr


def one_epoch():  # a scale, as ablate.SCALES holds them: tiny for 4 steps (these tests check the grid, not learning)
    return apply_overrides(get_preset("tiny"), {"train.epochs": 1, "train.max_steps": 4})


@pytest.fixture(autouse=True)
def _one_learning_rate(monkeypatch):
    """The cells' linear protocol at one learning rate and 2 epochs (the protocol itself: tests/test_evaluate.py)."""
    monkeypatch.setattr(frozen, "CACHED_LINEAR", dataclasses.replace(frozen.CACHED_LINEAR, epochs=2, base_lrs=(0.1,)))


def test_grid_runs_writes_the_table_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(ablate.SCALES, "tiny", one_epoch)
    monkeypatch.setitem(ablate.TABLES, "t", ablate.Table("test", (Row("τ 0", {"target.base_ema": "0"}), RANDOM_INIT)))
    path = run_table("t", "tiny", seeds=[0, 1], out_dir=tmp_path, progress=False)
    text = path.read_text()
    assert "| τ 0 |" in text and "| random-init encoder (no pretraining) |" in text and "/2 |" in text
    result = tmp_path / "0" / "seed1" / "result.json"
    assert json.loads(result.read_text())["seed"] == 1
    stamp = result.stat().st_mtime_ns
    run_table("t", "tiny", seeds=[0, 1], out_dir=tmp_path, progress=False)  # a second call reuses every finished cell
    assert result.stat().st_mtime_ns == stamp


def test_mean_and_half_range_over_seeds():
    table = TABLES["19"]
    results = {
        row.label: [
            {"knn_top1": 70.0, "linear_top1": 80.0, "proj_std": 0.1, "collapsed": False},
            {"knn_top1": 74.0, "linear_top1": 81.0, "proj_std": 0.1, "collapsed": True},
        ]
        for row in table.rows
    }
    text = format_table(table, results, scale="cpu", seeds=[0, 1])
    assert "72.00 ± 2.00" in text and "80.50 ± 0.50" in text and "1/2" in text


def test_unknown_table_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="valid tables"):
        run_table("99", "cpu", seeds=[0], out_dir=tmp_path)


def test_a_redefined_row_refuses_the_old_run_directory(tmp_path, monkeypatch):
    monkeypatch.setitem(ablate.SCALES, "tiny", one_epoch)
    monkeypatch.setitem(ablate.TABLES, "t", ablate.Table("test", (Row("τ 0", {"target.base_ema": "0"}),)))
    run_table("t", "tiny", seeds=[0], out_dir=tmp_path, progress=False)
    result = tmp_path / "0" / "seed0" / "result.json"
    before = result.read_bytes()
    redefined = Row("τ 0", {"target.base_ema": "0", "target.schedule": "constant"})
    monkeypatch.setitem(ablate.TABLES, "t", ablate.Table("test", (redefined,)))
    with pytest.raises(ConfigError, match=r"another experiment.*target\.schedule \('cosine' → 'constant'\)"):
        run_table("t", "tiny", seeds=[0], out_dir=tmp_path, progress=False)
    assert result.read_bytes() == before  # neither reused as the new row's result nor overwritten


def test_a_table_scale_override_applies_and_the_users_own_wins(tmp_path, monkeypatch):
    monkeypatch.setitem(ablate.SCALES, "tiny", lambda: get_preset("tiny"))
    table = ablate.Table("test", (Row("r"),), scale_overrides={"tiny": {"train.epochs": "2", "train.seed": "7"}})
    monkeypatch.setitem(ablate.TABLES, "t", table)
    path = run_table(
        "t",
        "tiny",
        seeds=[0],
        out_dir=tmp_path,
        progress=False,
        overrides={"train.epochs": "1", "train.max_steps": "4"},
    )
    config = json.loads((tmp_path / "r" / "seed0" / "config.json").read_text())
    assert config["train"]["epochs"] == 1.0  # the user's override beats the table's
    assert "train.epochs 1" in path.read_text() and "train.epochs 2" not in path.read_text()
    assert config["train"]["seed"] == 0  # a cell's seed beats both
