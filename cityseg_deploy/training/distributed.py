"""Distributed data-parallel set-up, in one place (as torchvision's references/segmentation/utils.py).

``torchrun --nproc-per-node N -m cityseg_deploy train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_distributed` reads them, picks the backend (NCCL on CUDA, Gloo on CPU)
and joins the process group.  Without those variables everything here is a no-op and training
runs in one process.  Only the main process (rank 0) writes files and draws progress bars.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module joined the group, so it also leaves it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_torchrun() -> DistEnv:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return DistEnv(rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                       local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    return DistEnv()


def init_distributed(device_type: str) -> DistEnv:
    """Join the process group when launched by torchrun (NCCL on CUDA, Gloo otherwise)."""
    env = env_from_torchrun()
    if not env.enabled:
        return env
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    if dist.is_initialized():  # the caller set the group up and will tear it down
        return env
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)
    return DistEnv(env.rank, env.world_size, env.local_rank, owns_group=True)


def cleanup(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed (parameters broadcast from rank 0)."""
    if not env.enabled:
        return model
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def broadcast_buffers(model: nn.Module, env: DistEnv) -> None:
    """Give every process rank 0's buffers (BN running statistics).

    DDP broadcasts buffers at the *start* of each training forward, so after the last step every
    process holds statistics updated by its own last batch; evaluating with those would score
    each shard with a slightly different network than the one rank 0 saves.
    """
    if not env.enabled:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def all_reduce_mean(value: float, env: DistEnv, device: torch.device) -> float:
    """Mean of a Python number over all processes (e.g. the epoch's training loss)."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def any_process(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True if ``flag`` is true on any process (so all stop together)."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return bool(t.item())


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, no padding, no shuffling (for validation).

    DistributedSampler pads the last shard with repeated samples, which would count those images
    twice in the confusion matrix; here the shards partition the split exactly, so the reduced
    matrix equals a single process's.
    """

    def __init__(self, length: int, env: DistEnv) -> None:
        self.indices = list(range(env.rank, length, env.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
