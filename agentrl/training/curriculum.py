"""Curriculum stages: which stage a step plays, and the adaptive promote/demote rule. Pure functions.

A curriculum is a list of stages (``curriculum.stages`` in the config), each with its own env reset
options, step budget and optionally lr and sampling temperature. Two ways to move through it:

- **fixed** (``adaptive: false``): stage ``i`` plays its ``steps`` steps, then the next one starts;
  :func:`stage_at` maps a training step to its stage.
- **adaptive** (``adaptive: true``): after each step the train success rate joins a rolling window
  (only steps of the current stage count). Once the window is full, a mean at or above
  ``promote_at`` moves to the next stage and a mean below ``demote_at`` moves back one; a stage
  whose ``steps`` are spent moves on as well, so the run always reaches the last stage. Every
  change empties the window and restarts the stage's step count. :func:`advance` is that rule.
  The run length stays ``train.steps`` = the sum of the stages' steps.

May import: config, algorithms, replay, rollout, envs, models, suggest, seeds (the stages below
agentrl.training; lint-imports checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def stage_at(step: int, stage_steps: Sequence[int]) -> int:
    """Stage index (from 0) of training ``step`` (from 1) in a fixed schedule; past the end: the last.

    >>> stage_at(1, [2, 3]), stage_at(2, [2, 3]), stage_at(3, [2, 3]), stage_at(9, [2, 3])
    (0, 0, 1, 1)
    """
    if not stage_steps:
        return 0
    end = 0
    for i, steps in enumerate(stage_steps):
        end += steps
        if step <= end:
            return i
    return len(stage_steps) - 1


@dataclass
class CurriculumState:
    """Where an adaptive curriculum stands; saved with each checkpoint so --resume continues it."""

    stage: int = 0
    """The stage the next step plays."""
    steps_in_stage: int = 0
    """Steps played since this stage was (last) entered."""
    window: list[float] = field(default_factory=list)
    """Train success rates of the latest steps in this stage (at most ``window`` of them)."""

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "steps_in_stage": self.steps_in_stage, "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CurriculumState:
        return cls(
            stage=int(data.get("stage", 0)),
            steps_in_stage=int(data.get("steps_in_stage", 0)),
            window=[float(x) for x in data.get("window", [])],
        )


def decide(window: Sequence[float], size: int, promote_at: float, demote_at: float) -> int:
    """+1 (promote), -1 (demote) or 0 from a window of success rates; 0 until the window is full.

    >>> decide([0.9, 0.8], 2, 0.8, 0.1), decide([0.0, 0.1], 2, 0.8, 0.1), decide([0.9], 2, 0.8, 0.1)
    (1, -1, 0)
    """
    if len(window) < size:
        return 0
    mean = sum(window[-size:]) / size
    if mean >= promote_at:
        return 1
    if mean < demote_at:
        return -1
    return 0


def advance(
    state: CurriculumState,
    success_rate: float,
    stage_steps: Sequence[int],
    window: int,
    promote_at: float,
    demote_at: float,
) -> tuple[CurriculumState, str | None]:
    """The state after a step of ``state.stage`` scored ``success_rate``, and why the stage changed:
    ``"promote"`` (success reached ``promote_at``), ``"demote"`` (fell below ``demote_at``),
    ``"budget"`` (the stage's steps are spent) or ``None`` (no change). ``state`` is not modified."""
    last = len(stage_steps) - 1
    rates = [*state.window, success_rate][-window:]
    played = state.steps_in_stage + 1
    move = decide(rates, window, promote_at, demote_at)
    reason = {1: "promote", -1: "demote"}.get(move)
    if move == 0 and played >= stage_steps[state.stage]:
        move, reason = 1, "budget"
    target = min(last, max(0, state.stage + move))
    if target == state.stage:
        return CurriculumState(state.stage, played, rates), None
    return CurriculumState(target, 0, []), reason
