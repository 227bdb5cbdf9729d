"""`byol report`: the training curves and every evaluation of a run directory, as Markdown and PNG plots."""

import json
import math

import pytest

from byol.cli import main
from byol.errors import DataError
from byol.report import read_metrics, write_report


def _run(tmp_path, projection_dim=64, knn=True):
    run = tmp_path / "run"
    run.mkdir()
    steps = [
        {"step": s, "epoch": s / 10, "byol_loss": 4.0 / s, "tau": 0.99 + s / 1e4, "lr": 0.1 * s, "proj_std": 0.1,
         "probe_acc": s / 40, "elapsed_s": s, "images_per_s": 100.0}
        for s in range(1, 21)
    ]  # fmt: skip
    records = steps + ([{"step": 0, "epoch": 0, "knn_top1": 20.0}, {"step": 10, "epoch": 1, "knn_top1": 55.5}]
                       if knn else [])  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 21, "byol'  # cut short by a kill
    (run / "metrics.jsonl").write_text(text)
    config = {
        "model": {"projection_dim": projection_dim, "depth": 18, "width": 0.125, "stem": "cifar"},
        "data": {"dataset": "synthetic", "image_size": 16},
    }
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_the_report_states_the_final_state_against_the_collapse_levels_of_d(tmp_path):
    run = _run(tmp_path, projection_dim=64)
    text = write_report(run).read_text()
    assert "20 optimizer steps (2.00 epochs)" in text and "Final BYOL loss 0.2000" in text
    assert f"healthy ≈ {1 / math.sqrt(64):.4f}" in text and f"collapse < {0.1 / math.sqrt(64):.4f}" in text
    assert "No evaluation yet" in text
    for plot in ("views.png", "loss.png", "tau.png", "learning_rate.png", "collapse.png", "knn.png", "probe.png"):
        assert f"![{plot}]({plot})" in text and (run / "report" / plot).stat().st_size > 5000
    assert "embedding.png not drawn: the run has no checkpoint" in text


def test_the_kNN_curve_and_the_evaluations_are_read_back(tmp_path):
    run = _run(tmp_path)
    steps, knn = read_metrics(run)
    assert len(steps) == 20 and [(r["step"], r["knn_top1"]) for r in knn] == [(0, 20.0), (10, 55.5)]
    (run / "eval").mkdir()
    result = {"protocol": "kNN (k=200, T=0.1)", "dataset": "synthetic", "init": "random", "top1": 41.234, "top5": 90.0,
              "mean_per_class": 40.0}  # fmt: skip
    (run / "eval" / "knn_x_random.json").write_text(json.dumps(result))
    assert main(["report", str(run)]) == 0
    assert (
        "| kNN (k=200, T=0.1) | synthetic | random | 41.23 | 90.00 | 40.00 |"
        in (run / "report" / "report.md").read_text()
    )


def test_without_knn_or_probe_records_there_are_no_accuracy_plots(tmp_path):
    run = _run(tmp_path, knn=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "probe_acc"}) + "\n"
                                               for r in lines))  # fmt: skip
    text = write_report(run).read_text()
    assert "knn.png" not in text and "probe.png" not in text


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, capsys):
    with pytest.raises(DataError, match=r"holds no metrics\.jsonl"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "epoch": 0, "knn_top1": 10.0}) + "\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no training records yet" in capsys.readouterr().err


def test_the_moving_average_is_centred_and_keeps_what_is_already_smooth():
    from byol.report import moving_average

    ramp = [float(i) for i in range(20)]
    smoothed = moving_average(ramp, 5)
    assert list(smoothed[2:-2]) == ramp[2:-2]  # a centred mean of a line is the line: no lag
    assert list(moving_average([3.0] * 7, 4)) == [3.0] * 7 and list(moving_average(ramp, 1)) == ramp
    assert smoothed[0] == 1.0 and smoothed[-1] == 18.0  # fewer neighbours at the ends: the mean of (0, 1, 2)
