"""Every bad input gets one line naming what was wrong and what is valid, exit status 2, and loses nothing;
a damaged checkpoint or a full disk loses no work; results never come from the training images."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from byol.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from byol.cli import main
from byol.config import apply_overrides, get_preset
from byol.errors import CheckpointError
from byol.train import pretrain, resume

TINY = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet"]


def _tampered_export(run, tmp, change):
    weights = tmp / "enc.safetensors"
    weights.write_bytes((run.parent / "enc.safetensors").read_bytes())
    meta = json.loads((run.parent / "enc.json").read_text())
    meta = change(meta)
    (tmp / "enc.json").write_text(json.dumps(meta))
    return ["embed", str(weights), "--out", str(tmp / "f.npz"), "--quiet"]


def _without(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _set(key, value):
    return lambda meta: {**meta, key: value}


# (family, arguments as a function of (run directory, a fresh temporary directory), words the message must hold)
CASES = [
    ("unwritable run dir", lambda r, t: [*TINY, "--run-dir", str(_file(t) / "run")], "not a directory"),
    ("unwritable run dir", lambda r, t: [*TINY, "--run-dir", "/proc/byol-run"], "cannot use /proc/byol-run"),
    ("unwritable run dir", lambda r, t: [*TINY, "--run-dir", str(t / ("x" * 300))], "shorter name"),
    ("batch > dataset", lambda r, t: [*TINY, "--run-dir", str(t / "b"), "--optim.batch_size", "1024"], "at most 512"),
    ("non-finite config", lambda r, t: [*TINY, "--run-dir", str(t / "c"), "--optim.base_lr", "nan"], "finite"),
    ("non-finite config", lambda r, t: [*TINY, "--run-dir", str(t / "c"), "--train.epochs", "inf"], "finite"),
    ("evaluation flag", lambda r, t: ["knn", str(r), "--k", "0"], "integer in [1, 1e6]"),
    ("evaluation flag", lambda r, t: ["knn", str(r), "--temperature", "0"], "positive number"),
    ("evaluation flag", lambda r, t: ["knn", str(r), "--image-size", "10000000"], "image size in [0, 4096]"),
    ("evaluation flag", lambda r, t: ["linear", str(r), "--seed", str(2**64)], "seed in [0, 2^32)"),
    ("flag range", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--optim.warmup_epochs", "1e308"], "[0, 1e6]"),
    ("run history", lambda r, t: [*TINY, "--run-dir", str(_without_checkpoints(r, t))], "earlier run's history"),
    (
        "edited config",
        lambda r, t: ["pretrain", "--resume", "--run-dir", str(_edited_config(r, t))],
        "train.max_steps: 4 in the checkpoint, 16 in config.json",
    ),
    ("evaluation flag", lambda r, t: ["linear", str(r), "--batch-size", "0"], "integer in [1, 1e6]"),
    ("evaluation flag", lambda r, t: ["linear", str(r), "--epochs", "0"], "integer in [1, 1e6]"),
    ("evaluation flag", lambda r, t: ["linear", str(r), "--image-size", "-3"], "image size in [0, 4096]"),
    ("evaluation flag", lambda r, t: ["finetune", str(r), "--epochs", "30,0"], "integers in [1, 1e6]"),
    ("evaluation flag", lambda r, t: ["linear", str(r), "--lrs", "0.1,nan"], "positive numbers"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("depth", 33)), "'depth' is 33"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("width", 0)), "'width' is 0"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("width", 1e9)), "in (0, 64]"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("in_channels", 10**9)), "in [1, 64]"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("stem", "vit")), "'stem' is 'vit'"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _without("in_channels")), "missing"),
    ("export architecture", lambda r, t: _tampered_export(r, t, _set("mean", "grey")), "'mean'"),
    ("export architecture", lambda r, t: _tampered_export(r, t, lambda m: [m]), "not a byol encoder"),
    ("export output", lambda r, t: ["export", str(r), "--out", str(t / "model.json")], ".safetensors file"),
    ("export output", lambda r, t: ["export", str(r), "--out", str(t)], ".safetensors file"),
    ("export output", lambda r, t: ["export", str(r), "--out", str(_dir(t, "d.safetensors"))], "is a directory"),
    ("embed output", lambda r, t: ["embed", str(r), "--out", str(t / "feats"), "--quiet"], ".npz file"),
    ("resume flags", lambda r, t: ["pretrain", "--run-dir", str(r), "--resume", "--preset", "tiny"], "saved config"),
    ("missing path", lambda r, t: ["knn", str(t / "nope")], "does not exist"),
    ("missing path", lambda r, t: ["pretrain", "--run-dir", str(t), "--resume"], "holds no checkpoint"),
    (
        "run dir in use",
        lambda r, t: ["demo", "--preset", "tiny", "--quiet", "--run-dir", str(r)],
        "already holds a run",
    ),
    ("user's folder", lambda r, t: [*TINY, "--run-dir", str(_user_folder(t))], "files that byol did not write"),
    ("user's folder", lambda r, t: ["demo", "--preset", "tiny", "--run-dir", str(_user_folder(t))], "did not write"),
    ("user's folder", lambda r, t: [*TINY, "--run-dir", ""], "expected a directory, got an empty string"),
    ("user's folder", lambda r, t: ["ablate", "5b", "--out", str(_user_folder(t)), "--quiet"], "did not write"),
    (
        "user's folder",
        lambda r, t: [
            *TINY,
            "--run-dir",
            str(t / "a" / "b" / "c"),
            "--dataset",
            "cifar10",
            "--data-dir",
            str(t / "nothing"),
        ],
        "does not exist",
    ),
    ("resume typo", lambda r, t: ["pretrain", "--resume", "--run-dir", str(t / "typo")], "does not exist"),
    ("output on the run", lambda r, t: ["export", str(r), "--out", str(r / "config.safetensors")], "of the run"),
    (
        "output on the run",
        lambda r, t: ["export", str(r), "--out", str(r), "--format", "hub"],
        "which this command reads",
    ),
    ("output on the run", lambda r, t: ["knn", str(r), "--out", str(r / "config.json")], "of the run"),
    ("output on a run", lambda r, t: ["knn", str(r), "--out", str(_other_run(t) / "eval" / "knn.json")], "of the run"),
    ("derived output", lambda r, t: ["export", str(r), "--out", str(_beside(t, "m.json", dir=True))], "a directory"),
    ("derived output", lambda r, t: ["export", str(r), "--out", str(_beside(t, "m.json"))], "not written by byol"),
    (
        "derived output",
        lambda r, t: ["embed", str(r), "--out", str(_dir(t, "f.npz")), "--quiet"],
        "is a directory",
    ),
    (
        "derived output",
        lambda r, t: ["export", str(r), "--out", str(_user_folder(t)), "--format", "hub"],
        "not written",
    ),
    (
        "missing data",
        lambda r, t: [*TINY, "--dataset", "cifar10", "--data-dir", str(t / "no"), "--run-dir", str(t / "n")],
        "does not exist",
    ),
    ("checkpoint outside a run", lambda r, t: ["knn", str(_loose_checkpoint(r, t))], "--out FILE.json"),
    ("flag range", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--seed", "-1"], "[0, 2^32)"),
    ("flag range", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--train.max_steps", "1e400"], "expected int"),
    ("flag range", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--train.seed", str(2**64)], "expected int"),
    ("device", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--device", "mps"], "not a device byol runs on"),
    ("device", lambda r, t: [*TINY, "--run-dir", str(t / "s"), "--device", "meta"], "not a device byol runs on"),
    ("device", lambda r, t: ["knn", str(r), "--device", "cuda:7"], "cuda"),
]


def _without_checkpoints(run, tmp):
    """A finished, evaluated run whose checkpoints/ the user deleted: its history is still there."""
    copy = tmp / "finished"
    shutil.copytree(run, copy)
    (copy / "eval").mkdir(exist_ok=True)
    (copy / "eval" / "knn_synthetic_pretrained.json").write_text('{"top1": 50.0}')
    shutil.rmtree(copy / "checkpoints")
    return copy


def _edited_config(run, tmp):
    """A finished run whose config.json the user edited to train longer."""
    copy = tmp / "edited"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["train"]["max_steps"] = 16
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def _user_folder(tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "thesis.txt").write_text("years of work")
    return tmp / "mine"


def _beside(tmp, name, dir=False, stem="m.safetensors"):
    """An output whose derived companion ``name`` is already there: a folder, or a file of the user's."""
    (tmp / name).mkdir() if dir else (tmp / name).write_text("the user's")
    return tmp / stem


def _other_run(tmp):
    from byol import rundir

    with rundir.exclusive(tmp / "other"):  # another run directory of the package, not the one evaluated
        pass
    return tmp / "other"


def _loose_checkpoint(run, tmp):
    (tmp / "imported").mkdir()
    shutil.copy(latest_checkpoint(run), tmp / "imported" / "step.pt")
    return tmp / "imported" / "step.pt"


def _snapshot_all(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _file(tmp):
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


def _dir(tmp, name):
    (tmp / name).mkdir()
    return tmp / name


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize(("family", "args", "words"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_one_line_and_exit_2(family, args, words, finished_run, tmp_path, capsys, monkeypatch):
    before = _snapshot(finished_run)
    arguments = args(finished_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    user_files, paths = _snapshot_all(tmp_path), set(tmp_path.rglob("*"))
    try:
        code = main(arguments)
    except SystemExit as e:  # argparse's own refusal: usage line + one error line, exit 2
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and "error:" in err[-1] and words in err[-1], err
    assert len([line for line in err if not line.startswith(("usage:", " ", "INFO", "WARNING"))]) == 1, err
    assert _snapshot(finished_run) == before  # nothing of the user's run was touched
    assert _snapshot_all(tmp_path) == user_files  # nor of the user's other files
    assert set(tmp_path.rglob("*")) == paths  # and nothing new: no lock, no marker, no folder


def test_resume_skips_an_unreadable_latest_checkpoint_and_keeps_it_aside(tmp_path, caplog):
    config = apply_overrides(get_preset("tiny"), {"train.checkpoint_every": 2, "train.max_steps": 6})
    pretrain(apply_overrides(config, {"train.max_steps": 4}), tmp_path, progress=False)  # checkpoints 2 and 4
    latest = list_checkpoints(tmp_path)[-1]
    latest.write_bytes(latest.read_bytes()[:100])  # truncated
    corrupt = latest.read_bytes()
    with pytest.raises(CheckpointError):  # the run's own config says 4 steps; resuming reads the checkpoints
        load_checkpoint(latest)
    resume(tmp_path, progress=False)
    aside = latest.with_name(latest.name + ".unreadable")
    assert aside.read_bytes() == corrupt and "moved it aside" in caplog.text
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step_000000004.pt"  # rewritten from step 2


def _folder(root: Path, per_class: int, split: str = "") -> None:
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


@pytest.mark.parametrize("layout", ["flat", "train-only"])
def test_a_folder_without_a_held_out_split_is_never_graded_on_its_training_images(tmp_path, layout, capsys):
    _folder(tmp_path / "data", 40, "" if layout == "flat" else "train")
    from byol.data import load_dataset

    train = load_dataset("imagefolder", "train", str(tmp_path / "data"))
    val = load_dataset("imagefolder", "val", str(tmp_path / "data"))
    assert len(val) > 0 and len(train) + len(val) == 80
    assert not set(train.paths) & set(val.paths)
    assert "held out" in val.split_note
    run = tmp_path / "run"
    args = ["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
            "--data.image_size", "32", "--optim.batch_size", "8", "--train.max_steps", "2", "--quiet"]  # fmt: skip
    assert main([*args, "--run-dir", str(run)]) == 0
    assert main(["knn", str(run), "--quiet", "--k", "5"]) == 0
    result = json.loads((run / "eval" / "knn_imagefolder_pretrained.json").read_text())
    assert "held out" in result["test_split"] and "less the" in result["train_split"]
    assert "held out" in capsys.readouterr().out


def test_meaningless_outputs_are_refused(finished_run, tmp_path, capsys):
    weights = tmp_path / "nan.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = {k: v.float() * float("nan") if v.is_floating_point() else v
               for k, v in load_file(str(finished_run.parent / "enc.safetensors")).items()}  # fmt: skip
    save_file(tensors, str(weights))
    meta = json.loads((finished_run.parent / "enc.json").read_text())
    del meta["sha256"]  # as in an export made before the digest: the features themselves must be refused
    (tmp_path / "nan.json").write_text(json.dumps(meta))
    assert main(["embed", str(weights), "--out", str(tmp_path / "f.npz"), "--quiet"]) == 2
    assert "non-finite features" in capsys.readouterr().err and not (tmp_path / "f.npz").exists()


def test_a_data_error_in_a_dataloader_worker_is_one_line(tmp_path, capsys):
    _folder(tmp_path / "data", 8, "train")
    for path in (tmp_path / "data" / "train").rglob("*.png"):
        path.write_bytes(b"not an image")  # every image corrupt: the reader gives up after its retries
    args = ["pretrain", "--preset", "tiny", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
            "--data.image_size", "32", "--optim.batch_size", "4", "--data.num_workers", "1", "--quiet",
            "--run-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "Traceback" not in err[0] and "unreadable images" in err[0], err


def test_an_encoder_with_nan_weights_is_refused_by_every_evaluation(finished_run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    path = latest_checkpoint(copy)
    payload = load_checkpoint(path)
    online = payload["state"]["online"]
    for key, value in online.items():
        if key.startswith("encoder.") and value.is_floating_point():
            online[key] = value * float("nan")
    torch.save(payload, path)
    for protocol in ("knn", "linear"):
        assert main([protocol, str(copy), "--quiet", "--epochs" if protocol == "linear" else "--k", "1"]) == 2
        assert "non-finite features" in capsys.readouterr().err
    assert not (copy / "eval").exists()  # nothing that looks like a result was written


def test_a_report_on_a_folder_whose_name_is_not_utf8(finished_run, tmp_path):
    import os

    run = tmp_path / os.fsdecode(b"run-\xff\xfe")
    shutil.copytree(finished_run, run)
    assert main(["report", str(run), "--no-embedding"]) == 0
    assert "# BYOL run report" in (run / "report" / "report.md").read_bytes().decode("utf-8")


def test_an_export_killed_while_writing_leaves_nothing_after_the_next_export(finished_run, tmp_path):
    stale = tmp_path / ".enc.safetensors.tmp-999999999"  # no such process: a write that was killed
    stale.write_bytes(b"half an export")
    alive = tmp_path / f".enc.safetensors.tmp-{os.getppid()}"  # a running process's write is not touched
    alive.write_bytes(b"in progress")
    assert main(["export", str(finished_run), "--out", str(tmp_path / "enc.safetensors")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name, "enc.json", "enc.safetensors"]


# ---- one line means one line: paths with odd characters

ODD_CHARACTERS = ["a", "b", " ", "'", '"', "\\", "é", "\n", "\r", "\t", "\x1b", "\u2028", "\x85", "\udcff"]
ODD_NAMES = st.text(alphabet=st.sampled_from(ODD_CHARACTERS), min_size=1, max_size=6)
ODD_COMMANDS = {
    "resume": lambda p: ["pretrain", "--resume", "--run-dir", str(p)],
    "knn": lambda p: ["knn", str(p / "step.pt"), "--quiet"],
    "embed": lambda p: ["embed", str(p / "enc.safetensors"), "--out", str(p / "f.npz")],
    "report": lambda p: ["report", str(p)],
    "data-dir": lambda p: [*TINY, "--run-dir", str(p.parent / "r"), "--dataset", "imagefolder", "--data-dir", str(p)],
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=ODD_NAMES, command=st.sampled_from(sorted(ODD_COMMANDS)))
def test_a_path_with_odd_characters_is_printed_on_one_line(tmp_path, capsys, name, command):
    path = tmp_path / name / "missing"
    code = main(ODD_COMMANDS[command](path))
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert code == 2 and len(err) == 1, err
    assert not any(c in err[0] for c in "\r\x1b\u2028\x85"), err


def test_log_records_are_one_line_whatever_their_arguments_hold():
    from byol.cli import OneLineFormatter

    record = logging.LogRecord("byol", logging.WARNING, __file__, 1, "skipping %s (%s)", ("gr\ney/x.jpg", "a\rb"), None)
    line = OneLineFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING skipping gr\\ney/x.jpg (a\\rb)"


@pytest.mark.parametrize("kind", ["torchscript", "pickle protocol 4"])
def test_a_pickled_file_from_elsewhere_is_refused_without_torchs_warnings(tmp_path, kind):
    import pickle
    import warnings

    path = tmp_path / "step.pt"
    if kind == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's own deprecation, in making the file
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    else:
        path.write_bytes(pickle.dumps({"weights": [1.0]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="pickled objects"):
            load_checkpoint(path)
    assert not caught, [str(w.message) for w in caught]  # torch warns for both before it refuses


def test_a_closed_output_pipe_ends_the_command_silently_after_its_result_is_written(finished_run, tmp_path):
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader went away before the command printed anything (`| head -c0`)
    out = tmp_path / "enc.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from byol.cli import main; sys.exit(main(sys.argv[1:]))", "export",
         str(finished_run), "--out", str(out)], stdout=write, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_a_cache_home_that_is_a_file_gets_one_line_and_no_raw_library_warning(finished_run, tmp_path):
    """matplotlib warns in two raw lines at import when it cannot make its cache folder. Building the parser
    imports no plotting library, so `byol COMMAND --help` says nothing but its help; a report, which draws, says
    in one line where matplotlib's cache goes instead."""
    cache = tmp_path / "cache"
    cache.write_text("a file, not a folder")
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "MPLCONFIGDIR": ""}
    for args in (["knn", "--help"],):
        done = subprocess.run([sys.executable, "-m", "byol", *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", (args, done.stderr)
    run = shutil.copytree(finished_run, tmp_path / "run")  # the shared run is only read
    report = [sys.executable, "-m", "byol", "report", str(run), "--no-embedding", "--quiet"]
    done = subprocess.run(report, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "matplotlib cannot keep its cache" in done.stderr, done.stderr


URLS = st.builds(  # object storage (s3://, gs://) is read and written: tests/test_objectstore.py
    lambda scheme, rest: f"{scheme}://{rest}",
    st.from_regex(r"[A-Za-z][A-Za-z0-9+.\-]{0,7}", fullmatch=True).filter(lambda s: s.lower() not in ("s3", "gs")),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
)
URL_ARGS = [
    lambda url, run: ["prepare", str(run), "--out", url],
    lambda url, run: ["prepare", url, "--out", "shards"],
    lambda url, run: ["pretrain", "--preset", "tiny", "--quiet", "--data-dir", url, "--run-dir", "r"],
    lambda url, run: ["pretrain", "--preset", "tiny", "--quiet", "--data.eval_dir", url, "--run-dir", "r"],
    lambda url, run: ["pretrain", "--preset", "tiny", "--quiet", "--run-dir", url],
    lambda url, run: ["knn", str(run), "--quiet", "--data-dir", url],
    lambda url, run: ["embed", str(run), "--out", "f.npz", "--data-dir", url],
    lambda url, run: ["segment", str(run), "--data-dir", url],
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(url=URLS, make=st.sampled_from(URL_ARGS))
def test_a_url_where_a_folder_goes_is_refused_and_nothing_is_made(finished_run, tmp_path, monkeypatch, capsys, url,
                                                                  make):  # fmt: skip
    """A URL where a folder goes: `--out s3://bucket/x` once made a local folder named "s3:" and exited 0. A URL
    of another scheme than object storage's is refused in one line naming what is valid."""
    work = tmp_path / "cwd"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    before = sorted(work.iterdir())
    code = None
    try:
        code = main(make(url, finished_run))
    except SystemExit as e:  # argparse's refusal of the flag's value
        code = e.code
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if not line.startswith(("usage:", " "))]
    assert code == 2 and len(said) == 1 and ("is a URL" in said[0] or "only object storage at s3://" in said[0]), err
    assert sorted(work.iterdir()) == before
