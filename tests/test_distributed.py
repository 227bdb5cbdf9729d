"""Issue 7: two gloo processes with batch B each take the same step as one process with batch 2B."""

import datetime
import gc
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import assert_all_end, child_pids, logged_steps, tiny_state, wait_until

from byol import rundir
from byol.cli import main
from byol.distributed import CrossReplicaBatchNorm
from byol.train import Schedule, ViewBatch, train_step

B = 8
SCHEDULE = Schedule(max_steps=10, warmup_steps=0, steps_per_epoch=5, batch_size=2 * B, base_lr=0.5, base_ema=0.9)


def _inputs():
    g = torch.Generator().manual_seed(42)
    return (
        torch.randn(2 * B, 3, 16, 16, generator=g),
        torch.randn(2 * B, 3, 16, 16, generator=g),
        torch.arange(2 * B) % 4,
    )


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
    state = tiny_state(SCHEDULE)
    assert any(isinstance(m, CrossReplicaBatchNorm) for m in state.online.modules())
    v1, v2, y = _inputs()
    half = slice(rank * B, (rank + 1) * B)
    metrics = train_step(state, ViewBatch(v1[half], v2[half], y[half]))
    loss = metrics["byol_loss"].clone()
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / 2, "online": state.online.state_dict(), "target": state.target.state_dict()},
                   os.path.join(out_dir, "ddp.pt"))  # fmt: skip
    del state, metrics  # DDP's reducer goes while the process group lives: freed after it, it hung 1 run in 10
    gc.collect()
    dist.barrier()  # leave together: a rank tearing down while its peer still talks can hang gloo
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    # forked, not spawned: the ranks start with torch and this module loaded instead of importing them again
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ddp = torch.load(tmp_path / "ddp.pt")
    state = tiny_state(SCHEDULE)
    metrics = train_step(state, ViewBatch(*_inputs()))
    assert abs(metrics["byol_loss"].item() - ddp["loss"].item()) < 1e-5
    for network, module in (("online", state.online), ("target", state.target)):
        for name, value in module.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(ddp[network][name], value, atol=1e-5, rtol=0, msg=f"{network}.{name}")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RANK": "1"}, "RANK=1 (LOCAL_RANK=0) with WORLD_SIZE=1 does not describe a process group"),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 without RANK, MASTER_ADDR, MASTER_PORT"),
        ({"RANK": "x"}, "RANK='x' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "RANK=2"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be >= 1"),
    ],
)
def test_an_environment_that_describes_no_process_group_is_refused_before_any_write(
    tmp_path, monkeypatch, capsys, env, words
):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with rundir.exclusive(tmp_path / "run"):  # a run directory of the package (a RANK=1 once wrote into one
        pass  # that another process held, without the lock)
    assert main(["pretrain", "--preset", "tiny", "--quiet", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".byol-run", ".lock"]  # nothing written


# torchrun and two ranks (about 9 s): `make test-slow`. The default suite keeps a torchrun run (the test above) and
# a killed command whose workers end with it (test_shards' SIGKILLed prepare)
@pytest.mark.slow
def test_ranks_under_a_sigkilled_torchrun_end_with_it(tmp_path):
    """torchrun's agent killed with SIGKILL (a lost node, a scheduler's kill): its ranks end too, instead of
    training on or waiting in a collective for good."""
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(port.getsockname()[1]), "-m", "byol", "pretrain", "--preset", "tiny", "--quiet", "--epochs", "1000",
        "--run-dir", str(run), "--train.compile", "false",
    ]  # fmt: skip
    port.close()
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert wait_until(lambda: logged_steps(run) >= 1, agent, "the ranks' first steps"), agent.stderr.read()
    ranks = child_pids(agent.pid)
    assert len(ranks) == 2, ranks
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert_all_end(ranks, "torchrun's ranks")


def _final_weights(run):
    from byol.checkpoint import latest_checkpoint, load_checkpoint

    state = load_checkpoint(latest_checkpoint(run))["state"]
    return state["step"], {f"{n}.{k}": v for n in ("online", "target") for k, v in state[n].items()}


ELASTIC = ["pretrain", "--preset", "tiny", "--dataset", "synthetic", "--quiet", "--train.max_steps", "24",
           "--train.checkpoint_every", "2", "--train.deterministic", "true", "--train.compile", "false"]  # fmt: skip


def _torchrun(run, restarts, rendezvous):
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", "2", "--max-restarts",
               str(restarts), "-m", "byol", *ELASTIC, "--resume", "auto", "--run-dir", str(run)]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


# torchrun's c10d rendezvous (--standalone) and its static one (--master_port): a restart keeps the first round's
# store, whose keys byol's ranks prefix by round (a restarted rank read its dead peer's address 1 run in 2 before)
@pytest.mark.slow  # three torchrun groups of two ranks (about 30 s); the default suite's torchrun run is above
@pytest.mark.parametrize("rendezvous", [["--standalone"], ["--master_port", "free"]], ids=["c10d", "static"])
def test_a_rank_killed_under_torchrun_max_restarts_resumes_to_the_uninterrupted_weights(tmp_path, rendezvous):
    """The elastic job: `torchrun --max-restarts 1 ... byol pretrain --resume auto`; one rank SIGKILLed mid-run
    (a lost node); torchrun restarts the group, which continues from the last checkpoint to the weights of a run
    that was never interrupted, bit for bit (fixed data order, deterministic CPU kernels, the same world size)."""
    rendezvous = [str(_free_port()) if word == "free" else word for word in rendezvous]
    reference = _torchrun(tmp_path / "reference", 0, rendezvous)
    assert reference.wait() == 0, reference.stderr.read()
    run = tmp_path / "elastic"
    agent = _torchrun(run, 1, rendezvous)
    assert wait_until(lambda: logged_steps(run) >= 7, agent, "step 7 of the elastic run"), agent.stderr.read()
    first = sorted(child_pids(agent.pid))
    assert len(first) == 2, first
    os.kill(first[1], signal.SIGKILL)  # one rank: its peer is stopped by the agent, and both start again
    assert agent.wait() == 0, agent.stderr.read()
    assert_all_end(first, "the first group's ranks")
    step, weights = _final_weights(run)
    ref_step, ref_weights = _final_weights(tmp_path / "reference")
    assert step == ref_step == 24
    for name, tensor in ref_weights.items():
        assert torch.equal(weights[name], tensor), name
    steps = [r["step"] for r in rundir.read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 24  # the records past the checkpoint were replaced


def test_resume_auto_starts_a_run_continues_it_and_refuses_other_flags(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*ELASTIC, "--train.max_steps", "4", "--resume", "auto", "--run-dir", str(run)]
    assert main(args) == 0  # nothing there: it starts
    assert main(args) == 0  # a finished run: it continues it (nothing left to do) rather than refuse
    assert [r["step"] for r in rundir.read_metrics(run)][-1] == 4
    capsys.readouterr()
    assert main([*args, "--optim.base_lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--resume auto:" in err and "optim.base_lr" in err and len(err.strip().splitlines()) == 1
