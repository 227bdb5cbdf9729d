import json
import subprocess
import sys

import pytest

from byol.cli import main

TINY = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "valid presets are"),
        (["--dataset", "mnist"], "choose one of"),
        (["--model.depth", "42"], "choose one of 10, 18, 34, 50"),
        (["--optim.lr", "1"], "unknown config key 'optim.lr'; did you mean optim.base_lr"),
        (["--optim.base-lr", "1"], "did you mean optim.base_lr or"),
        (["--modle.depth", "18"], "did you mean model.depth or"),
        (["--zzz.qqq", "1"], "sections: model, optim, target, loss, data, augment, train"),
        (["--bogus"], "config overrides look like --section.key VALUE"),
    ],
)
def test_bad_input_exits_2_with_the_valid_choices(tmp_path, capsys, args, message):
    assert main(["pretrain", "--run-dir", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_pretrain_writes_checkpoint_config_and_metrics(tmp_path):
    assert main([*TINY, "--epochs", "1", "--run-dir", str(tmp_path)]) == 0  # 1 epoch of 16 steps
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 17))
    assert {"byol_loss", "tau", "lr", "proj_std", "probe_acc"} <= set(records[0])
    assert (tmp_path / "checkpoints" / "step_000000016.pt").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model"]["depth"] == 18
    assert main([*TINY, "--run-dir", str(tmp_path)]) == 2  # refuses to overwrite a run


def test_building_the_command_line_imports_no_heavy_library():
    """`byol COMMAND --help` answers at once (benchmarks/cli_help.py times it): building every parser imports
    neither torch nor numpy, matplotlib, Pillow or a tracker; the work that needs them imports them."""
    script = (
        "import sys\nfrom byol.cli import build_parser\nbuild_parser()\n"
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'PIL', 'sklearn', 'mlflow', 'wandb') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    import byol

    assert byol.get_preset("tiny").model.depth == 18 and "load_encoder" in dir(byol)  # the lazy names resolve
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        byol.missing  # noqa: B018


def test_every_command_answers_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "pretrain" in capsys.readouterr().out
    commands = ["pretrain", "demo", "knn", "linear", "finetune", "report", "ablate", "export", "embed",
                ["bench", "augment"], ["bench", "step"]]  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit) as e:
            main([*(command if isinstance(command, list) else [command]), "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "usage: byol" in out and (command != "pretrain" or "--resume" in out)
