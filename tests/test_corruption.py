"""Generated damage, not a list of reported cases: every file a run directory holds, every dataset file and every
numeric flag, corrupted in every way hypothesis draws (cut at every length class, bytes flipped, JSON of the
wrong type, keys dropped, foreign objects, bytes that are not UTF-8, numbers at and beyond their ranges).

The promise checked on each draw: the command exits 0 with a well-formed result, or 2 with one line on stderr;
it never leaves a traceback, and it never changes a byte of a file it was not asked to write (a checkpoint that
does not load completely is moved aside whole, as ``*.unreadable``, never changed).
"""

import argparse
import gzip
import io
import itertools
import json
import math
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byol.cli import build_parser, main
from byol.commands.common import data_folder, directory
from byol.commands.data import output_place
from byol.config import apply_overrides, flatten, get_preset
from byol.data import load_dataset
from byol.errors import DataError
from byol.train import pretrain

PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True)


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory):
    """A finished 8-step tiny run (checkpoints at steps 4 and 8) with a kNN result in eval/."""
    run = tmp_path_factory.mktemp("corrupt") / "run"
    pretrain(apply_overrides(get_preset("tiny"), {"train.max_steps": 8}), run, progress=False)
    assert main(["knn", str(run), "--quiet", "--k", "10"]) == 0
    return run


RUN_FILES = [
    "config.json",
    "environment.json",
    "metrics.jsonl",
    "checkpoints/step_000000008.pt",
    "checkpoints/step_000000004.pt",
    "eval/knn_synthetic_pretrained.json",
]


def _json_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5))

    def containers(inner):
        return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)

    return st.recursive(scalars, containers, max_leaves=6)


def _foreign_checkpoint(draw):
    """A torch file that loads safely but is not what a byol checkpoint holds."""
    payload = draw(
        st.sampled_from(
            [
                {"format": 1},
                {"format": 1, "config": "{}", "state": {}, "rng": {}},
                {"format": 1, "config": json.dumps({"model": {"depth": 33}}), "state": {"online": {}}, "rng": {}},
                {"format": 1, "config": "[]", "state": [], "rng": None},
                [1, 2, 3],
                {"format": 1, "config": json.dumps({"model": {"width": -1}}), "state": {"step": "x"}},
            ]
        )
    )
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@st.composite
def damage(draw, original: bytes, name: str, kinds: list[str] | None = None):
    """New bytes for a file: cut, flipped, replaced by other JSON, a key dropped, not UTF-8, or foreign."""
    chosen, kinds = kinds, ["truncate", "flip", "not-utf8"]
    try:
        data = json.loads(original.decode()) if name.endswith(".json") else None
    except ValueError:
        data = None
    if name.endswith(".json"):
        kinds += ["json-type"] + (["drop-key"] if isinstance(data, dict) and data else [])
    if name.endswith(".jsonl"):
        kinds += ["odd-line"]
    if name.endswith(".pt"):
        kinds += ["foreign"]
    if name.endswith(".safetensors"):  # a bit flipped in the tensor data, past the header that safetensors checks
        kinds += ["flip-data"]
    kind = draw(st.sampled_from(chosen or kinds))
    if kind == "truncate":  # every length class: empty, a byte, inside, one short of the end
        cut = draw(st.sampled_from([0, 1, len(original) // 2, len(original) - 1]) | st.integers(0, len(original)))
        return original[:cut]
    if kind == "flip":
        position = draw(st.integers(0, len(original) - 1))
        return original[:position] + bytes([original[position] ^ draw(st.integers(1, 255))]) + original[position + 1 :]
    if kind == "flip-data":
        position = draw(st.integers(len(original) // 2, len(original) - 1))
        return original[:position] + bytes([original[position] ^ draw(st.integers(1, 255))]) + original[position + 1 :]
    if kind == "not-utf8":
        position = draw(st.integers(0, len(original)))
        return original[:position] + b"\xff\xfe\xc3(" + original[position:]
    if kind == "json-type":
        return json.dumps(draw(_json_values())).encode()
    if kind == "drop-key":
        assert isinstance(data, dict)
        key = draw(st.sampled_from(sorted(data)))
        return json.dumps({k: v for k, v in data.items() if k != key}).encode()
    if kind == "odd-line":
        line = draw(st.sampled_from(["3", "[]", '{"step": 2}', '{"step": 9, "byol_loss": "x"}', "null", '{"tau": 1}']))
        lines = original.splitlines(keepends=True)
        at = draw(st.integers(0, len(lines)))
        return b"".join([*lines[:at], line.encode() + b"\n", *lines[at:]])
    return _foreign_checkpoint(draw)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


COMMANDS = {
    "resume": lambda run, out: ["pretrain", "--resume", "--run-dir", str(run), "--quiet"],
    "knn": lambda run, out: ["knn", str(run), "--quiet", "--k", "10"],
    "linear": lambda run, out: ["linear", str(run), "--quiet", "--mode", "cached", "--epochs", "1", "--lrs", "0.1"],
    "report": lambda run, out: ["report", str(run), "--no-embedding"],  # the map reads what knn reads
    "export": lambda run, out: ["export", str(run), "--out", str(out / "enc.safetensors")],
}
# What each command needs intact to succeed (refusing with one line is right when it is not). Everything else
# must not stop it: resume falls back past a newest checkpoint that does not load completely, the report leaves
# out an evaluation file that is not one, a resume moves a damaged environment.json aside and starts its history
# afresh.
NEEDS = {
    "resume": ("config.json",),  # a config.json that still reads as a config but differs is the user's edit: refused
    "knn": ("checkpoints/step_000000008.pt",),
    "linear": ("checkpoints/step_000000008.pt",),
    "export": ("checkpoints/step_000000008.pt",),
    "report": ("config.json", "metrics.jsonl"),
}
# What each command may write: paths below the run directory (resume: the run itself), or the export's files.
MAY_WRITE = {
    "resume": ("",),
    "knn": ("eval/knn_",),
    "linear": ("eval/linear-",),
    "report": ("report/",),
    "export": (),
}


# A report drawn without the map reads neither a checkpoint nor environment.json, and each one costs a second of
# matplotlib: damage that cannot reach it is drawn in `make test-slow` only.
UNREAD = {("environment.json", "report"), *((name, "report") for name in RUN_FILES if name.endswith(".pt"))}
CASES = [pytest.param(*case, marks=pytest.mark.slow) if case in UNREAD else case
         for case in itertools.product(RUN_FILES, sorted(COMMANDS))]  # fmt: skip


# Each generated case of the two tests below runs a command on a damaged run (0.3 to 1 s): `make test` draws a few
# per case, `make test-slow` (CI runs both) several times more.
DRAWS = pytest.mark.parametrize("draws", [2, pytest.param(8, marks=pytest.mark.slow)])


@DRAWS
@pytest.mark.parametrize(("name", "command"), CASES)
def test_a_damaged_run_file_gives_a_result_or_one_line_and_changes_nothing_else(
    two_checkpoint_run, capsys, name, command, draws
):
    @settings(PROPERTY, max_examples=draws)
    @given(data=st.data())
    def check(data):
        with tempfile.TemporaryDirectory() as tmp:
            run, out = Path(tmp) / "run", Path(tmp) / "out"
            shutil.copytree(two_checkpoint_run, run)
            out.mkdir()
            target = run / name
            target.write_bytes(data.draw(damage(target.read_bytes(), name), label="damage"))
            before = _snapshot(run)
            capsys.readouterr()
            code = main(COMMANDS[command](run, out))
            err = capsys.readouterr().err
            assert code in (0, 2), err
            assert code == 0 or name in NEEDS[command], err
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and err.startswith(
                    f"byol {COMMANDS[command](run, out)[0]}: error:"
                )
            after = _snapshot(run)
            for path, content in before.items():
                if any(path.startswith(prefix) for prefix in MAY_WRITE[command]):
                    continue
                moved = after.get(path + ".unreadable")
                assert after.get(path) == content or moved == content, f"{command} changed {path}"
            if code == 0 and command in ("knn", "linear"):
                (result,) = [p for p in (run / "eval").glob(f"{command}*.json")]
                assert 0 <= json.loads(result.read_text())["top1"] <= 100
            if code == 0 and command == "resume":
                assert (run / "checkpoints" / "step_000000008.pt").is_file()

    check()


@DRAWS
@pytest.mark.parametrize("kind", ["truncate", "flip", "foreign"])
def test_resume_falls_back_past_a_newest_checkpoint_damaged_in_any_way(two_checkpoint_run, capsys, kind, draws):
    @settings(PROPERTY, max_examples=draws)
    @given(data=st.data())
    def check(data):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            shutil.copytree(two_checkpoint_run, run)
            newest = run / "checkpoints" / "step_000000008.pt"
            damaged = data.draw(damage(newest.read_bytes(), "step.pt", kinds=[kind]), label="damage")
            newest.write_bytes(damaged)
            assert main(["pretrain", "--resume", "--run-dir", str(run), "--quiet"]) == 0, capsys.readouterr().err
            aside = newest.with_name(newest.name + ".unreadable")
            assert not aside.exists() or aside.read_bytes() == damaged  # moved aside whole, never changed
            assert (run / "checkpoints" / "step_000000008.pt").is_file()  # the run reached its end again

    check()


@settings(PROPERTY, max_examples=40)
@given(data=st.data())
def test_a_damaged_export_loads_exactly_or_is_refused(finished_run, data):
    """Either file of an export (the weights, the architecture JSON), damaged: load_encoder gives an encoder equal
    to the run's online encoder, or raises CheckpointError; it never builds something else."""
    from byol import load_encoder
    from byol.errors import CheckpointError
    from byol.evaluate.common import load_encoder_from_run

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("enc.safetensors", "enc.json"):
            shutil.copy(finished_run.parent / name, Path(tmp) / name)
        name = data.draw(st.sampled_from(["enc.safetensors", "enc.json"]), label="file")
        target = Path(tmp) / name
        target.write_bytes(data.draw(damage(target.read_bytes(), name), label="damage"))
        try:
            encoder = load_encoder(Path(tmp) / "enc.safetensors")
        except CheckpointError as e:
            assert "\n" not in str(e)
            return
        x = torch.rand(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.equal(encoder(x), load_encoder_from_run(finished_run).encoder.eval()(x))


# ---- dataset files


def _cifar_files(root: Path, rng: np.random.Generator) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": 6 for i in range(1, 6)} | {"test_batch": 4}
    contents = {}
    for name, n in batches.items():
        contents[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
    contents["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    for name, content in contents.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return contents


@st.composite
def cifar_damage(draw, contents):
    """A CIFAR file replaced by another pickled structure, or its bytes cut or flipped."""
    name = draw(st.sampled_from(sorted(contents)))
    content = dict(contents[name])
    kind = draw(st.sampled_from(["shape", "count", "labels", "names", "keys", "bytes"]))
    if kind == "shape" and b"data" in content:
        content[b"data"] = np.zeros(draw(st.sampled_from([(6, 3071), (6,), (6, 3, 32, 32), (0, 3072)])), np.uint8)
    elif kind == "count" and b"labels" in content:
        content[b"labels"] = content[b"labels"][: draw(st.integers(0, len(content[b"labels"]) - 1))]
    elif kind == "labels" and b"labels" in content:
        content[b"labels"] = [draw(st.sampled_from([-2, 10, 255, 2**40]))] * len(content[b"labels"])
    elif kind == "names":
        content = {b"label_names": draw(st.sampled_from([[], [b"a"], "abc", None, [1, 2]]))}
    elif kind == "keys":
        content = {draw(st.sampled_from([b"x", b"data", b"labels"])): [1]}
    raw = pickle.dumps(content)
    if kind == "bytes":
        cut = draw(st.integers(0, len(raw) - 1))
        raw = raw[:cut] + bytes([raw[cut] ^ 0x5A]) if draw(st.booleans()) else raw[:cut]
    return name, raw


@settings(PROPERTY, max_examples=60)
@given(data=st.data())
def test_damaged_cifar_files_are_refused_or_read_correctly(tmp_path, data):
    with tempfile.TemporaryDirectory() as tmp:
        contents = _cifar_files(Path(tmp), np.random.default_rng(0))
        name, raw = data.draw(cifar_damage(contents))
        (Path(tmp) / "cifar-10-batches-py" / name).write_bytes(raw)
        for split in ("train", "test"):
            try:
                dataset = load_dataset("cifar10", split, tmp)
            except DataError as e:
                assert "\n" not in str(e)
                continue
            assert dataset.images.dtype == torch.uint8 and dataset.images.shape[1:] == (3, 32, 32)
            assert len(dataset.labels) == len(dataset) and int(dataset.labels.min()) >= 0
            assert int(dataset.labels.max()) < len(dataset.classes)


@settings(PROPERTY, max_examples=60)
@given(cut=st.integers(0, 10_000), flip=st.none() | st.tuples(st.integers(0, 10_000), st.integers(1, 255)),
       which=st.sampled_from(["images", "labels"]), label=st.integers(0, 255), compress=st.booleans())  # fmt: skip
def test_damaged_fashion_mnist_files_are_refused_or_read_correctly(cut, flip, which, label, compress):
    with tempfile.TemporaryDirectory() as tmp:
        n = 20
        images = bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">i4").tobytes() + bytes(n * 28 * 28)
        labels = bytes([0, 0, 8, 1]) + np.array([n], ">i4").tobytes() + bytes([label % 12] * n)
        files = {"images": images, "labels": labels}
        raw = files[which]
        if flip is not None:
            position = flip[0] % len(raw)
            raw = raw[:position] + bytes([raw[position] ^ flip[1]]) + raw[position + 1 :]
        files[which] = raw[: cut % (len(raw) + 1)]
        for kind, content in files.items():
            stem = f"t10k-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            (Path(tmp) / (stem + ".gz" if compress else stem)).write_bytes(
                gzip.compress(content) if compress else content
            )
        try:
            dataset = load_dataset("fashion-mnist", "test", tmp)
        except DataError as e:
            assert "\n" not in str(e)
            return
        assert dataset.images.shape[1] == 1 and len(dataset.labels) == len(dataset) > 0
        assert int(dataset.labels.min()) >= 0 and int(dataset.labels.max()) < 10


# ---- numeric flags, at and beyond every range

NUMERIC_KEYS = sorted(
    key
    for key, value in flatten(get_preset("tiny").to_dict()).items()
    if isinstance(value, int | float) and not isinstance(value, bool)
)
EDGES = ["-1", "0", "1", "-0.5", "0.5", "1e400", "-1e400", "1e308", "-1e308", "nan", "inf", "1e18", str(2**63),
         str(2**64), "2.5", "x"]  # fmt: skip


@settings(PROPERTY, max_examples=80)
@given(key=st.sampled_from(NUMERIC_KEYS), value=st.sampled_from(EDGES) | st.floats().map(repr) | st.integers().map(str))
def test_numeric_flags_at_and_beyond_their_ranges_start_a_run_or_give_one_line(capsys, monkeypatch, key, value):
    """The flags are parsed and validated as the CLI does; a config that passes must build its networks and
    schedules and seed every RNG (on the meta device, in no time), so a value refused only mid-run is caught."""
    from byol.networks import build_online_network
    from byol.seeding import seed_everything
    from byol.train import Schedule

    def dry_run(config, run_dir, progress):
        seed_everything(config.train.seed, deterministic=False)
        Schedule.create(config, steps_per_epoch=16)
        with torch.device("meta"):
            build_online_network(config.model, 3)

    monkeypatch.setattr("byol.train.pretrain", dry_run)
    with tempfile.TemporaryDirectory() as tmp:
        code = main(["pretrain", "--preset", "tiny", "--run-dir", str(Path(tmp) / "r"), f"--{key}", value])
    err = capsys.readouterr().err
    assert code in (0, 2) and (code == 0 or len(err.strip().splitlines()) == 1), err


def _numeric_flags(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> list:
    """(the command's words, the required arguments, the flag, its (lowest, highest)) of every numeric flag of
    every command and sub-command; a flag typed by anything but a bounded number or a path fails the test."""
    found = []
    required = [a for a in parser._actions if a.required and not isinstance(a, argparse._SubParsersAction)]

    def valid(action: argparse.Action) -> str:  # a value the required argument takes: a choice, a count, a path
        if action.choices:
            return str(next(iter(action.choices)))
        bounds = getattr(action.type, "bounds", None)
        return str(max(1, int(bounds[0]))) if bounds else "x.npz"

    filled = [v for a in required for v in [*a.option_strings[:1], valid(a)]]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _numeric_flags(sub, (*words, name))
        elif action.type is not None and action.type not in (Path, directory, data_folder, output_place, str):
            bounds = getattr(action.type, "bounds", None)
            assert bounds is not None and math.isfinite(bounds[1]), f"{words} {action.option_strings} is unbounded"
            found.append((words, tuple(filled), action.option_strings[0], bounds))
    return found


NUMERIC_FLAGS = _numeric_flags(build_parser())


def test_every_command_has_its_numeric_flags_bounded():
    commands = {words[0] for words, *_ in NUMERIC_FLAGS}
    assert {"knn", "linear", "finetune", "demo", "bench", "ablate"} <= commands, commands


@settings(PROPERTY, max_examples=120)
@given(
    flag=st.sampled_from(NUMERIC_FLAGS),
    value=st.sampled_from(EDGES) | st.floats().map(repr) | st.integers().map(str) | st.just("1,1e400"),
)
def test_every_numeric_flag_of_every_command_takes_a_value_in_range_or_gives_one_line(capsys, flag, value):
    words, required, option, (lowest, highest) = flag
    try:
        args, _ = build_parser().parse_known_args([*words, *required, option, value])
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        assert e.code == 2 and "error:" in err[-1] and option in err[-1], err
        assert len([line for line in err if not line.startswith(("usage:", " "))]) == 1, err
        return
    parsed = getattr(args, next(a.dest for a in _parser_of(words)._actions if option in a.option_strings))
    for number in parsed if isinstance(parsed, tuple) else (parsed,):
        assert math.isfinite(number) and lowest <= number <= highest, (option, value, parsed)


def _parser_of(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser
