"""Process-group set-up and the few collectives the trainer needs (gloo on CPU, NCCL on GPU).

A plain ``agentrl train`` is a world of one process; under ``deepspeed``, ``torchrun`` or
``accelerate launch`` the launcher's environment variables (RANK, WORLD_SIZE...) are used as is.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str, timeout_s: int = 1800) -> World:
    """Initialise DeepSpeed's process group (a world of one when no launcher set one up)."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    if not torch.distributed.is_initialized():
        backend = "nccl" if device == "cuda" else "gloo"
        deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
    return World(
        rank=torch.distributed.get_rank(),
        size=torch.distributed.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one in a world of one)."""
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    if world.size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return t.tolist()


def all_reduce_max(value: int, world: World) -> int:
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return int(t.item())
