"""Metrics computed from trajectories: pure functions, namespaced keys (``train/...``, ``eval/...``).

Every rate is over all episodes (or all turns) given, never an average of averages, so metrics
gathered from several ranks aggregate exactly.

May import: curriculum, distributed (in agentrl.training), and config, algorithms, replay, rollout,
envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentrl.algorithms.advantages import group_reward_stats
from agentrl.algorithms.rewards import reasoning_behaviour_counts
from agentrl.rollout.trajectory import Trajectory


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def rollout_metrics(
    trajectories: Sequence[Trajectory], prefix: str, instructions: str | None = None
) -> dict[str, float]:
    """Reward, success, format, length, turns, in-group spread and behaviour counts of a batch;
    with ``instructions`` (the system prompt) also the share of replies that echo its wording."""
    if not trajectories:
        return {}
    turns = [t for traj in trajectories for t in traj.turns]
    replies = [t.reply for t in turns]
    lengths = [t.response_span[1] - t.response_span[0] for t in turns]
    rewards = torch.tensor([traj.reward for traj in trajectories], dtype=torch.float64)
    groups = torch.tensor([traj.group for traj in trajectories])
    stats = group_reward_stats(rewards, groups)
    behaviour = [reasoning_behaviour_counts(r) for r in replies]
    end_reasons: dict[str, int] = defaultdict(int)
    for traj in trajectories:
        end_reasons[traj.end_reason] += 1
    m = {
        f"{prefix}/reward": float(rewards.mean()),
        f"{prefix}/success_rate": _mean([float(t.success) for t in trajectories]),
        f"{prefix}/format_valid_rate": _mean([float(t.format_ok) for t in turns]),
        f"{prefix}/response_length": _mean(lengths),
        f"{prefix}/num_turns": _mean([len(t.turns) for t in trajectories]),
        f"{prefix}/reward_std_in_group": float(stats["std"].mean()) if len(stats["std"]) else 0.0,
        f"{prefix}/zero_adv_group_fraction": float(stats["zero_std_group_fraction"]),
        f"{prefix}/distinct_replies_per_group": distinct_reply_fraction(trajectories),
        f"{prefix}/distinct_replies_across_puzzles": distinct_across_puzzles(trajectories),
        f"{prefix}/truncated_reply_rate": _mean([float(t.finish_reason == "length") for t in turns]),
        f"behaviour/{prefix}_reflection_per_response": _mean([b["reflection"] for b in behaviour]),
        f"behaviour/{prefix}_step_words_per_response": _mean([b["step"] for b in behaviour]),
    }
    if instructions is not None:
        m[f"{prefix}/instruction_echo_rate"] = instruction_echo_rate(replies, instructions)
    for reason, count in end_reasons.items():
        m[f"{prefix}/end_{reason}_rate"] = count / len(trajectories)
    return m


_WORD = re.compile(r"\w+")


def word_ngrams(text: str, n: int = 5) -> list[tuple[str, ...]]:
    """Lower-cased word ``n``-grams of ``text`` (punctuation and tags ignored), in order."""
    words = _WORD.findall(text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def echoes_instructions(reply: str, instruction_ngrams: set[tuple[str, ...]], n: int = 5) -> bool:
    """True when more than half of the reply's word ``n``-grams occur in the instructions.

    A reply shorter than ``n`` words has no ``n``-grams and never counts as an echo.
    """
    grams = word_ngrams(reply, n)
    return bool(grams) and sum(g in instruction_ngrams for g in grams) * 2 > len(grams)


def instruction_echo_rate(replies: Sequence[str], instructions: str, n: int = 5) -> float:
    """Share of ``replies`` that repeat the instructions' wording (RAGEN's "Echo Trap" symptom)."""
    known = set(word_ngrams(instructions, n))
    return _mean([float(echoes_instructions(r, known, n)) for r in replies])


def distinct_reply_fraction(trajectories: Sequence[Trajectory]) -> float:
    """Mean over groups of (distinct first replies / group size): 1 = all different; collapse → 1/size."""
    by_group: dict[int, list[str]] = defaultdict(list)
    for traj in trajectories:
        by_group[traj.group].append(traj.turns[0].reply if traj.turns else "")
    return _mean([len(set(r)) / len(r) for r in by_group.values()])


def distinct_across_puzzles(trajectories: Sequence[Trajectory]) -> float:
    """Distinct first replies / distinct puzzles (env seeds), one episode per puzzle: 1 = every puzzle
    got its own reply; 1/N = one reply for all N, a policy that ignores its input (greedy copies of a
    memorised answer, RAGEN's Echo Trap across prompts)."""
    first: dict[int, str] = {}
    for traj in trajectories:
        first.setdefault(traj.seed, traj.turns[0].reply if traj.turns else "")
    return len(set(first.values())) / len(first) if first else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` successes (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a success rate of ``successes`` out of ``n`` (95% at z = 1.96).

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes:
    0 of 16 gives (0, 0.194), so "0.00" on 16 rooms is read as "below ~0.2", not "zero"."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_p_value(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p-value for two models evaluated on the same puzzles.

    ``gained``: puzzles the second solves and the first does not; ``lost``: the reverse. Puzzles
    both solve or both fail say nothing about the difference; under "no difference" each of the
    ``gained + lost`` that changed is a fair coin, so p = 2 P(Binomial(gained + lost, 1/2) <=
    min(gained, lost)), capped at 1. Two overlapping Wilson intervals can still be a real paired
    difference, and a +3-puzzle gain made of 23 gained and 20 lost is not one (p = 0.76)."""
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedChange:
    """How a second evaluation differs from a first on the puzzles both played (first try each)."""

    gained: int
    """Puzzles the second solves and the first does not."""
    lost: int
    """Puzzles the first solves and the second does not."""
    puzzles: int
    """Puzzles (env seeds) both evaluations played."""

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar p of the difference (:func:`paired_p_value`)."""
        return paired_p_value(self.gained, self.lost)

    def __str__(self) -> str:
        # Two decimals, or two significant digits below 0.01 (a clear difference is not "p = 0.00").
        p = self.p_value
        shown = f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"
        return f"+{self.gained} -{self.lost} (p = {shown}, {self.puzzles} puzzles)"


def first_outcomes(episodes: Sequence[Trajectory]) -> dict[int, bool]:
    """Whether each env seed's first episode succeeded (greedy evaluation plays each seed once)."""
    return {t.seed: bool(t.success) for t in reversed(episodes)}


def paired_change(first: Sequence[Trajectory], second: Sequence[Trajectory]) -> PairedChange:
    """Puzzles gained and lost from ``first`` to ``second``, over the env seeds both played; a seed
    played more than once counts by its first episode (:func:`first_outcomes`)."""
    before, after = first_outcomes(first), first_outcomes(second)
    common = before.keys() & after.keys()
    return PairedChange(
        gained=sum(after[s] and not before[s] for s in common),
        lost=sum(before[s] and not after[s] for s in common),
        puzzles=len(common),
    )


def eval_metrics(trajectories: Sequence[Trajectory], prefix: str = "eval") -> dict[str, float]:
    """Rollout metrics plus pass@k over seeds (k = 1 and the samples per seed) and the success
    rate's 95% Wilson interval (``success_ci_low`` / ``success_ci_high``, over ``episodes``)."""
    m = rollout_metrics(trajectories, prefix)
    wins = sum(bool(t.success) for t in trajectories)
    m[f"{prefix}/episodes"] = float(len(trajectories))
    m[f"{prefix}/success_ci_low"], m[f"{prefix}/success_ci_high"] = wilson_interval(wins, len(trajectories))
    by_seed: dict[int, list[bool]] = defaultdict(list)
    for traj in trajectories:
        by_seed[traj.seed].append(traj.success)
    if by_seed:
        n = min(len(v) for v in by_seed.values())
        for k in sorted({1, n}):
            m[f"{prefix}/pass@{k}"] = _mean([pass_at_k(len(v), sum(v), k) for v in by_seed.values()])
    return m
