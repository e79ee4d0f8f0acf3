"""Reward shaping from the R1 literature: pure functions on text and tensors.

- ``repetition_penalty``: share of repeated n-grams times a (negative) max penalty (demystify-long-cot).
- ``length_penalty``: Kimi k1.5's within-group length reward (shorter is better among correct replies;
  among wrong ones only the longer are penalised).
- ``reasoning_behaviour_counts``: reflection and step words, a diagnostic logged in R1 reproductions.
- ``shaping_bonus``: the two penalties combined per episode, as configured by ``ShapingParams``.

The trainer adds ``shaping_bonus`` to each episode's last-turn reward
(``TurnBatch.add_to_last_turn``) before computing advantages. Formulas: docs/algorithms.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ShapingParams:
    """Reward shaping (config section ``shaping``). Every term is off at its default except the format penalty."""

    format_penalty: float = -0.1
    """Reward of a reply that yields no usable action (no answer tag, too many actions...). Applied by
    the rollout manager to that turn's reward; the env is not stepped. Documented here with the
    other shaping terms."""
    repetition_ngram: int = 3
    """``n`` of the n-grams (whitespace tokens, lower-cased) counted by the repetition penalty."""
    repetition_max_penalty: float = 0.0
    """Penalty of a reply made only of repeated n-grams (<= 0); the penalty is this times the share of
    repeated n-grams. 0 turns it off; the literature uses -1 or less."""
    length_weight: float = 0.0
    """Weight of the Kimi k1.5 length penalty within each group (>= 0; 0 turns it off)."""

    def __post_init__(self) -> None:
        if self.repetition_ngram < 1:
            raise ValueError(f"shaping.repetition_ngram must be >= 1, got {self.repetition_ngram}")
        if self.repetition_max_penalty > 0:
            raise ValueError(
                f"shaping.repetition_max_penalty must be <= 0, got {self.repetition_max_penalty}"
            )
        if self.length_weight < 0:
            raise ValueError(f"shaping.length_weight must be >= 0, got {self.length_weight}")

    @property
    def enabled(self) -> bool:
        """Whether ``shaping_bonus`` can be non-zero."""
        return self.repetition_max_penalty != 0 or self.length_weight != 0


def repetition_penalty(text: str, ngram: int = 3, max_penalty: float = -1.0) -> float:
    """``max_penalty * (1 - unique n-grams / all n-grams)`` over the lower-cased whitespace tokens.

    0 for a text of fewer than ``ngram`` tokens. E.g. ``"a b c a b c"`` with ``ngram=3`` has 4
    trigrams of which 3 are distinct: ``-1.0 * (1 - 3/4) = -0.25``.
    """
    if ngram < 1:
        raise ValueError(f"ngram must be >= 1, got {ngram}")
    words = text.lower().split()
    if len(words) < ngram:
        return 0.0
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    return float(max_penalty * (1.0 - len(set(grams)) / len(grams)))


def length_penalty(lengths: Tensor, correct: Tensor, weight: float) -> Tensor:
    """Kimi k1.5 length reward of the ``G`` replies of one group.

    ``lam = 0.5 - (len - min_len) / (max_len - min_len)`` (0 for all when ``max_len == min_len``);
    a correct reply gets ``weight * lam``, a wrong one ``weight * min(0, lam)``.

    Args:
        lengths: (G,) reply lengths (tokens).
        correct: (G,) bool.
        weight: scale of the term.

    Returns:
        (G,) float32.
    """
    if lengths.shape != correct.shape or lengths.dim() != 1:
        raise ValueError(
            f"lengths and correct must both be (G,), got {tuple(lengths.shape)}, {tuple(correct.shape)}"
        )
    if lengths.numel() == 0:
        return torch.zeros(0)
    x = lengths.to(torch.float32)
    lo, hi = x.min(), x.max()
    if hi == lo:
        return torch.zeros_like(x)
    lam = 0.5 - (x - lo) / (hi - lo)
    return weight * torch.where(correct.bool(), lam, lam.clamp(max=0.0))


REFLECTION_PATTERNS: tuple[str, ...] = (
    r"wait",
    r"re-?check",
    r"re-?evaluate",
    r"re-?examine",
    r"try again",
    r"let['’]s check",
    r"let me check",
    r"double[- ]check",
)
"""Regexes (case-insensitive, whole words) of reflection phrases."""

STEP_PATTERNS: tuple[str, ...] = (
    r"step\s*\d+",
    r"first",
    r"firstly",
    r"next",
    r"then",
    r"finally",
)
"""Regexes (case-insensitive, whole words) of step-by-step phrases."""


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(patterns) + r")\b", re.IGNORECASE)


_REFLECTION_RE = _compile(REFLECTION_PATTERNS)
_STEP_RE = _compile(STEP_PATTERNS)


def reasoning_behaviour_counts(text: str) -> dict[str, int]:
    """Counts of reflection and step phrases in ``text``: ``{"reflection": n, "step": m}``.

    Case-insensitive, whole words only (``"Waiting"`` is not ``"wait"``), non-overlapping; see
    ``REFLECTION_PATTERNS`` and ``STEP_PATTERNS``.
    """
    return {"reflection": len(_REFLECTION_RE.findall(text)), "step": len(_STEP_RE.findall(text))}


def shaping_bonus(
    replies: Sequence[str],
    lengths: Tensor,
    correct: Tensor,
    group: Tensor,
    params: ShapingParams,
) -> Tensor:
    """The shaping reward of each of ``B`` episodes: repetition penalty plus within-group length penalty.

    Args:
        replies: ``B`` texts, the model's replies of each episode (joined, for multi-turn episodes).
        lengths: (B,) the episode's sampled-token count.
        correct: (B,) bool, whether the episode succeeded.
        group: (B,) long group ids; the length penalty compares the episodes of one group.
        params: which terms are on and their sizes.

    Returns:
        (B,) float32; all zeros when both terms are off.
    """
    b = len(replies)
    if lengths.shape != (b,) or correct.shape != (b,) or group.shape != (b,):
        raise ValueError(f"lengths, correct and group must all be ({b},)")
    bonus = torch.zeros(b, dtype=torch.float32)
    if params.repetition_max_penalty != 0:
        bonus += torch.tensor(
            [repetition_penalty(r, params.repetition_ngram, params.repetition_max_penalty) for r in replies],
            dtype=torch.float32,
        )
    if params.length_weight != 0:
        for g in torch.unique(group):
            rows = (group == g).nonzero(as_tuple=True)[0]
            bonus[rows] += length_penalty(lengths[rows], correct[rows], params.length_weight)
    return bonus
