import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# torch is imported where a test needs it, not here: under pytest-xdist the process that hands out the tests loads
# this file too, before it starts the workers, and never runs a test (2 s of torch import off the suite's wall time).
# Under pytest-xdist (`make test` runs one worker per core) each worker and the processes its tests start compute
# on one thread: two workers of two threads each on two cores would slow each other down.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

# Runs `byol ARGS` in a child process whose checkpoint write of one step stalls half-way (a few bytes in the
# temporary file, then a long sleep) after touching a marker file: a test can kill it mid-save at a known point,
# whatever the machine's speed.
_STALLING_MAIN = """
import os, sys, time
from pathlib import Path
import byol.checkpoint as checkpoint
from byol.cli import main

real_write, stall_name, marker = checkpoint.atomic_write, os.environ["STALL_AT"], Path(os.environ["STALL_MARKER"])

def atomic_write(path, write):
    if path.name != stall_name:
        return real_write(path, write)
    def stalled(f):
        f.write(b"PK half a checkpoint")
        f.flush()
        marker.touch()
        time.sleep(600)
    return real_write(path, stalled)

checkpoint.atomic_write = atomic_write
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def _deterministic_threads():
    import torch

    torch.manual_seed(0)
    yield


def start_byol(args, stall_at_step=None, marker=None):
    """`python -m byol ARGS` as a child process; with ``stall_at_step`` its save of that checkpoint stalls."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "byol", *args]
    if stall_at_step is not None:
        env.update(STALL_AT=f"step_{stall_at_step:09d}.pt", STALL_MARKER=str(marker))
        command = [sys.executable, "-c", _STALLING_MAIN, *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until(condition, proc, what, limit_s=600.0):
    """Polls ``condition()`` until it holds; False if ``proc`` ended first. The limit only catches a hang."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"{what} did not happen within {limit_s:.0f} s"
        time.sleep(0.005)
    return True


def logged_steps(run_dir: Path) -> int:
    """The highest step in metrics.jsonl (complete lines only)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return -1
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    return max((json.loads(line)["step"] for line in lines), default=-1)


def run_killed_and_resumed(args, tmp_path, kill_at_step, resume=("--resume",)):
    """``byol ARGS`` run twice: uninterrupted into tmp_path/reference, and SIGKILLed once metrics.jsonl shows
    ``kill_at_step`` into tmp_path/killed, then resumed there with ``resume``. Returns (reference, killed, the
    resume's stderr)."""
    reference, run = tmp_path / "reference", tmp_path / "killed"
    proc = start_byol([*args, "--run-dir", str(reference)])
    assert proc.wait() == 0, proc.stderr.read()
    proc = start_byol([*args, "--run-dir", str(run)])
    reached = wait_until(lambda: logged_steps(run) >= kill_at_step, proc, f"step {kill_at_step} in metrics.jsonl")
    assert reached, proc.stderr.read()
    children = child_pids(proc.pid)  # DataLoader workers, where the run has them
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert_all_end(children, "the killed run's child processes")
    proc = start_byol(["pretrain", "--run-dir", str(run), *resume])
    stderr = proc.communicate()[1]
    assert proc.returncode == 0, stderr
    return reference, run, stderr


def assert_same_networks(a, b):
    """Two checkpoints' states hold the same step and the same online and target weights, bit for bit."""
    import torch

    assert a["step"] == b["step"]
    for network in ("online", "target"):
        for name, tensor in a[network].items():
            assert torch.equal(b[network][name], tensor), (network, name)


def tiny_state(schedule, config=None):
    """A training state of ``config`` (default: the tiny preset) for 3-channel images of 4 classes on the CPU."""
    import torch

    from byol.config import get_preset
    from byol.train import create_state

    config = config if config is not None else get_preset("tiny")
    return create_state(config, in_channels=3, num_classes=4, device=torch.device("cpu"), schedule=schedule)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """A finished 4-step tiny run with its online encoder exported beside it (enc.safetensors, enc.json); tests
    only read it."""
    from byol.config import apply_overrides, get_preset
    from byol.export import export_encoder
    from byol.train import pretrain

    path = tmp_path_factory.mktemp("finished") / "run"
    pretrain(apply_overrides(get_preset("tiny"), {"train.max_steps": 4}), path, progress=False)
    export_encoder(path, path.parent / "enc.safetensors")
    return path


def child_pids(pid):
    """The process ids of ``pid``'s children, from Linux's /proc (every thread's list)."""
    found = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        found.update(int(p) for p in children.read_text().split())
    return found


def alive(pid):
    """Whether ``pid`` runs: a zombie (dead, not yet reaped; containers' init may never reap it) does not count."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def assert_all_end(pids, what, limit_s=30.0):
    """Every process of ``pids`` ends within ``limit_s`` (a limit that only catches one that never does)."""
    deadline = time.monotonic() + limit_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            for pid in pids:  # the suite leaves nothing running, even when this check fails
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"{what} still run {limit_s:.0f} s after their parent died")
        time.sleep(0.01)
