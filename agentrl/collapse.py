"""Collapse guard: spot a run whose groups stopped giving a learning signal ("Echo Trap"). Pure functions.

Each signal compares one train metric of a step with a threshold from the ``collapse`` config
section; a signal counts only when it held on each of the last ``patience`` steps:

- ``train/zero_adv_group_fraction >= warn_zero_std_fraction``: most groups got one reward for every
  reply, so their advantages (and gradients) are zero;
- ``train/distinct_replies_per_group < warn_distinct_below``: the replies of a group are copies;
- ``train/instruction_echo_rate >= warn_instruction_echo``: replies repeat the instructions' wording;
- ``train/distinct_replies_across_puzzles < warn_distinct_across_puzzles``: different puzzles get
  the same reply (the policy ignores its input).
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
