"""Credit assignment: the one path from finished trajectories to per-token advantages.

:func:`assign_credit` is all the trainer calls, once a step:

1. **rewards**: the shaping terms switched on (:func:`~agentrl.algorithms.rewards.shaping_bonus`)
   join each episode's last-turn reward;
2. **turns**: :meth:`TurnBatch.from_trajectories <agentrl.algorithms.advantages.TurnBatch.from_trajectories>`
   flattens the episodes into one row per turn;
3. **advantages**: the estimator named in the config gives one advantage per turn;
4. **filters**: with ``mixed_success_only`` only the groups where some episodes succeeded and some
   did not (DAPO's dynamic-sampling filter), and with ``min_return_spread`` > 0 also those whose
   returns span at least that much (dense progress rewards); below ``keep_group_fraction`` < 1 only
   the groups with the widest reward spread (StarPO-S); with ``positive_advantage_only`` only the
   episodes with an advantage above 0, their negative ones zeroed (RAFT). With ``faithful_only`` an
   episode with a turn whose answer ignored its thought (``Turn.follows_thought`` is False) has its
   positive advantages zeroed first: it is never pulled up. An episode goes on to the update if it
   passes all that are on; with ``unfaithful_turn_advantage`` not 0, each turn that ignored its
   thought then gets that advantage instead, and its episode goes on whatever the filters said (one
   the filters dropped trains that turn alone);
5. **tokens**: each turn's advantage is written onto the tokens the model sampled in that turn
   (``Sample.advantages``; 0 on prompt and env tokens).

May import: :mod:`agentrl.algorithms.advantages`, :mod:`agentrl.algorithms.rewards`,
:mod:`agentrl.rollout.trajectory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from agentrl.algorithms.advantages import (
    AdvantageParams,
    TurnBatch,
    compute_advantages,
    select_groups_by_spread,
    select_groups_by_std,
    select_groups_with_mixed_success,
)
from agentrl.algorithms.rewards import ShapingParams, shaping_bonus
from agentrl.rollout.trajectory import Trajectory


@dataclass
class Credit:
    """What :func:`assign_credit` hands the update."""

    selected: list[Trajectory]
    """The trajectories that go on to the update (all of them, or those :class:`EpisodeFilter`'s
    filters kept), their samples carrying per-token advantages."""
    metrics: dict[str, float]
    """``train/advantage_abs_mean``, ``train/kept_episode_fraction``, where the env judges replies
    ``train/unfaithful_success_fraction`` (successes with a turn whose answer ignored its thought)
    and ``train/judged_turn_fraction`` (turns the env could judge)
    and, with shaping, ``train/shaping_bonus``."""


@dataclass(frozen=True)
class EpisodeFilter:
    """Which episodes go on to the update (step 4 above); every filter is off by default."""

    keep_group_fraction: float = 1.0
    """StarPO-S: only the top fraction of groups by in-group reward std (1.0: all groups)."""
    mixed_success_only: bool = False
    """Only the groups whose episodes differ in success."""
    min_return_spread: float = 0.0
    """With ``mixed_success_only``: also the groups whose returns span at least this (0: off)."""
    positive_advantage_only: bool = False
    """Negative advantages become 0 and the episodes left without a positive one drop out."""
    faithful_only: bool = False
    """An episode with a turn whose answer ignored its thought (``follows_thought`` False) has its
    positive advantages zeroed before that: it is never pulled up."""
    unfaithful_turn_advantage: float = 0.0
    """Not 0: each turn whose answer ignored its thought gets this advantage in place of the
    estimator's, after every filter above, and its episode trains whatever its group (a negative
    value pushes those replies down, also under ``positive_advantage_only``)."""


def assign_credit(
    trajectories: Sequence[Trajectory],
    advantage: AdvantageParams,
    shaping: ShapingParams,
    episodes: EpisodeFilter = EpisodeFilter(),
    max_reply_tokens: int | None = None,
) -> Credit:
    """Shaped rewards -> per-turn advantages -> per-token advantages on every sample of
    ``trajectories``; then ``episodes`` picks those that train. Advantages are computed over every
    group first, so a group filter changes which episodes train, never their values;
    ``faithful_only`` and ``positive_advantage_only`` do change them (above).
    ``max_reply_tokens``: the episode's reply budget, the cosine reward's default ``L_max``."""
    bonus = None
    if shaping.enabled:
        bonus = shaping_bonus(
            ["\n".join(t.reply for t in traj.turns) for traj in trajectories],
            torch.tensor([traj.num_sampled_tokens for traj in trajectories], dtype=torch.float32),
            torch.tensor([traj.success for traj in trajectories]),
            torch.tensor([traj.group for traj in trajectories]),
            shaping,
            max_tokens=max_reply_tokens,
        )
    batch = TurnBatch.from_trajectories(trajectories, bonus)
    advantages = compute_advantages(batch, advantage)  # (N,) one per turn
    metrics = {"train/advantage_abs_mean": float(advantages.abs().mean()) if advantages.numel() else 0.0}
    # (N,) per turn: the env judged its moves not those its thought named; (B,) per episode: any such turn
    # (an episode the context ended before its first reply has one placeholder row and no turn)
    rows = zip(batch.episode.tolist(), batch.turn.tolist())
    ignored = torch.tensor(
        [
            t < len(trajectories[e].turns) and trajectories[e].turns[t].follows_thought is False
            for e, t in rows
        ],
        dtype=torch.bool,
    )
    unfaithful = torch.zeros(len(trajectories), dtype=torch.bool).index_fill_(0, batch.episode[ignored], True)
    verdicts = [t.follows_thought for traj in trajectories for t in traj.turns]
    if any(v is not None for v in verdicts):
        # A judge that says None (nothing to judge: no push named) lets a turn pass; a falling
        # share of judged turns under faithful_only means the thoughts stopped naming what they do.
        metrics["train/judged_turn_fraction"] = sum(v is not None for v in verdicts) / len(verdicts)
        successes = torch.tensor([traj.success for traj in trajectories], dtype=torch.bool)
        metrics["train/unfaithful_success_fraction"] = float(
            (unfaithful & successes).sum() / successes.sum().clamp(min=1)
        )
    if episodes.faithful_only:
        # (N,) per turn: its episode has an unfaithful turn
        advantages = torch.where(unfaithful[batch.episode], advantages.clamp(max=0.0), advantages)
    if episodes.positive_advantage_only:
        advantages = advantages.clamp(min=0.0)
    if bonus is not None:
        metrics["train/shaping_bonus"] = float(bonus.mean())
    keep = torch.ones(len(trajectories), dtype=torch.bool)
    returns, groups = batch.episode_return(), batch.episode_group()  # (B,) each
    if episodes.keep_group_fraction < 1.0:
        keep &= select_groups_by_std(returns, groups, episodes.keep_group_fraction)
    if episodes.mixed_success_only:
        success = torch.tensor([traj.success for traj in trajectories], dtype=torch.bool)
        kept = select_groups_with_mixed_success(success, groups)
        if episodes.min_return_spread > 0:
            kept |= select_groups_by_spread(returns, groups, episodes.min_return_spread)
        keep &= kept
    if episodes.positive_advantage_only:
        # (B,) whether any turn of the episode kept a positive advantage
        positive = torch.zeros(len(trajectories), dtype=torch.bool).index_fill_(
            0, batch.episode[advantages > 0], True
        )
        keep &= positive
    if episodes.unfaithful_turn_advantage:
        # An episode the filters dropped comes back for its pushed-down turns alone: its other
        # turns carry no advantage (the filters judged their estimator's values noise).
        readmitted = unfaithful & ~keep
        advantages = torch.where(readmitted[batch.episode] & ~ignored, torch.zeros(()), advantages)
        advantages = torch.where(ignored, torch.tensor(episodes.unfaithful_turn_advantage), advantages)
        keep |= unfaithful
    advantages_onto_tokens(trajectories, batch, advantages)
    selected = [t for t, k in zip(trajectories, keep.tolist()) if k]
    metrics["train/kept_episode_fraction"] = len(selected) / max(1, len(trajectories))
    return Credit(selected, metrics)


def advantages_onto_tokens(
    trajectories: Sequence[Trajectory], batch: TurnBatch, advantages: torch.Tensor
) -> None:
    """Write per-token advantages into each sample: a turn's value on its sampled tokens, 0 elsewhere."""
    per_episode: dict[tuple[int, int], float] = {}
    for row in range(batch.num_turns):
        per_episode[(int(batch.episode[row]), int(batch.turn[row]))] = float(advantages[row])
    for e, traj in enumerate(trajectories):
        for sample in traj.samples:
            sample.advantages = [0.0] * len(sample.token_ids)
        for t, turn in enumerate(traj.turns):
            value = per_episode.get((e, t), 0.0)
            sample = traj.samples[turn.sample]
            start, end = turn.response_span
            for i in range(start, end):
                sample.advantages[i] = value if sample.loss_mask[i] else 0.0
