"""Process-group set-up and the few collectives the trainer needs (gloo on CPU, NCCL on GPU).

A plain ``agentrl train`` is a world of one process; under ``deepspeed``, ``torchrun`` or
``accelerate launch`` the launcher's environment variables (RANK, WORLD_SIZE...) are used as is.

May import: config, algorithms, replay, rollout, envs, models, suggest, seeds (the stages below
agentrl.training; lint-imports checks).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)

#: A JIT build lock older than this is left over from a build that never finished (DeepSpeed's CPU
#: ops compile in well under a minute here); torch would otherwise wait on it forever, silently.
STALE_BUILD_LOCK_S = 600.0

_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int
    timeout_s: float = 1800.0
    """Seconds a rank waits for the others at a collective before the job fails."""
    monitor: Any = field(default=None, compare=False, repr=False)
    """A gloo process group for :func:`meet` (the default group itself when it is gloo)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: Ports a world of one tries for its process group's store before giving up.
PORT_TRIES = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extensions_dir(deepspeed_dir: str | os.PathLike[str]) -> Path:
    """Where torch builds the JIT ops of the DeepSpeed installed at ``deepspeed_dir``: one folder per
    install (two installs sharing torch's default folder rebuild each other's ops, each for its own
    source path, and race on the same build lock)."""
    key = hashlib.sha256(str(Path(deepspeed_dir).resolve()).encode()).hexdigest()[:12]
    accel = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_{accel}"
    return Path.home() / ".cache" / "torch_extensions" / tag / f"deepspeed-{key}"


def clear_stale_build_locks(
    root: str | os.PathLike[str], max_age_s: float = STALE_BUILD_LOCK_S
) -> list[Path]:
    """Remove the build locks under ``root`` older than ``max_age_s`` and return them.

    torch's JIT build holds ``<root>/<op>/lock`` while it compiles and waits, without a word or a
    deadline, for as long as that file exists; a build that was killed (or ran out of disk) leaves
    it behind, and every later run would hang at start-up."""
    removed = []
    now = time.time()
    for lock in Path(root).glob("*/lock"):
        try:
            if now - lock.stat().st_mtime > max_age_s:
                lock.unlink()
                removed.append(lock)
        except FileNotFoundError:  # the build finished meanwhile
            continue
    for lock in removed:
        logger.warning("removed %s, left by a build that did not finish; the op is rebuilt", lock)
    return removed


def _use_extensions_dir() -> Path:
    """Point torch's JIT builds at this DeepSpeed install's own folder (unless the user set
    ``TORCH_EXTENSIONS_DIR``) and clear stale locks there; returns the folder."""
    import deepspeed

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir(os.path.dirname(deepspeed.__file__))))
    clear_stale_build_locks(os.environ["TORCH_EXTENSIONS_DIR"])
    return Path(os.environ["TORCH_EXTENSIONS_DIR"])


def build_ops() -> Path | None:
    """Build DeepSpeed's CPU communication op now, set-up's one-time work (scripts/setup.sh), so
    that no run or test pays the build (31 s on a quiet 2-core machine, minutes on a busy one) or
    is killed half-way through it. Returns the built op's folder (``None``: the accelerator has no
    such op, as on CUDA, where NCCL needs no build)."""
    folder = _use_extensions_dir()
    # DeepSpeed's own builder of the op its process-group set-up loads (None where it has none).
    from deepspeed.comm.torch import build_shm_op

    return folder / "deepspeed_shm_comm" if build_shm_op() is not None else None


def _match_accelerator(device: str) -> None:
    """Point DeepSpeed's accelerator at ``device`` ("cpu" or "cuda").

    DeepSpeed picks its accelerator from the machine (CUDA wherever a GPU is visible), and
    ``deepspeed.initialize`` moves the model onto it: a run asked onto the CPU on a GPU machine
    (``train.device=cpu``) would find its weights on the GPU and its batches on the CPU."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() == device:
        return
    if device == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    elif device == "cuda":
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

        set_accelerator(CUDA_Accelerator())


def init_distributed(device: str, timeout_s: int = 1800) -> World:
    """Initialise DeepSpeed's process group (a world of one when no launcher set one up)."""
    import deepspeed

    _match_accelerator(device)
    # DeepSpeed's CPU backend JIT-builds its shared-memory op here (torch's extension folder), at
    # its first run unless set-up built it already (build_ops).
    _use_extensions_dir()
    own_port = "WORLD_SIZE" not in os.environ
    if own_port:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port())
        )
    if not torch.distributed.is_initialized():
        # A process group that existed before was destroyed (vLLM tears down the default group when
        # its in-process engine goes away): DeepSpeed's cached clone of the old world group would then
        # be passed to the new one ("Group ... is not registered"). Forget it before re-initialising.
        from deepspeed.utils import groups

        groups._WORLD_GROUP = None
        backend = "nccl" if device == "cuda" else "gloo"
        for attempt in range(PORT_TRIES):
            try:
                deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
                break
            except torch.distributed.DistNetworkError as err:
                # The port found free was taken before the group's store bound it (another process
                # starting at the same moment): a world of one we set up ourselves picks another.
                if not (own_port and "EADDRINUSE" in str(err)) or attempt == PORT_TRIES - 1:
                    raise
                os.environ["MASTER_PORT"] = str(_free_port())
    size = torch.distributed.get_world_size()
    monitor = None
    if size > 1:
        # monitored_barrier exists only on gloo; NCCL jobs get a small gloo group beside their own.
        gloo = torch.distributed.get_backend() == "gloo"
        monitor = None if gloo else torch.distributed.new_group(backend="gloo")
    return World(
        rank=torch.distributed.get_rank(),
        size=size,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        timeout_s=float(timeout_s),
        monitor=monitor,
    )


def close_distributed() -> None:
    """Destroy the process group at the end of a command that finished on every rank.

    Left to the interpreter's exit, gloo's worker threads can outlive it and abort the process
    (SIGABRT, "terminate called without an active exception") after the run's work is all done,
    so a launcher reports a finished run as failed. Not called after an error: another rank may
    still be inside a collective, and destroying the group under it can hang the job.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class RankFailure(RuntimeError):
    """Some rank did not reach a meeting point in time: it died or hangs."""


def meet(world: World, where: str) -> None:
    """All ranks meet here; if one does not arrive within ``world.timeout_s``, the job fails naming it.

    A plain collective that times out says only that it timed out; gloo's monitored barrier tells
    rank 0 which ranks never came, and rank 0's error then names them.
    """
    if world.size == 1:
        return
    try:
        torch.distributed.monitored_barrier(
            group=world.monitor, timeout=timedelta(seconds=world.timeout_s), wait_all_ranks=True
        )
    except RuntimeError as exc:
        raise RankFailure(
            f"rank {world.rank}: ranks did not all reach '{where}' within train.dist_timeout_s="
            f"{world.timeout_s:.0f} s, so one died or hangs ({exc}). Fix what failed there (its log names "
            "the error), then continue with --resume from the last checkpoint."
        ) from None


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


def all_reduce_max(value: _Number, world: World) -> _Number:
    """The largest ``value`` over all ranks, of the type given (int or float)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64 if isinstance(value, int) else torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return type(value)(t.item())
