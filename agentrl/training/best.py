"""The run's best held-out evaluation: which one it is, whether the latest fell significantly below
it, and its model, kept in ``runs/NAME/best/``.

RL on a small model can peak within a few steps and give its gains back a step or two later (the
Sokoban recipe lost 35 of 128 rooms in one step: docs/sokoban-recipe.md, "A weaker warm start").
None of the collapse guard's training signals sees that, and the last checkpoint then holds the
worse model. So after each of RL's evaluations the trainer compares it, puzzle by puzzle, with the
best earlier one: a new best's model is exported (``eval.keep_best``); a significant paired drop
(``eval.drop_warning_p``) prints a warning naming the best step and where its model is.

Evaluations compare on the puzzles (env seeds) both played, first episode of each, as the run's
summary line does (:func:`agentrl.training.metrics.paired_change`). An earlier evaluation that did
not play all the latest's puzzles (the base model's glance at ``eval.base_episodes``) is not a
candidate for the best: its success rate is over other puzzles.

May import: checkpoint, metrics, logger (in agentrl.training), and the stages below.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.rollout.trajectory import Trajectory, read_jsonl, step_filename
from agentrl.training.logger import read_metrics
from agentrl.training.metrics import PairedChange, first_outcomes, paired_change

#: The folder of a run holding its best evaluation's model (an HF folder, like a checkpoint's ``hf/``).
BEST_DIR = "best"
#: The file in it naming the step and its held-out success.
BEST_FILE = "best.json"


@dataclass(frozen=True)
class Evaluation:
    """One held-out evaluation of a run: its step and its episodes."""

    step: int
    episodes: Sequence[Trajectory]

    def solved(self, puzzles: set[int] | None = None) -> int:
        """Puzzles solved (first episode of each env seed), of ``puzzles`` only where given."""
        first = first_outcomes(self.episodes)
        return sum(won for seed, won in first.items() if puzzles is None or seed in puzzles)

    @property
    def puzzles(self) -> set[int]:
        """The env seeds it played."""
        return {t.seed for t in self.episodes}


@dataclass(frozen=True)
class Standing:
    """How the latest evaluation stands against the best earlier one."""

    best: Evaluation | None
    """The earlier evaluation that solved the most of the latest's puzzles (the earliest of a tie);
    ``None`` where no earlier one played them all."""
    change: PairedChange | None
    """Puzzles gained and lost from ``best`` to the latest (``None`` without a ``best``)."""
    new_best: bool
    """The latest solved more of its puzzles than every earlier one (or is the first)."""
    dropped: bool
    """The latest lost more puzzles than it gained against ``best``, with paired p below the threshold."""


def standing(earlier: Sequence[Evaluation], latest: Evaluation, drop_p: float) -> Standing:
    """Compare ``latest`` with the best of ``earlier``; ``drop_p`` (0: never) is the paired p-value
    under which fewer puzzles solved counts as a drop rather than noise."""
    puzzles = latest.puzzles
    candidates = [e for e in earlier if puzzles <= e.puzzles]
    if not candidates:
        return Standing(best=None, change=None, new_best=True, dropped=False)
    # max() keeps the first of equals: of two evaluations that solved as many, the earlier (fewer RL steps).
    best = max(sorted(candidates, key=lambda e: e.step), key=lambda e: e.solved(puzzles))
    change = paired_change(best.episodes, latest.episodes)
    dropped = change.lost > change.gained and change.p_value < drop_p
    return Standing(
        best=best, change=change, new_best=latest.solved() > best.solved(puzzles), dropped=dropped
    )


def logged_evaluations(run_dir: Path) -> list[Evaluation]:
    """The evaluations a run has logged so far (its ``metrics.jsonl`` rows, cut back to the
    checkpoint on resume, say which), with their episodes from ``eval/``; one whose file is missing
    is left out."""
    out = []
    for row in eval_rows(run_dir):
        episodes = eval_episodes(run_dir, int(row["step"]))
        if episodes:
            out.append(Evaluation(int(row["step"]), episodes))
    return out


def eval_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metric rows of a run's evaluations (none for a folder that is not a run)."""
    return [r for r in read_metrics(run_dir) if "eval/success_rate" in r and "eval/episodes" in r]


def eval_episodes(run_dir: Path, step: int) -> list[Trajectory]:
    """The valid episodes of a run's evaluation at ``step`` (none where its file is missing)."""
    try:
        return read_jsonl(run_dir / "eval" / step_filename(step))[0]
    except OSError:
        return []


def best_record(evaluation: Evaluation) -> dict[str, Any]:
    """The ``best.json`` record of an evaluation."""
    solved, puzzles = evaluation.solved(), len(evaluation.puzzles)
    return {"step": evaluation.step, "solved": solved, "puzzles": puzzles, "success_rate": solved / puzzles}


def read_best(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``best/best.json`` record (``None`` where no RL step has been the best yet)."""
    try:
        return json.loads((Path(run_dir) / BEST_DIR / BEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
