"""Collapse guard: spot a run whose groups stopped giving a learning signal ("Echo Trap"). Pure functions.

Each signal compares one train metric of a step with a threshold from the ``collapse`` config
section; a signal counts only when it held on each of the last ``patience`` steps:

- ``train/zero_adv_group_fraction >= warn_zero_std_fraction``: most groups got one reward for every
  reply, so their advantages (and gradients) are zero;
- ``train/distinct_replies_per_group < warn_distinct_below``: the replies of a group are copies;
- ``train/instruction_echo_rate >= warn_instruction_echo``: replies repeat the instructions' wording;
- ``train/distinct_replies_across_puzzles < warn_distinct_across_puzzles``: different puzzles get
  the same reply (the policy ignores its input).

May import: rollout, envs, models, suggest, seeds (the stages below agentrl.algorithms; lint-imports
checks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

COLLAPSE_ACTIONS = ("warn", "stop", "filter")

#: StarPO-S keep fraction switched on by ``action: filter`` (RAGEN keeps the top 25% of groups).
FILTER_KEEP_FRACTION = 0.25

#: What to try, printed with every collapse message.
ADVICE = (
    "try: a warm start (`agentrl sft`, then `agentrl train --init runs/SFT_RUN`), StarPO-S filtering "
    "(algo.keep_group_fraction=0.25), a lower train.lr, or instructions with a concrete example answer"
)


@dataclass(frozen=True)
class Signal:
    metric: str
    """The train metric watched, e.g. ``train/zero_adv_group_fraction``."""
    threshold: float
    below: bool
    """True: the signal fires when the metric is *below* the threshold; else at or above it."""

    def fires(self, value: float) -> bool:
        return value < self.threshold if self.below else value >= self.threshold

    def describe(self, value: float) -> str:
        return f"{self.metric}={value:.3g} ({'<' if self.below else '>='} {self.threshold:g})"


def signals(
    warn_zero_std_fraction: float | None,
    warn_distinct_below: float | None,
    warn_instruction_echo: float | None,
    warn_distinct_across_puzzles: float | None = None,
) -> list[Signal]:
    """The signals switched on (a threshold of ``None`` switches its signal off)."""
    out = []
    if warn_zero_std_fraction is not None:
        out.append(Signal("train/zero_adv_group_fraction", warn_zero_std_fraction, below=False))
    if warn_distinct_below is not None:
        out.append(Signal("train/distinct_replies_per_group", warn_distinct_below, below=True))
    if warn_instruction_echo is not None:
        out.append(Signal("train/instruction_echo_rate", warn_instruction_echo, below=False))
    if warn_distinct_across_puzzles is not None:
        out.append(Signal("train/distinct_replies_across_puzzles", warn_distinct_across_puzzles, below=True))
    return out


def detect(history: Sequence[Mapping[str, float]], watched: Sequence[Signal], patience: int) -> list[str]:
    """Descriptions of the signals that fired on each of the last ``patience`` steps of ``history``
    (oldest first, one metrics mapping per step); empty when fewer steps are known or none held.
    A step without the metric does not fire.

    >>> s = signals(0.9, None, None)
    >>> detect([{"train/zero_adv_group_fraction": 1.0}] * 2, s, 2)
    ['train/zero_adv_group_fraction=1 (>= 0.9)']
    """
    if patience <= 0 or len(history) < patience:
        return []
    recent = history[-patience:]
    fired = []
    for signal in watched:
        values = [m.get(signal.metric) for m in recent]
        if all(v is not None and signal.fires(v) for v in values):
            fired.append(signal.describe(values[-1]))
    return fired


@dataclass(frozen=True)
class GuardDecision:
    """What the training loop does after a step, by the guard's reading of the latest steps."""

    warning: bool
    """The signals hold now (logged every step as ``collapse/warning``)."""
    stop: bool = False
    """End the run after this step (``action: stop``)."""
    keep_group_fraction: float | None = None
    """Switch StarPO-S filtering on at this keep fraction from the next step (``action: filter``)."""
    message: str | None = None
    """The console line to print, if any (one when a warning starts, clears, stops or filters)."""


def decide(
    fired: Sequence[str],
    step: int,
    action: str,
    patience: int,
    was_warning: bool,
    keep_group_fraction: float,
) -> GuardDecision:
    """The guard's decision after ``step`` from the signals that ``fired`` (:func:`detect`).

    ``action`` is ``collapse.action``; ``was_warning``: whether the previous step warned (a warning
    that goes on prints no new line); ``keep_group_fraction``: StarPO-S's fraction in force (a
    filter never raises it).

    >>> decide([], 5, "warn", 3, was_warning=True, keep_group_fraction=1.0).message
    'agentrl: collapse signals cleared at step 5'
    >>> decide(["x=1 (>= 0.9)"], 5, "stop", 3, was_warning=False, keep_group_fraction=1.0).stop
    True
    """
    if not fired:
        cleared = f"agentrl: collapse signals cleared at step {step}" if was_warning else None
        return GuardDecision(warning=False, message=cleared)
    what = "; ".join(fired)
    if action == "stop":
        return GuardDecision(
            warning=True,
            stop=True,
            message=f"agentrl: collapse at step {step} for {patience} steps: {what}. Stopping. {ADVICE}",
        )
    if action == "filter" and keep_group_fraction > FILTER_KEEP_FRACTION:
        return GuardDecision(
            warning=True,
            keep_group_fraction=FILTER_KEEP_FRACTION,
            message=(
                f"agentrl: collapse at step {step} for {patience} steps: {what}. StarPO-S filtering on from "
                f"step {step + 1}: training on the top {FILTER_KEEP_FRACTION:.0%} of groups by reward std"
            ),
        )
    if was_warning:  # one line when the signal starts; the metric marks every step it holds
        return GuardDecision(warning=True)
    return GuardDecision(
        warning=True,
        message=f"agentrl: collapse warning at step {step} ({patience} steps in a row): {what}. {ADVICE}",
    )
