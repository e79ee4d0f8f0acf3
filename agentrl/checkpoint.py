"""Checkpoints: DeepSpeed state for exact resume plus an HF model folder, written atomically.

Layout of ``runs/NAME/checkpoints/step_000123/``:

- ``ds/``: DeepSpeed's engine state (weights, optimizer, LR scheduler);
- ``hf/``: ``save_pretrained`` model and tokenizer (LoRA adapters merged), loadable by
  ``AutoModelForCausalLM.from_pretrained`` and by ``agentrl eval --model``;
- ``trainer_state.json`` and ``rng.pt``: the step and the random generators.

Everything is written into a hidden temp folder first and renamed into place, so a crash in the
middle of a save leaves the previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int
    """The last completed training step."""
    stage: int = 0
    """Curriculum stage (0 without a curriculum)."""
    loop: dict[str, Any] = field(default_factory=dict)
    """The training loop's own state (curriculum window, collapse-guard history...), saved with the
    checkpoint in one atomic write."""


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
    if is_main:
        _hf_export(model, tokenizer, tmp / "hf")
        torch.save(
            {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
            tmp / "rng.pt",
        )
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
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
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
