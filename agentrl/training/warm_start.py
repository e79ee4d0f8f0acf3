"""``agentrl train`` with a warm start: fine-tune on oracle demonstrations, then RL, in one command.

With ``sft.warm_start: true`` the run folder holds two ordinary runs, each replayable and resumable
with the usual tools::

    runs/NAME/warm_start/   the SFT run: its step-0 evaluation is the base model's, then one every
                            ``sft.eval_every`` updates; its checkpoint is the warm start
    runs/NAME/              the RL run, started from that checkpoint: its step-0 evaluation is the
                            warm start's, its last the final model's

This is the recipe of RAGEN's SFT baseline and DeepSeek-R1's cold start, in one command: a small
model rarely solves a puzzle by chance, so RL alone has nothing to reinforce.

May import: config, sft, trainer, run, checkpoint (this module sits above both loops).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from agentrl.config import Config
from agentrl.training import checkpoint as ckpt
from agentrl.training.policy import release_memory
from agentrl.training.run import (
    SET_UP_FILES,
    check_disk_space,
    check_run_dir_free,
    checkpoints_at_once,
)
from agentrl.training.sft import sft
from agentrl.training.trainer import train

#: The warm start's folder inside the RL run's.
WARM_START = "warm_start"


def train_with_warm_start(cfg: Config, resume: bool = False, started: float | None = None) -> Path:
    """The warm start (unless its checkpoint exists already), then RL from it; returns the RL run dir.
    ``started``: the command's ``time.monotonic()`` start, which ``run.time_budget_min`` counts from
    (default: now, so the warm start's minutes count).

    ``resume``: a finished warm start is kept and RL resumes from its latest checkpoint (or starts
    afresh from the warm start if it had none yet); an unfinished warm start starts over.
    """
    started = time.monotonic() if started is None else started
    run_dir = Path(cfg.run.root) / cfg.run.name
    warm_dir = run_dir / WARM_START
    # Both checks before the warm start's minutes, not after them. (The reset options, RL's and the
    # demonstrations', are checked by sft() before its work, and by RL's start on resume.)
    if not resume:
        check_run_dir_free(run_dir)
        rl = checkpoints_at_once(cfg, cfg.train.steps)
        check_disk_space(cfg, 1 + rl, f"the warm start's 1 and RL's {rl}", cfg.eval.keep_best)
    # On resume RL's own start checks the room for its next checkpoint.
    if ckpt.latest_checkpoint(warm_dir) is None:
        if warm_dir.exists():
            shutil.rmtree(warm_dir)  # an interrupted warm start: its data and updates are redone
        sft(warm_start_config(cfg), eval_last=False)
        release_memory()  # the SFT phase's engine, optimizer and activations, before RL builds its own
        resume = False
    elif resume and ckpt.latest_checkpoint(run_dir) is None:
        _forget_unstarted_rl(run_dir)
        resume = False
    return train(rl_config(cfg), resume=resume, started=started)


def warm_start_config(cfg: Config) -> Config:
    """The SFT run's config: the same recipe, in ``RUN/warm_start``; it evaluates the base model
    (step 0) and every ``sft.eval_every`` updates, but not its own end (RL's step 0 does)."""
    run_dir = Path(cfg.run.root) / cfg.run.name
    return replace(cfg, run=replace(cfg.run, root=str(run_dir), name=WARM_START, save_every=0))


def rl_config(cfg: Config) -> Config:
    """The RL run's config: the recipe, starting from the warm start's checkpoint."""
    warm_dir = Path(cfg.run.root) / cfg.run.name / WARM_START
    return replace(cfg, run=replace(cfg.run, init=str(warm_dir)))


def _forget_unstarted_rl(run_dir: Path) -> None:
    """RL stopped before its first checkpoint: drop what it wrote (never the warm start), so it
    starts again from the warm start."""
    for path in (run_dir / name for name in SET_UP_FILES):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
