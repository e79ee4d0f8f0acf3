"""What every run (RL and SFT) shares: the process's set-up, the run folder, the checkpoint save.

The building blocks below both loops: :mod:`agentrl.training.trainer` and
:mod:`agentrl.training.sft` call them, and neither imports the other. The run folder's layout:
``config.yaml``, ``metrics.jsonl``, ``tb/``, ``trajectories/``, ``eval/``, ``checkpoints/``
(docs/trajectories.md, :mod:`agentrl.training.checkpoint`).

May import: :mod:`agentrl.config`, :mod:`agentrl.training.policy`, :mod:`agentrl.training.checkpoint`,
:mod:`agentrl.training.logger`, :mod:`agentrl.training.distributed`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from agentrl.config import Config, ConfigError
from agentrl.training import checkpoint as ckpt
from agentrl.training.distributed import World, init_distributed, meet
from agentrl.training.logger import read_metrics
from agentrl.training.policy import (
    Policy,
    carries_optimizer_state,
    device_for,
    dtype_for,
    no_optimizer_state,
    quiet_libraries,
)


def set_up_process(cfg: Config) -> tuple[torch.device, World]:
    """This process's part of any run (train, sft): quiet libraries, threads, device, process group."""
    quiet_libraries()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = device_for(cfg)
    return device, init_distributed(device.type, timeout_s=cfg.train.dist_timeout_s)


def check_model(cfg: Config) -> None:
    """Fail before anything is written if the model to start from cannot be found (``--model``,
    ``--init``): a typo or an offline hub id then leaves no run folder and the run name stays free."""
    from agentrl.models import resolve_model_path

    path = resolve_model_path(cfg.run.init or cfg.model.path)
    if carries_optimizer_state(cfg) and ckpt.saved_optimizer_state(path) is None:
        raise no_optimizer_state(cfg.run.init)


def training_reset_options(cfg: Config, stage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The reset options of a training episode: ``env.train_options`` under the stage's own
    ``env_options`` (``None`` where neither sets any). Evaluation never uses them."""
    return {**cfg.env.train_options, **(stage_options or {})} or None


def check_reset_options(cfg: Config) -> None:
    """Fail before anything is written if the env rejects the training episodes' reset options
    (``env.train_options`` under each curriculum stage's ``env_options``, and the demonstrations'
    ``sft.reset_options``): one probe reset each."""
    from agentrl.envs.registry import make

    stages = [stage.env_options for stage in cfg.curriculum.stages] or [None]
    option_sets = [o for o in (training_reset_options(cfg, s) for s in stages) if o]
    option_sets += [cfg.sft.reset_options] if cfg.sft.reset_options else []
    if not option_sets:
        return
    env = make(cfg.env.name, **cfg.env.kwargs)
    try:
        for options in option_sets:
            try:
                env.reset(seed=cfg.env.train_seed_start, options=options)
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError(
                    f"env {cfg.env.name!r} rejects the reset options {options} (env.train_options, "
                    f"curriculum.stages[].env_options, sft.reset_options): {exc}"
                ) from None
    finally:
        env.close()


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux and macOS; 0 where unknown)."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**30 if sys.platform == "darwin" else peak / 2**20  # bytes on macOS, KiB on Linux


def rss_gb() -> float:
    """This process's resident memory now, in GiB (Linux; 0 where unknown). Logged after each step's
    memory is handed back, it climbs step over step only if something is kept; the peak above climbs
    whenever a step needs more than any before it."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**30


#: Bytes one checkpoint takes per model parameter, by the dtype the run trains in and the kind of run:
#: the HF export and DeepSpeed's copy of the weights, each in that dtype; AdamW's two float32 moments
#: (8); a float32 master copy (4) wherever DeepSpeed keeps one (ZeRO-1 and up; every stage in bf16).
#: Under LoRA only the merged export and DeepSpeed's weights count (the adapters and their moments are
#: a small share). Measured: 16.03 bytes for the default model's 134.5M parameters in float32 on CPU
#: (2.156 GB); 16.02 (ZeRO-2) and 4.06 (LoRA) for the tiny model in bfloat16 on an H200 (2026-12-04).
#: tests/test_train.py checks each kind on a saved checkpoint of the machine it runs on.
CHECKPOINT_BYTES_PER_PARAM = {
    "float32": {"zero0": 16, "zero1+": 20, "lora": 8},
    "bfloat16": {"zero0": 16, "zero1+": 16, "lora": 4},
}
#: Bytes the HF model folder alone takes per parameter (the best model's, ``eval.keep_best``).
EXPORT_BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2}
#: Room asked beyond the checkpoints: the tokenizer's files in each, logs, trajectories, TensorBoard.
DISK_MARGIN = 1.1


def checkpoints_at_once(cfg: Config, steps: int) -> int:
    """How many checkpoints a run of ``steps`` steps holds at its fullest: the saves (every
    ``run.save_every`` steps and at the end), at most ``run.keep_checkpoints`` plus the one being
    written before the oldest goes."""
    every = cfg.run.save_every
    saves = len({*range(every, steps + 1, every), steps}) if every else 1
    keep = cfg.run.keep_checkpoints
    return saves if keep == 0 else min(saves, keep + 1)


def _weights_folder(cfg: Config) -> Path | None:
    """The folder holding the starting model's weights: a local folder, or a hub id's snapshot in
    the Hugging Face cache (``None`` where it is not downloaded yet)."""
    from agentrl.models import resolve_model_path

    where = resolve_model_path(cfg.run.init or cfg.model.path)
    if Path(where).is_dir():
        return Path(where)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(where, local_files_only=True))
    except Exception:  # not in the cache, or not a hub id: no estimate
        return None


def checkpoint_gb(cfg: Config, export_only: bool = False) -> float | None:
    """About how large one checkpoint of this run is (GB): its weights and optimizer state, counted
    from the starting model's safetensors headers (no weights are read), and the tokenizer's and
    config files the export copies; with ``export_only``, its HF model folder alone (the weights in
    the run's dtype: the best model's folder, ``eval.keep_best``). ``None`` where there are no
    safetensors on disk (a hub model not yet downloaded, weights only in ``.bin`` files)."""
    from safetensors import safe_open

    folder = _weights_folder(cfg)
    files = sorted(folder.glob("*.safetensors")) if folder else []
    if not files:
        return None
    params = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                params += torch.Size(f.get_slice(name).get_shape()).numel()
    dtype = dtype_for(cfg, device_for(cfg))
    kind = "lora" if cfg.model.lora.r > 0 else "zero0" if cfg.train.zero_stage == 0 else "zero1+"
    per_param = EXPORT_BYTES_PER_PARAM[dtype] if export_only else CHECKPOINT_BYTES_PER_PARAM[dtype][kind]
    others = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.suffix != ".safetensors")
    return (params * per_param + others) / 1e9


def free_disk_gb(path: Path) -> float:
    """Free space (GB) on the disk that holds ``path``, or would hold it: a folder not created yet
    is measured at its nearest existing parent."""
    import shutil

    existing = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(existing).free / 1e9


def check_disk_space(cfg: Config, checkpoints: int, what: str, best_model: bool = False) -> None:
    """Fail before anything is written where ``checkpoints`` checkpoints of this run, with
    ``best_model`` its best model's folder too (and a margin), cannot fit under ``run.root``: a full
    disk would end the run at a save, after its minutes of work."""
    size = checkpoint_gb(cfg)
    if size is None:
        return
    root = Path(cfg.run.root).resolve()
    free = free_disk_gb(root)
    best = checkpoint_gb(cfg, export_only=True) if best_model else None
    need = (checkpoints * size + (best or 0.0)) * DISK_MARGIN
    if need <= free:
        return
    fixes = ["free some space (old run folders)", "point run.root at a larger disk (--set run.root=DIR)"]
    if checkpoints > 2:  # fewer kept would help: --set run.keep_checkpoints=1 holds at most 2
        fixes.append("keep fewer checkpoints (--set run.keep_checkpoints=1)")
    also = f"; its best model's folder, {best:.1f} GB: eval.keep_best" if best else ""
    raise ConfigError(
        f"this run needs about {need:.1f} GB for its checkpoints ({checkpoints} x {size:.1f} GB: {what}{also}; "
        f"with 10% for its logs) under {root}, and {free:.1f} GB are free there: {', or '.join(fixes)}"
    )


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, world: World) -> int:
    """Create (or check, on resume) the run directory; refuse to overwrite a run."""
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            raise ConfigError(
                f"--resume: {run_dir} has no complete checkpoint; check --name (runs: "
                f"{', '.join(sorted(p.name for p in run_dir.parent.glob('*'))) or '-'})"
            )
        if world.is_main:
            step = int(latest.name.split("_")[1])
            _truncate_metrics(run_dir, step)
        return 0
    check_run_dir_free(run_dir)
    # Every rank has checked the folder before rank 0 writes into it (else the others would find
    # this very run's config.yaml and refuse).
    meet(world, "the run folder check")
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return 1


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse a folder that already holds a run (a new run must never write into another's)."""
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or --name NEW for a new run"
        )
    if (run_dir / "config.yaml").is_file():
        # A run started here (it may still be running, or died before its first checkpoint): two
        # runs writing one folder would interleave their metrics.
        raise ConfigError(
            f"{run_dir} already holds a run (config.yaml, no checkpoint yet): pass --name NEW for a new "
            "run, or delete the folder if that run is over and you want its name back"
        )


#: What a start writes before its first step; a folder holding nothing more has no results to keep.
SET_UP_FILES = {
    "config.yaml",
    "tb",
    "metrics.jsonl",
    "sft_data.jsonl",
    "trajectories",
    "eval",
    "checkpoints",
}


def discard_failed_start(run_dir: Path) -> bool:
    """Remove ``run_dir`` after a start that failed before its first step; return whether it did.

    Removed only if it holds nothing but set-up output: ``config.yaml``, ``tb/``, an empty
    ``metrics.jsonl``, ``sft_data.jsonl``, and no file under ``trajectories/``, ``eval/`` or
    ``checkpoints/``, and a ``warm_start/`` folder that holds no more than that. Call it only for a folder this start created (it did not exist before), so no
    other run's folder is ever touched; then the same run name can be used again.
    """
    import shutil

    if not run_dir.is_dir() or not _holds_only_set_up(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _holds_only_set_up(run_dir: Path) -> bool:
    for entry in run_dir.iterdir():
        if entry.name == "warm_start" and entry.is_dir():  # a warm start's own run folder
            if not _holds_only_set_up(entry):
                return False
            continue
        if entry.name not in SET_UP_FILES:
            return False
        if entry.name in ("trajectories", "eval", "checkpoints") and any(entry.rglob("*")):
            return False
        if entry.name == "metrics.jsonl" and entry.stat().st_size > 0:
            return False
    return True


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows newer than the checkpoint we resume from (they will be logged again)."""

    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def save(
    cfg: Config,
    run_dir: Path,
    state: ckpt.TrainerState,
    policy: Policy,
    world: World,
) -> Path:
    """Checkpoint the policy and the trainer state (step and loop state), atomically."""
    return ckpt.save_checkpoint(
        run_dir,
        state,
        policy.ds_engine,
        policy.model,
        policy.tokenizer,
        cfg.run.keep_checkpoints,
        world.is_main,
    )
