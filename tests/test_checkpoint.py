import errno
import os
import pickle

import pytest
import torch

from byol.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from byol.errors import CheckpointError
from byol.files import atomic_write


def test_save_keeps_the_last_k_and_loads_back(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"format": 1, "w": torch.full((3,), float(step))}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000002.pt", "step_000000003.pt"]
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], torch.full((3,), 3.0))


def test_truncated_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"format": 1, "w": torch.randn(1000)})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_checkpoint_with_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoints" / "step_000000001.pt"
    path.parent.mkdir()
    with open(path, "wb") as f:
        torch.save({"format": 1, "evil": _RunsCode()}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_run_dir_without_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path / "missing")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"format": 1, "w": torch.ones(2)})
    with pytest.raises(AttributeError):  # an unpicklable payload fails mid-write
        save_checkpoint(tmp_path, 2, {"format": 1, "f": lambda: 0})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000001.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def _no_space_at_fsync(monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)


def _zip_writer_fails(monkeypatch):  # what torch's zip writer raises on a full disk, after writing a part
    def full_disk(payload, f):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full_disk)


@pytest.mark.parametrize(("fail", "reason"), [(_no_space_at_fsync, "No space left"), (_zip_writer_fails, "Pytorch")])
def test_a_full_disk_gives_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fail, reason):
    save_checkpoint(tmp_path, 1, {"format": 1, "w": torch.ones(2)})
    fail(monkeypatch)
    message = rf"could not write checkpoint .*step_000000002\.pt: .*{reason}.*step_000000001\.pt is intact"
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(tmp_path, 2, {"format": 1, "w": torch.ones(2)})
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000000001.pt"]  # no temporary file left
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], torch.ones(2))


def test_a_failed_write_names_its_path_even_when_the_os_does_not(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as e:
        atomic_write(tmp_path / "result.json", full)
    assert e.value.filename == str(tmp_path / "result.json") and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
