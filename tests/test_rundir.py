"""The run directory: one writer at a time, no debris of interrupted writes, and its files."""

import json

from byol import rundir
from byol.checkpoint import list_checkpoints
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.train import pretrain

TINY = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet"]


def test_a_second_writer_is_refused_and_a_crashed_one_leaves_no_lock(tmp_path, capsys):
    with rundir.exclusive(tmp_path / "run"):
        assert main([*TINY, "--run-dir", str(tmp_path / "run")]) == 2
    assert "in use by another byol process" in capsys.readouterr().err
    assert not list_checkpoints(tmp_path / "run")
    assert main([*TINY, "--run-dir", str(tmp_path / "run"), "--train.max_steps", "2"]) == 0  # the lock was released


def test_temporary_files_of_a_killed_write_are_removed_on_the_next_start_and_only_they(tmp_path):
    with rundir.exclusive(tmp_path / "run"):  # a run directory of the package
        pass
    (tmp_path / "run" / "checkpoints").mkdir()
    stale = tmp_path / "run" / "checkpoints" / ".step_000000002.pt.tmp-99999"
    stale.write_bytes(b"PK half")
    (tmp_path / "run" / "notes").mkdir()
    keep = [tmp_path / "run" / "notes.txt", tmp_path / "run" / "notes" / ".essay.tmp-v2",
            tmp_path / "run" / "notes" / ".essay.txt.tmp-123", tmp_path / "run" / ".draft.tmp-12x"]  # fmt: skip
    for path in keep:
        path.write_text("mine")
    pretrain(apply_overrides(get_preset("tiny"), {"train.max_steps": 2}), tmp_path / "run", progress=False)
    assert not stale.exists() and all(path.read_text() == "mine" for path in keep)


def test_a_resumed_log_keeps_the_records_up_to_the_checkpoint_and_its_training_time(tmp_path):
    records = [{"step": s, "byol_loss": 1.0 / s, "elapsed_s": 0.5 * s} for s in (1, 2, 3, 4)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "byol_lo'  # a line cut by a kill
    (tmp_path / rundir.METRICS_FILE).write_text(text)
    assert rundir.truncate_metrics(tmp_path, 2) == 1.0  # the elapsed time of step 2
    assert rundir.read_metrics(tmp_path) == records[:2]
    assert rundir.truncate_metrics(tmp_path / "none", 2) == 0.0


def test_environment_gets_one_record_per_start(tmp_path):
    rundir.record_environment(tmp_path, False, step=0)
    rundir.record_environment(tmp_path, True, step=7)
    starts = json.loads((tmp_path / rundir.ENVIRONMENT_FILE).read_text())
    assert [s["step"] for s in starts] == [0, 7] and starts[1]["cpu_capability"] and starts[1]["torch"]
    rundir.record_environment(tmp_path, False, step=0)  # a fresh run starts a fresh history
    assert [s["step"] for s in json.loads((tmp_path / rundir.ENVIRONMENT_FILE).read_text())] == [0]


def test_tensorboard_events_equal_metrics_jsonl_and_hold_the_view_grid(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / rundir.TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = rundir.read_metrics(finished_run)
    expected = {(key, r["step"]): value for r in records for key, value in r.items() if key != "step"}
    read = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert read.keys() == expected.keys() and len(records) == 4
    assert all(abs(read[k] - v) <= 1e-6 * max(1.0, abs(v)) for k, v in expected.items())  # stored as float32
    (grid,) = events.Images("views")
    assert (grid.height, grid.width) == (3 * 20, 8 * 20)  # image, T, T' rows of 8 images of 16 px, 2 px frames


def test_tensorboard_off_writes_no_events_and_a_resume_purges_what_followed_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = apply_overrides(get_preset("tiny"), {"train.max_steps": 3, "train.tensorboard": False})
    pretrain(config, tmp_path / "off", progress=False)
    assert not (tmp_path / "off" / rundir.TENSORBOARD_DIR).exists()
    run = tmp_path / "on"
    pretrain(apply_overrides(get_preset("tiny"), {"train.max_steps": 6}), run, progress=False)
    (run / "checkpoints" / "step_000000006.pt").unlink()  # as if killed after step 6 was logged, before its save
    config_json = json.loads((run / rundir.CONFIG_FILE).read_text())
    assert config_json["train"]["max_steps"] == 6
    from byol.train import resume

    resume(run, progress=False)
    events = EventAccumulator(str(run / rundir.TENSORBOARD_DIR), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("byol_loss")] == [1, 2, 3, 4, 5, 6]  # steps 5, 6 once, as in the log
    assert [r["step"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4, 5, 6]
