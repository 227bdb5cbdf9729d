import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import start_byol, wait_until

from byol.cli import main

TINY = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet"]


def _byol(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "byol", *args], capture_output=True, text=True, **kwargs)


def test_help_on_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "pretrain" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0 and "--resume" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "valid presets are"),
        (["--dataset", "mnist"], "choose one of"),
        (["--model.depth", "42"], "choose one of 10, 18, 34, 50"),
        (["--optim.lr", "1"], "valid keys are"),
        (["--bogus"], "valid keys are"),
    ],
)
def test_bad_input_exits_2_with_the_valid_choices(tmp_path, capsys, args, message):
    assert main(["pretrain", "--run-dir", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["pretrain", "--run-dir", str(tmp_path), "--resume"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_pretrain_writes_checkpoint_config_and_metrics(tmp_path):
    assert main([*TINY, "--run-dir", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 33))
    assert {"byol_loss", "tau", "lr", "proj_std", "probe_acc"} <= set(records[0])
    assert (tmp_path / "checkpoints" / "step_000000032.pt").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 18
    assert main([*TINY, "--run-dir", str(tmp_path)]) == 2  # refuses to overwrite a run


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    marker = tmp_path / "stalled"
    # the child stalls while writing checkpoint 6 (every machine reaches that point), and is killed there
    proc = start_byol([*TINY, "--run-dir", str(run), "--train.checkpoint_every", "2"], stall_at_step=6, marker=marker)
    assert wait_until(marker.exists, proc, "the save of checkpoint 6"), proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert steps == [2, 4]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = _byol("pretrain", "--run-dir", str(run), "--resume", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} at step 4 of 32" in result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 33))  # no step lost, none repeated
    assert not list((run / "checkpoints").glob(".*tmp*"))  # the interrupted write's temporary file was removed


def test_every_command_answers_help(capsys):
    commands = ["pretrain", "demo", "knn", "linear", "finetune", "report", "ablate", "export", "embed",
                ["bench", "augment"], ["bench", "step"]]  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit) as e:
            main([*(command if isinstance(command, list) else [command]), "--help"])
        assert e.value.code == 0
        assert "usage: byol" in capsys.readouterr().out
