"""Outputs that a kill leaves old or new, and debris cleaned only when its writer is gone (byol.files)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byol import files
from byol.files import atomic_write, remove_debris, remove_debris_of, replace_folder


def _folder(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


def _build(content: dict[str, bytes]):
    def build(staging: Path) -> None:
        staging.mkdir()
        for name, data in content.items():
            (staging / name).write_bytes(data)

    return build


def _die_at(step: int, action) -> bool:
    """Runs ``action`` in a forked child that dies without clean-up (os._exit, as a SIGKILL would: no finally
    block runs) at its ``step``-th file operation (a file written, a rename, a swap, a folder removed); True
    when it died there, False when it finished first."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no clean-up
        calls = [0]

        def dying(real):
            def operation(*args, **kwargs):
                if calls[0] == step:
                    os._exit(9)
                calls[0] += 1
                return real(*args, **kwargs)

            return operation

        Path.rename = dying(Path.rename)
        Path.write_bytes = dying(Path.write_bytes)
        os.replace = dying(os.replace)
        files.exchange = dying(files.exchange)
        files.shutil.rmtree = dying(files.shutil.rmtree)
        try:
            action()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 9


OLD = {"config.json": b'{"old": 1}', "model.safetensors": b"old weights", "README.md": b"old card"}
NEW = {"config.json": b'{"new": 2}', "model.safetensors": b"new weights, longer", "README.md": b"new card"}


@pytest.mark.parametrize("swap", [True, False], ids=["one swap", "two renames"])
@pytest.mark.parametrize("existed", [True, False], ids=["replaces", "creates"])
def test_a_folder_output_killed_at_any_operation_is_the_old_folder_or_the_new_one(tmp_path, monkeypatch, swap, existed):
    if not swap:  # a system without renameat2: the fallback's two renames, repaired by the next write
        monkeypatch.setattr(files, "exchange", lambda first, second: False)
    if swap and not files.exchange(tmp_path, tmp_path):
        pytest.skip("this filesystem cannot swap two paths in one step")  # pragma: no cover
    died_somewhere = False
    for step in range(20):
        root = tmp_path / f"step{step}"
        root.mkdir()
        out = root / "export"
        if existed:
            _build(OLD)(out)
        died = _die_at(step, lambda out=out: replace_folder(out, _build(NEW)))
        died_somewhere |= died
        if not swap:
            remove_debris_of(out)  # what the next export of this path does first
        assert _folder(out) in ([OLD, NEW] if existed else [{}, NEW]), (step, _folder(out))
        replace_folder(out, _build(NEW))  # the next export succeeds and leaves no debris
        assert _folder(out) == NEW and sorted(p.name for p in root.iterdir()) == ["export"]
        if not died:
            break
    assert died_somewhere


@settings(max_examples=25, deadline=None)
@given(old=st.binary(max_size=64), new=st.binary(max_size=64), step=st.integers(0, 6))
def test_a_file_output_killed_at_any_operation_is_the_old_file_or_the_new_one(tmp_path_factory, old, new, step):
    out = tmp_path_factory.mktemp("out") / "features.npz"
    out.write_bytes(old)
    _die_at(step, lambda: atomic_write(out, lambda f: f.write(new)))
    assert out.read_bytes() in (old, new)
    atomic_write(out, lambda f: f.write(new))
    assert [p.name for p in out.parent.iterdir()] == ["features.npz"]  # the next write cleaned the debris


def test_debris_is_removed_only_when_its_writer_is_gone(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "report"
        folder.mkdir()
        ours = folder / f".loss.png.tmp-{live.pid}"  # a report being written right now
        ours.write_bytes(b"half a png")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        gone = folder / f".loss.png.tmp-{int(dead.stdout)}"
        gone.write_bytes(b"what a killed report left")
        user = folder / "loss.png.tmp-1"  # not a name byol writes
        user.write_bytes(b"the user's")
        assert remove_debris(folder) == [gone]
        atomic_write(folder / "loss.png", lambda f: f.write(b"png"))
        assert ours.exists() and user.exists() and not gone.exists()
    finally:
        live.kill()
        live.wait()
    assert remove_debris(folder) == [ours]
