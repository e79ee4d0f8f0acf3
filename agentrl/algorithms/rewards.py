"""Reward shaping from the R1 literature: pure functions on text and tensors.

- ``repetition_penalty``: share of repeated n-grams times a (negative) max penalty (demystify-long-cot).
- ``length_penalty``: Kimi k1.5's within-group length reward (shorter is better among correct replies;
  among wrong ones only the longer are penalised).
- ``cosine_length_reward``: demystify-long-cot's cosine length-scaling reward (correct replies prefer
  short, wrong ones long, an episode at the length limit gets the exceed penalty).
- ``reasoning_behaviour_counts``: reflection and step words, a diagnostic logged in R1 reproductions.
- ``shaping_bonus``: the terms switched on in ``ShapingParams`` (config ``algo.shaping``), summed per episode.

The trainer adds ``shaping_bonus`` to each episode's last-turn reward
(``TurnBatch.add_to_last_turn``) before computing advantages. Formulas: docs/algorithms.md.

May import: rollout, envs, models, suggest, seeds (the stages below agentrl.algorithms; lint-imports
checks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ShapingParams:
    """Reward shaping (config section ``algo.shaping``). Every term is off at its default.

    The format penalty (a reply with no usable action) is not here: the rollout manager applies it,
    as ``rollout.format_penalty``.
    """

    repetition_ngram: int = 3
    """``n`` of the n-grams (whitespace tokens, lower-cased) counted by the repetition penalty."""
    repetition_max_penalty: float = 0.0
    """Penalty of a reply made only of repeated n-grams (<= 0); the penalty is this times the share of
    repeated n-grams. 0 turns it off; the literature uses -1 or less."""
    length_weight: float = 0.0
    """Weight of the Kimi k1.5 length penalty within each group (>= 0; 0 turns it off)."""
    cosine: bool = False
    """Add demystify-long-cot's cosine length reward (Yeo et al. 2025) to each episode's return: a
    bonus on top of the env's reward, like the other terms (the paper uses it as the whole reward;
    set the env's own rewards to 0 to get exactly that, as ``configs/cosine_math.yaml`` does)."""
    cosine_max_tokens: int | None = None
    """``L_max`` of the cosine reward, in sampled tokens of the episode (> 0). ``None``: the most an
    episode may sample in the step, ``max_new_tokens x max_turns`` (a curriculum stage's own limits
    when it sets them), so that an episode cut at the reply budget gets the exceed penalty."""
    cosine_correct_start: float = 2.0
    """Cosine reward of a correct episode of length 0 (the paper's ``r_0^c``)."""
    cosine_correct_end: float = 1.0
    """Cosine reward of a correct episode as its length nears ``L_max`` (``r_L^c``)."""
    cosine_wrong_start: float = -10.0
    """Cosine reward of a wrong episode of length 0 (``r_0^w``)."""
    cosine_wrong_end: float = 0.0
    """Cosine reward of a wrong episode as its length nears ``L_max`` (``r_L^w``)."""
    cosine_exceed_penalty: float = -10.0
    """Cosine reward of an episode whose length reaches ``L_max`` (``r_e``), correct or not."""

    def __post_init__(self) -> None:
        if self.repetition_ngram < 1:
            raise ValueError(f"shaping.repetition_ngram must be >= 1, got {self.repetition_ngram}")
        if self.repetition_max_penalty > 0:
            raise ValueError(
                f"shaping.repetition_max_penalty must be <= 0, got {self.repetition_max_penalty}"
            )
        if self.length_weight < 0:
            raise ValueError(f"shaping.length_weight must be >= 0, got {self.length_weight}")
        if self.cosine_max_tokens is not None and self.cosine_max_tokens <= 0:
            raise ValueError(
                f"shaping.cosine_max_tokens (L_max) must be a positive number of tokens, got "
                f"{self.cosine_max_tokens}; leave it out (null) to use the step's reply budget"
            )
        lowest_correct = min(self.cosine_correct_start, self.cosine_correct_end)
        highest_wrong = max(self.cosine_wrong_start, self.cosine_wrong_end)
        if lowest_correct <= highest_wrong:
            raise ValueError(
                "shaping.cosine_correct_start/_end must both be above shaping.cosine_wrong_start/_end (a correct "
                f"episode must outscore a wrong one at any length), got correct {self.cosine_correct_start} -> "
                f"{self.cosine_correct_end}, wrong {self.cosine_wrong_start} -> {self.cosine_wrong_end} "
                "(the paper: correct 2 -> 1, wrong -10 -> 0)"
            )

    @staticmethod
    def why_not(prefix: str, name: str) -> str | None:
        """Why ``name`` is not a shaping key though one might look for it here (``None``: no reason known)."""
        if name == "format_penalty":
            return "the format penalty is rollout.format_penalty (the rollout manager applies it to the turn)"
        return None

    @property
    def enabled(self) -> bool:
        """Whether ``shaping_bonus`` can be non-zero."""
        return self.repetition_max_penalty != 0 or self.length_weight != 0 or self.cosine


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


def cosine_length_reward(
    lengths: Tensor,
    correct: Tensor,
    max_length: float,
    correct_start: float = 2.0,
    correct_end: float = 1.0,
    wrong_start: float = -10.0,
    wrong_end: float = 0.0,
    exceed_penalty: float = -10.0,
) -> Tensor:
    """demystify-long-cot's cosine length-scaling reward (Yeo et al. 2025, "Demystifying Long
    Chain-of-Thought Reasoning in LLMs").

    For a length ``L < L_max``: ``end + 0.5 * (start - end) * (1 + cos(pi * L / L_max))``, i.e. the
    paper's ``CosFn(L, L_max, eta_min=end, eta_max=start)``: ``start`` at ``L = 0``, the mean of the
    two at ``L_max / 2``, ``end`` as ``L`` nears ``L_max``; ``(start, end)`` is ``(correct_start,
    correct_end)`` for correct episodes (paper: 2 -> 1, short is better) and ``(wrong_start,
    wrong_end)`` for wrong ones (-10 -> 0, long is better). ``L >= L_max``: ``exceed_penalty`` (-10).

    Args:
        lengths: (B,) lengths in tokens.
        correct: (B,) bool.
        max_length: ``L_max`` (> 0).

    Returns:
        (B,) float32.
    """
    if lengths.shape != correct.shape or lengths.dim() != 1:
        raise ValueError(
            f"lengths and correct must both be (B,), got {tuple(lengths.shape)}, {tuple(correct.shape)}"
        )
    if not max_length > 0:
        raise ValueError(f"max_length (L_max) must be positive, got {max_length}")
    x = lengths.to(torch.float64)
    ok = correct.bool()
    start = torch.where(
        ok, torch.tensor(correct_start, dtype=x.dtype), torch.tensor(wrong_start, dtype=x.dtype)
    )
    end = torch.where(ok, torch.tensor(correct_end, dtype=x.dtype), torch.tensor(wrong_end, dtype=x.dtype))
    reward = end + 0.5 * (start - end) * (1.0 + torch.cos(math.pi * x / max_length))
    return torch.where(x >= max_length, torch.tensor(exceed_penalty, dtype=x.dtype), reward).to(torch.float32)


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
    max_tokens: int | None = None,
) -> Tensor:
    """The shaping reward of each of ``B`` episodes: the sum of the terms switched on in ``params``
    (repetition penalty, within-group length penalty, cosine length reward).

    Args:
        replies: ``B`` texts, the model's replies of each episode (joined, for multi-turn episodes).
        lengths: (B,) the episode's sampled-token count.
        correct: (B,) bool, whether the episode succeeded.
        group: (B,) long group ids; the length penalty compares the episodes of one group.
        params: which terms are on and their sizes.
        max_tokens: the cosine reward's ``L_max`` when ``params.cosine_max_tokens`` is ``None`` (the
            trainer passes the step's reply budget).

    Returns:
        (B,) float32; all zeros when every term is off.
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
    if params.cosine:
        max_length = params.cosine_max_tokens or max_tokens
        if max_length is None:
            raise ValueError("shaping.cosine needs L_max: set shaping.cosine_max_tokens or pass max_tokens")
        bonus += cosine_length_reward(
            lengths,
            correct,
            max_length,
            params.cosine_correct_start,
            params.cosine_correct_end,
            params.cosine_wrong_start,
            params.cosine_wrong_end,
            params.cosine_exceed_penalty,
        )
    return bonus
