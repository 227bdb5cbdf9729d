"""Devices, and a thin optional layer for multi-process training under ``torchrun`` (one process is the same
code path).

- :func:`resolve_device` turns ``auto`` / ``cpu`` / ``cuda:N`` into a device; :func:`setup` also joins
  torchrun's process group and gives each rank its GPU.

- :func:`init_distributed` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); without it the run
  is a single process and nothing here does anything.
- :class:`CrossReplicaBatchNorm` normalises with the statistics of the GLOBAL batch, as the released code's
  cross-replica BN does (``cross_replica_axis``). PyTorch's ``SyncBatchNorm`` only runs on GPUs; this one
  all-reduces per-channel sums with a differentiable all-reduce, so it also runs on CPUs with gloo, and the
  gradient flows through the shared statistics exactly as in one process with the whole batch.
- Logging is filtered by rank through ``logging`` (rank 0 speaks); metrics and checkpoints are rank 0's job.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from byol.errors import ConfigError
from byol.processes import die_with_parent


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class _MainRankOnly(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.ERROR


def _integer(name: str, default: str) -> int:
    text = os.environ.get(name, default)
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer; unset it") from None


def environment() -> DistributedContext:
    """This process's place in torchrun's process group, read from RANK, WORLD_SIZE and LOCAL_RANK. Variables
    that do not describe a process group (a stray RANK=1 from a cluster shell, WORLD_SIZE without RANK, a rank
    outside [0, WORLD_SIZE)) are refused: a process that wrongly believed it was not rank 0 would write without
    the run directory's lock."""
    world_size, rank, local_rank = _integer("WORLD_SIZE", "1"), _integer("RANK", "0"), _integer("LOCAL_RANK", "0")
    if world_size < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world_size} must be >= 1")
    if world_size > 1:
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ConfigError(
                f"WORLD_SIZE={world_size} without {', '.join(missing)} does not describe a process group; "
                "start multi-process runs with torchrun, or unset WORLD_SIZE"
            )
    if not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(
            f"RANK={rank} (LOCAL_RANK={local_rank}) with WORLD_SIZE={world_size} does not describe a process "
            "group; unset RANK (and LOCAL_RANK) for a single-process run, or start with torchrun"
        )
    return DistributedContext(rank, world_size, local_rank)


def init_distributed(device: torch.device) -> DistributedContext:
    """Joins torchrun's process group (nccl on CUDA, gloo on CPU) when WORLD_SIZE > 1; idempotent."""
    context = environment()
    if not context.enabled:
        return context
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent: end with it, however it ends
        die_with_parent(os.getppid())
    rank = context.rank
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend)
        else:  # torchrun's store outlives a restart: each round's keys get their own prefix, or a restarted rank
            # may read its peer's address from the round before and dial a process that is gone
            store, rank, world_size = next(dist.rendezvous("env://"))
            dist.init_process_group(backend, store=dist.PrefixStore(f"byol/round-{restart}", store), rank=rank,
                                    world_size=world_size)  # fmt: skip
    for handler in logging.getLogger().handlers:
        handler.addFilter(_MainRankOnly(rank))
    return context


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU where there is one), ``cpu``, ``cuda`` or ``cuda:N``; any other device is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # refused below
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and device.index not in (None, 0)):
        raise ConfigError(f"train.device: {name!r} is not a device byol runs on (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r} does not exist here ({torch.cuda.device_count()} CUDA device(s))")
    return device


def setup(device_name: str) -> tuple[torch.device, DistributedContext]:
    """The device of this process and its place among torchrun's ranks (one rank per GPU)."""
    device = resolve_device(device_name)
    context = init_distributed(device)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device, context


def leave() -> None:
    """Leaves torchrun's process group at the end of a command, all ranks together: a process that exits with its
    gloo threads still running aborts ("terminate called without an active exception"), which torchrun's c10d
    rendezvous reports as a failed rank."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # the finished run's DDP reducers go while the group still lives
        dist.barrier()
        dist.destroy_process_group()


def current_context() -> DistributedContext:
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedContext()
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


class CrossReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the batches of all ranks together (2-D or 4-D inputs); plain BN in one process."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        channels = x.shape[1]
        xf = x.float()
        count = torch.tensor([xf.numel() / channels], device=x.device)
        with warnings.catch_warnings():  # the differentiable all-reduce is marked deprecated, not replaced publicly
            warnings.simplefilter("ignore", FutureWarning)
            sums = dist_fn.all_reduce(torch.cat((xf.sum(dims), (xf * xf).sum(dims), count)))  # SUM, differentiable
        n = sums[-1]
        mean = sums[:channels] / n
        var = (sums[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)  # biased, as BN normalises
        if self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        shape = [1, channels] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm1d/2d by a :class:`CrossReplicaBatchNorm` with the same state; in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm1d | nn.BatchNorm2d):
            replacement = CrossReplicaBatchNorm(child.num_features, child.eps, child.momentum, child.affine)
            replacement.load_state_dict(child.state_dict())
            replacement.to(child.weight.device)
            replacement.requires_grad_(child.weight.requires_grad)
            setattr(module, name, replacement)
        else:
            convert_batchnorm(child)
    return module


def all_reduce_mean(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """The mean over ranks of each scalar (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked, strict=True))
