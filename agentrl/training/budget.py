"""A run's time budget: RL starts no step it cannot finish, final evaluation included.

``run.time_budget_min`` counts minutes from the command's start (a warm start's included). After
each RL step the loop asks :meth:`TimeBudget.fits_another_step`: the minutes so far, this step's
evaluation if one is due anyway, the longest step so far and one more evaluation must fit. If they
do not, the step just played is RL's last: it is evaluated and saved, and the run ends as if
``train.steps`` had been reached. The first step always runs (nothing before it says how long a
step takes), so a budget shorter than the warm start still gets one RL step.

A slower machine then plays fewer RL steps in the same minutes rather than overrunning them; the
run's log says where it stopped and why. ``--resume`` plays the remaining steps under the run's
saved budget counted from its own start (``--set run.time_budget_min=null``: all of them).

May import: nothing of agentrl (a pure clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TimeBudget:
    """The clock of one command against ``minutes`` (``None``: no budget, every step fits)."""

    minutes: float | None
    started: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` at the command's start."""
    clock: Callable[[], float] = time.monotonic
    longest_step_s: float = 0.0
    """The longest RL step so far, rollout to weight sync, without its evaluation."""
    eval_s: float = 0.0
    """The latest held-out evaluation's seconds (the warm start's, at step 0, before any of RL's)."""

    def elapsed_min(self) -> float:
        return (self.clock() - self.started) / 60

    def step_done(self, seconds: float) -> None:
        self.longest_step_s = max(self.longest_step_s, seconds)

    def evaluated(self, seconds: float) -> None:
        self.eval_s = seconds

    def fits_another_step(self, eval_due_now: bool) -> bool:
        """Whether, after this step's evaluation (``eval_due_now``), one more step as long as the
        longest so far and the evaluation that would end it still end inside the budget."""
        if self.minutes is None:
            return True
        need_s = (self.eval_s if eval_due_now else 0.0) + self.longest_step_s + self.eval_s
        return self.clock() - self.started + need_s <= self.minutes * 60

    def stop_note(self, step: int, steps: int) -> str:
        """The log line of a run that the budget ends at ``step`` of ``steps``."""
        return (
            f"agentrl: RL ends at step {step} of {steps}: another step (up to {self.longest_step_s / 60:.1f} min) "
            f"and its evaluation ({self.eval_s / 60:.1f} min) would end past run.time_budget_min="
            f"{self.minutes:g} ({self.elapsed_min():.1f} min so far); --resume continues, its budget counted afresh"
        )
