"""Checkpoints: DeepSpeed state for exact resume plus an HF model folder, written atomically.

Layout of ``runs/NAME/checkpoints/step_000123/``:

- ``ds/``: DeepSpeed's engine state (weights, optimizer, LR scheduler);
- ``hf/``: ``save_pretrained`` model and tokenizer (LoRA adapters merged), loadable by
  ``AutoModelForCausalLM.from_pretrained`` and by ``agentrl eval --model``;
- ``trainer_state.json`` and ``rng.pt``: the step, the loop's state (:class:`TrainerState`) and
  the random generators.

Everything is written into a hidden temp folder first and renamed into place, so a crash in the
middle of a save leaves the previous checkpoint as the latest usable one.

May import: curriculum, distributed (in agentrl.training), and config, algorithms, replay, rollout,
envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl.training.curriculum import CurriculumState

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """What a run resumes from besides the weights, the optimizer and the random generators: the
    last step and the training loop's own state. Checkpoints save it whole (``trainer_state.json``,
    in the same atomic write as the weights); ``--resume`` restores it whole."""

    step: int
    """The last completed training step."""
    curriculum: CurriculumState = field(default_factory=CurriculumState)
    """Where the curriculum stands: the stage the next step plays (0 without a curriculum)."""
    keep_group_fraction: float = 1.0
    """StarPO-S keep fraction in force (``collapse.action=filter`` may lower it during the run)."""
    guard_history: list[dict[str, float]] = field(default_factory=list)
    """The collapse guard's watched metrics of the latest ``collapse.patience`` steps."""
    warning: bool = False
    """Whether the last step raised a collapse warning (a new warning prints one console line)."""

    def to_dict(self) -> dict[str, Any]:
        """The ``trainer_state.json`` record: ``step``, ``stage`` and the loop's state under ``loop``."""
        return {
            "step": self.step,
            "stage": self.curriculum.stage,
            "loop": {
                "curriculum": self.curriculum.to_dict(),
                "keep_group_fraction": self.keep_group_fraction,
                "guard_history": self.guard_history,
                "warning": self.warning,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        """The state of a ``trainer_state.json`` record; one without ``loop`` (written before the
        loop's state was saved) starts the loop afresh in its ``stage``."""
        loop = data.get("loop") or {}
        curriculum = loop.get("curriculum")
        return cls(
            step=int(data["step"]),
            curriculum=CurriculumState.from_dict(curriculum)
            if curriculum is not None
            else CurriculumState(stage=int(data.get("stage", 0))),
            keep_group_fraction=float(loop.get("keep_group_fraction", 1.0)),
            guard_history=list(loop.get("guard_history", [])),
            warning=bool(loop.get("warning", False)),
        )


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (temp folders of interrupted saves are ignored)."""
    done = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / STATE_FILE).is_file())
    return done[-1] if done else None


def _hf_export(model: torch.nn.Module, tokenizer: Any, out: Path) -> None:
    if hasattr(model, "merge_and_unload"):  # peft: export plain merged weights
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def export_model(
    model: torch.nn.Module, tokenizer: Any, out: Path, record: dict[str, Any], record_file: str
) -> Path:
    """Write an HF model folder (``save_pretrained`` model and tokenizer, LoRA merged) with a JSON
    ``record`` beside the weights. It is written under a temp name and renamed into place, so a crash
    mid-write leaves the previous folder. Main rank only, inside :func:`whole_parameters` on every rank."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _hf_export(model, tokenizer, tmp)
    (tmp / record_file).write_text(json.dumps(record))
    _swap_into_place(tmp, out)
    return out


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``; an older ``final`` is moved aside first and
    removed after, so at no moment is there neither."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def whole_parameters(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """A context in which every rank holds the model's whole parameters: ZeRO-3 keeps each rank's
    shard only (the module's own tensors are empty, and ``save_pretrained`` would write them so),
    and gathers them here, a collective every rank enters. Below ZeRO-3 they are whole already."""
    sharded = [p for p in model.parameters() if hasattr(p, "ds_tensor")]
    if not sharded:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(sharded)


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    ds_engine: Any,
    model: torch.nn.Module,
    tokenizer: Any,
    keep: int = 2,
    is_main: bool = True,
) -> Path:
    """Save atomically; keep the newest ``keep`` checkpoints (0: all). Collective under DeepSpeed."""
    final = checkpoint_dir(run_dir, state.step)
    tmp = final.with_name(f".{final.name}.tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    ds_engine.save_checkpoint(str(tmp), tag="ds")  # every rank writes its own shards
    with whole_parameters(model):  # under ZeRO-3 every rank gathers; the main one writes
        if is_main:
            _hf_export(model, tokenizer, tmp / "hf")
    if is_main:
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            tmp / "rng.pt",
        )
        (tmp / STATE_FILE).write_text(json.dumps(state.to_dict()))
        _swap_into_place(tmp, final)
        if keep > 0:
            for old in sorted((run_dir / "checkpoints").glob("step_*"))[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, ds_engine: Any) -> TrainerState:
    """Restore DeepSpeed state and RNGs from ``path``; return the trainer state to continue from."""
    load_path, _ = ds_engine.load_checkpoint(str(path), tag="ds")
    if load_path is None:
        raise FileNotFoundError(f"{path}/ds holds no DeepSpeed checkpoint; the checkpoint is incomplete")
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return TrainerState.from_dict(json.loads((path / STATE_FILE).read_text()))


#: DeepSpeed's file of a single-process checkpoint: the weights and, below ZeRO-1, the optimizer.
MODEL_STATES = "mp_rank_00_model_states.pt"


def saved_optimizer_state(model_dir: str | Path) -> dict[str, Any] | None:
    """The torch optimizer state saved with the checkpoint whose ``hf/`` folder is ``model_dir``
    (``{"state": {param index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}``), or
    ``None`` where there is none: ``model_dir`` is not a checkpoint's ``hf/`` folder, or its
    DeepSpeed state keeps the optimizer sharded (ZeRO-1 and up) or holds none."""
    states = Path(model_dir).parent / "ds" / MODEL_STATES
    if Path(model_dir).name != "hf" or not states.is_file():
        return None
    # mmap: the weights in the same file are never read. The file is this run's own checkpoint.
    saved = torch.load(states, map_location="cpu", weights_only=False, mmap=True)
    optimizer = saved.get("optimizer") if isinstance(saved, dict) else None
    if not isinstance(optimizer, dict) or not optimizer.get("state"):
        return None
    return optimizer


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
