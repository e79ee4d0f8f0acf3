"""Advantage estimators: pure tensor functions, one per name, one shared signature.

Every estimator is ``fn(batch: TurnBatch, params: AdvantageParams) -> Tensor (N,)``: one advantage
per *turn*. ``TurnBatch.from_trajectories`` builds the batch; :mod:`agentrl.algorithms.credit`
broadcasts each turn's advantage to that turn's sampled tokens, and looks the estimator up by name (``ADVANTAGE_ESTIMATORS[params.estimator]`` or ``get_estimator``), so it never
branches on the estimator. Formulas and references: docs/algorithms.md.

Conventions shared by all estimators:

- The std of a group is the *unbiased* (Bessel-corrected, ``n - 1``) sample std, as in RAGEN and
  verl (``torch.std``).
- A group (or GiGPO step group) whose values are all equal, including a group of one, gives exactly
  zero advantage: never NaN, never a rounding residue.
- Group ids and observation keys are arbitrary integers; they need not be contiguous.

Register a new estimator by adding it to ``ADVANTAGE_ESTIMATORS``; it must take and return the same
types as the built-in ones.

May import: rollout, envs, models, suggest, seeds (the stages below agentrl.algorithms; lint-imports
checks).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from agentrl.rollout.trajectory import Trajectory
from agentrl.suggest import lookup


def observation_key(text: str) -> int:
    """A stable signed 64-bit key of an observation text, for ``TurnBatch.obs_key``.

    Unlike ``hash()``, it is the same in every process and run (GiGPO step groups need equal
    observations of different episodes, possibly rolled out by different workers, to share a key).
    """
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class TurnBatch:
    """Every turn of every trajectory in a batch, flattened: one row per turn (``N`` rows).

    Episodes are numbered ``0..B-1`` and each has at least one turn, numbered ``0..T_i-1``. Rows may
    come in any order. The constructor checks shapes and these invariants.
    """

    reward: Tensor
    """(N,) float: the turn's reward (env reward plus format penalty and any shaping)."""
    episode: Tensor
    """(N,) long: index of the trajectory the turn belongs to, ``0..B-1``."""
    group: Tensor
    """(N,) long: group id of that trajectory (episodes of a group share one env seed)."""
    turn: Tensor
    """(N,) long: turn index within its episode, ``0..T_i-1``."""
    obs_key: Tensor
    """(N,) long: key of the observation the turn saw (``observation_key``); equal keys within a
    group form GiGPO step groups. Only ``gigpo`` reads it."""

    def __post_init__(self) -> None:
        n = self.reward.shape
        for name in ("reward", "episode", "group", "turn", "obs_key"):
            t = getattr(self, name)
            if t.dim() != 1 or t.shape != n:
                raise ValueError(f"TurnBatch.{name} must have shape (N,) = {tuple(n)}, got {tuple(t.shape)}")
            if name != "reward" and t.is_floating_point():
                raise ValueError(f"TurnBatch.{name} must be an integer tensor, got {t.dtype}")
        if not self.reward.is_floating_point():
            raise ValueError(f"TurnBatch.reward must be a float tensor, got {self.reward.dtype}")
        if self.num_turns == 0:
            return
        b = self.num_episodes
        if int(self.episode.min()) < 0:
            raise ValueError("TurnBatch.episode must be >= 0")
        turns = torch.zeros(b, dtype=torch.long).index_add_(0, self.episode, torch.ones_like(self.episode))
        if bool((turns == 0).any()):
            raise ValueError("TurnBatch.episode must number the episodes 0..B-1, each with at least one turn")
        # turn indices of an episode are exactly 0..T_i-1: all distinct, min 0, max T_i-1
        if int(self.turn.min()) < 0:
            raise ValueError("TurnBatch.turn must be >= 0")
        max_turn = torch.zeros(b, dtype=torch.long).scatter_reduce_(0, self.episode, self.turn, "amax")
        pairs = torch.unique(torch.stack([self.episode, self.turn], 1), dim=0).shape[0]
        if pairs != self.num_turns or bool((max_turn != turns - 1).any()):
            raise ValueError("TurnBatch.turn must number each episode's turns 0..T_i-1, once each")
        if bool((self.group != self.episode_group()[self.episode]).any()):
            raise ValueError("TurnBatch.group must be the same on every turn of an episode")

    @property
    def num_turns(self) -> int:
        """``N``, the number of rows."""
        return int(self.reward.shape[0])

    @property
    def num_episodes(self) -> int:
        """``B``, the number of episodes."""
        return int(self.episode.max()) + 1 if self.num_turns else 0

    def episode_return(self) -> Tensor:
        """(B,) the undiscounted sum of each episode's turn rewards."""
        return torch.zeros(self.num_episodes, dtype=self.reward.dtype).index_add_(
            0, self.episode, self.reward
        )

    def episode_group(self) -> Tensor:
        """(B,) long: the group id of each episode."""
        out = torch.zeros(self.num_episodes, dtype=self.group.dtype)
        return out.scatter_(0, self.episode, self.group)

    def episode_length(self) -> Tensor:
        """(B,) long: the number of turns of each episode."""
        ones = torch.ones_like(self.episode)
        return torch.zeros(self.num_episodes, dtype=torch.long).index_add_(0, self.episode, ones)

    def last_turn_row(self) -> Tensor:
        """(B,) long: the row of each episode's last turn."""
        is_last = self.turn == (self.episode_length() - 1)[self.episode]
        rows = torch.arange(self.num_turns)[is_last]
        return torch.zeros(self.num_episodes, dtype=torch.long).scatter_(0, self.episode[is_last], rows)

    def add_to_last_turn(self, bonus: Tensor) -> TurnBatch:
        """A copy whose last turn of each episode gets ``bonus`` (B,) added to its reward.

        The way to apply an episode-level shaping term (``rewards.shaping_bonus``): it then enters
        the episode return of every estimator and the return-to-go of every turn.
        """
        if bonus.shape != (self.num_episodes,):
            raise ValueError(f"bonus must have shape (B,) = ({self.num_episodes},), got {tuple(bonus.shape)}")
        reward = self.reward.clone()
        reward.index_add_(0, self.last_turn_row(), bonus.to(reward.dtype))
        return replace(self, reward=reward)

    @classmethod
    def from_episodes(
        cls,
        rewards: Sequence[Sequence[float]],
        groups: Sequence[int],
        obs_keys: Sequence[Sequence[int]] | None = None,
    ) -> TurnBatch:
        """Build a batch from per-episode lists: ``rewards[b][t]``, ``groups[b]``, ``obs_keys[b][t]``.

        Without ``obs_keys`` every turn gets a key of its own (no GiGPO step groups).
        """
        if len(groups) != len(rewards):
            raise ValueError(f"{len(rewards)} episodes but {len(groups)} group ids")
        if obs_keys is not None and [len(k) for k in obs_keys] != [len(r) for r in rewards]:
            raise ValueError("obs_keys must have one key per turn of each episode")
        reward, episode, group, turn, key = [], [], [], [], []
        for b, ep_rewards in enumerate(rewards):
            for t, r in enumerate(ep_rewards):
                reward.append(float(r))
                episode.append(b)
                group.append(int(groups[b]))
                turn.append(t)
                key.append(int(obs_keys[b][t]) if obs_keys is not None else len(key))
        long = torch.long
        return cls(
            reward=torch.tensor(reward, dtype=torch.float32),
            episode=torch.tensor(episode, dtype=long),
            group=torch.tensor(group, dtype=long),
            turn=torch.tensor(turn, dtype=long),
            obs_key=torch.tensor(key, dtype=long),
        )

    @classmethod
    def from_trajectories(cls, trajectories: Sequence[Trajectory], bonus: Tensor | None = None) -> TurnBatch:
        """One row per turn of every trajectory (episodes without turns get one zero-reward row),
        keyed by observation for GiGPO; ``bonus`` (B,) is added to each episode's last turn (reward
        shaping)."""
        rewards, groups, keys = [], [], []
        for traj in trajectories:
            turns = traj.turns or []
            rewards.append([t.reward for t in turns] or [0.0])
            groups.append(traj.group)
            keys.append([observation_key(t.observation) for t in turns] or [observation_key("")])
        batch = cls.from_episodes(rewards, groups, obs_keys=keys)
        return batch if bonus is None else batch.add_to_last_turn(bonus)


@dataclass
class AdvantageParams:
    """How advantages are computed (config section ``advantage``)."""

    estimator: str = "grpo"
    """Name in ``ADVANTAGE_ESTIMATORS``: ``grpo`` (RAGEN StarPO), ``drgrpo``, ``rloo``, ``turn``, ``gigpo``."""
    eps: float = 1e-6
    """Added to the group std before dividing (``grpo``, ``turn``, ``gigpo``)."""
    gamma: float = 1.0
    """Discount of the turn-level return-to-go ``G_t = sum_k gamma^k r_{t+k}`` (``turn``, and the
    step-level part of ``gigpo``). Episode-level advantages always use the undiscounted return."""
    step_weight: float = 1.0
    """``gigpo``: weight of the step-level advantage added to the episode-level one."""

    def __post_init__(self) -> None:
        if not self.eps >= 0:
            raise ValueError(f"advantage.eps must be >= 0, got {self.eps}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"advantage.gamma must be in [0, 1], got {self.gamma}")


Estimator = Callable[[TurnBatch, AdvantageParams], Tensor]


# ---------------------------------------------------------------------------------------------------
# group statistics


@dataclass
class _Segments:
    """Statistics of ``values`` (M,) per segment; ``index`` (M,) maps each value to its segment."""

    index: Tensor
    count: Tensor
    mean: Tensor
    std: Tensor
    spread: Tensor
    """Max minus min of each segment."""

    @property
    def constant(self) -> Tensor:
        """Whether all of a segment's values are equal."""
        return self.spread == 0


def _segments(values: Tensor, keys: Tensor) -> _Segments:
    """Per-segment count, mean, unbiased std and spread (max - min) of ``values`` (M,), in float64.

    ``keys`` is (M,) or (M, K) long; rows with equal keys form one segment (segments sorted by key).
    A segment of one has std 0 and counts as constant.
    """
    _, index = torch.unique(keys, dim=0, return_inverse=True)
    s = int(index.max()) + 1 if index.numel() else 0
    v = values.to(torch.float64)
    zeros = torch.zeros(s, dtype=torch.float64)
    count = zeros.index_add(0, index, torch.ones_like(v))
    mean = zeros.index_add(0, index, v) / count
    dev = v - mean[index]
    var = zeros.index_add(0, index, dev * dev) / (count - 1).clamp(min=1)
    vmax = torch.full((s,), -math.inf, dtype=torch.float64).scatter_reduce(0, index, v, "amax")
    vmin = torch.full((s,), math.inf, dtype=torch.float64).scatter_reduce(0, index, v, "amin")
    return _Segments(index=index, count=count, mean=mean, std=var.sqrt(), spread=vmax - vmin)


def _normalize(values: Tensor, keys: Tensor, eps: float, scale: bool = True) -> Tensor:
    """(M,) float64: ``(v - mean) / (std + eps)`` within each segment (``v - mean`` if not ``scale``),
    exactly 0 in constant segments."""
    seg = _segments(values, keys)
    i = seg.index
    out = values.to(torch.float64) - seg.mean[i]
    if scale:
        out = out / (seg.std[i] + eps)
    return torch.where(seg.constant[i], torch.zeros_like(out), out)


def _out_dtype(batch: TurnBatch) -> torch.dtype:
    return batch.reward.dtype


def discounted_returns(batch: TurnBatch, gamma: float) -> Tensor:
    """(N,) the return-to-go of each turn within its episode: ``G_t = sum_k gamma^k r_{t+k}``."""
    g = torch.zeros(batch.num_turns, dtype=torch.float64)
    if batch.num_turns == 0:
        return g.to(_out_dtype(batch))
    carry = torch.zeros(batch.num_episodes, dtype=torch.float64)  # G_{t+1} of each episode
    r = batch.reward.to(torch.float64)
    for t in range(int(batch.turn.max()), -1, -1):
        rows = (batch.turn == t).nonzero(as_tuple=True)[0]
        eps_ = batch.episode[rows]
        g_t = r[rows] + gamma * carry[eps_]
        g[rows] = g_t
        carry[eps_] = g_t
    return g.to(_out_dtype(batch))


def group_reward_stats(episode_reward: Tensor, episode_group: Tensor) -> dict[str, Any]:
    """Per-group reward statistics of a batch of episodes.

    Args:
        episode_reward: (B,) float, each episode's return.
        episode_group: (B,) long, each episode's group id.

    Returns a dict with ``group_ids`` (G,) long (sorted), ``size`` (G,) long, ``mean`` (G,),
    ``std`` (G,) (unbiased; 0 for a group of one), ``zero_std_groups`` (int: groups whose rewards are
    all equal, which give zero advantage and no gradient) and ``zero_std_group_fraction`` (float).
    """
    group_ids, _ = torch.unique(episode_group, return_inverse=True)
    if episode_reward.numel() == 0:
        empty = torch.zeros(0, dtype=episode_reward.dtype)
        return {
            "group_ids": group_ids,
            "size": torch.zeros(0, dtype=torch.long),
            "mean": empty,
            "std": empty,
            "zero_std_groups": 0,
            "zero_std_group_fraction": 0.0,
        }
    seg = _segments(episode_reward, episode_group)
    std = torch.where(seg.constant, torch.zeros_like(seg.std), seg.std)
    n_zero = int(seg.constant.sum())
    dtype = episode_reward.dtype if episode_reward.is_floating_point() else torch.float32
    return {
        "group_ids": group_ids,
        "size": seg.count.to(torch.long),
        "mean": seg.mean.to(dtype),
        "std": std.to(dtype),
        "zero_std_groups": n_zero,
        "zero_std_group_fraction": n_zero / len(group_ids),
    }


def nonzero_std_groups(episode_reward: Tensor, episode_group: Tensor) -> Tensor:
    """(B,) bool: the episodes of groups whose rewards are not all equal (DAPO dynamic sampling keeps
    exactly these)."""
    if episode_reward.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    seg = _segments(episode_reward, episode_group)
    return ~seg.constant[seg.index]


def select_groups_with_mixed_success(episode_success: Tensor, episode_group: Tensor) -> Tensor:
    """DAPO's dynamic-sampling filter (without its resampling): keep the groups in which some
    episodes succeeded and some did not.

    In a group that all solved or all failed, returns differ only by shaping (Sokoban's -0.1 per
    move), and the std division of GRPO turns those small differences into full-size advantages
    that teach nothing about solving.

    Args:
        episode_success: (B,) bool, each episode's success.
        episode_group: (B,) long, each episode's group id.

    Returns:
        (B,) bool, True for the episodes of groups with both outcomes.
    """
    if episode_success.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    success = episode_success.to(torch.float64)
    seg = _segments(success, episode_group)
    mixed = ~seg.constant
    return mixed[seg.index]


def select_groups_by_spread(episode_return: Tensor, episode_group: Tensor, min_spread: float) -> Tensor:
    """Keep the groups whose episode returns span at least ``min_spread`` (max minus min).

    With a dense progress reward (Sokoban's ``progress_reward``) tries that all failed still differ
    by how far they got; this keeps such groups beside :func:`select_groups_with_mixed_success`'s,
    while a group whose returns differ only by a per-move cost (a few tenths) stays out.

    Args:
        episode_return: (B,) each episode's return.
        episode_group: (B,) long, each episode's group id.
        min_spread: the smallest max-minus-min return a kept group has.

    Returns:
        (B,) bool, True for the episodes of groups spanning at least ``min_spread``.
    """
    if episode_return.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    seg = _segments(episode_return, episode_group)
    return (seg.spread >= min_spread)[seg.index]


def select_groups_by_std(episode_reward: Tensor, episode_group: Tensor, keep_fraction: float) -> Tensor:
    """StarPO-S variance filtering: keep the groups with the highest in-group reward std.

    Keeps ``ceil(keep_fraction * G)`` groups, at least one, ranked by std (unbiased) descending; ties
    go to the smaller group id, so the choice is deterministic.

    Args:
        episode_reward: (B,) float, each episode's return.
        episode_group: (B,) long, each episode's group id.
        keep_fraction: in (0, 1]; 1 keeps everything.

    Returns:
        (B,) bool, True for the episodes of kept groups.
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    if episode_reward.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    seg = _segments(episode_reward, episode_group)  # segments are sorted by group id
    n_groups = seg.count.shape[0]
    n_keep = max(1, math.ceil(keep_fraction * n_groups - 1e-9))
    std = torch.where(seg.constant, torch.zeros_like(seg.std), seg.std)
    order = torch.sort(std, descending=True, stable=True).indices  # stable: ties keep id order
    kept = torch.zeros(n_groups, dtype=torch.bool)
    kept[order[:n_keep]] = True
    return kept[seg.index]


# ---------------------------------------------------------------------------------------------------
# estimators: fn(batch, params) -> (N,) advantage per turn


def grpo(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """RAGEN StarPO (trajectory-level GRPO): ``A = (R - mean_g R) / (std_g R + eps)``.

    ``R`` is the episode's undiscounted return; mean and (unbiased) std are over the episodes of its
    group; every turn of the episode gets the episode's ``A``. Returns (N,).
    """
    adv = _normalize(batch.episode_return(), batch.episode_group(), params.eps)
    return adv[batch.episode].to(_out_dtype(batch))


def drgrpo(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """Dr.GRPO: ``A = R - mean_g R`` (no std division), given to every turn of the episode. Returns (N,)."""
    adv = _normalize(batch.episode_return(), batch.episode_group(), params.eps, scale=False)
    return adv[batch.episode].to(_out_dtype(batch))


def rloo(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """RLOO: ``A_i = R_i - mean_{j != i} R_j = n/(n-1) (R_i - mean_g R)`` over the ``n`` episodes of
    the group (0 for a group of one), given to every turn of the episode. Returns (N,)."""
    ret, grp = batch.episode_return(), batch.episode_group()
    seg = _segments(ret, grp)
    n = seg.count[seg.index]
    centred = _normalize(ret, grp, params.eps, scale=False)
    adv = centred * n / (n - 1).clamp(min=1)
    return adv[batch.episode].to(_out_dtype(batch))


def turn_level(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """Turn-level GRPO: each turn's discounted return-to-go ``G_t``, normalised
    ``(G_t - mean) / (std + eps)`` over *all turns* of all episodes in its group. Returns (N,)."""
    g = discounted_returns(batch, params.gamma)
    return _normalize(g, batch.group, params.eps).to(_out_dtype(batch))


def gigpo(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """GiGPO: episode-level GRPO advantage ``+ step_weight *`` step-level advantage.

    A step group is the turns of one group that saw the same observation (same ``obs_key``); the
    step-level advantage is the turn's discounted return-to-go ``G_t`` normalised
    ``(G_t - mean) / (std + eps)`` within its step group (0 for a step group of one or of equal
    returns). Returns (N,).
    """
    episode_adv = _normalize(batch.episode_return(), batch.episode_group(), params.eps)[batch.episode]
    g = discounted_returns(batch, params.gamma)
    step_adv = _normalize(g, torch.stack([batch.group, batch.obs_key], 1), params.eps)
    return (episode_adv + params.step_weight * step_adv).to(_out_dtype(batch))


ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {
    "grpo": grpo,
    "drgrpo": drgrpo,
    "rloo": rloo,
    "turn": turn_level,
    "gigpo": gigpo,
}
"""Advantage estimators by name; all ``fn(batch: TurnBatch, params: AdvantageParams) -> Tensor (N,)``."""


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(ADVANTAGE_ESTIMATORS, name, "advantage estimator")


def compute_advantages(batch: TurnBatch, params: AdvantageParams) -> Tensor:
    """(N,) per-turn advantages from the estimator named by ``params.estimator``."""
    return get_estimator(params.estimator)(batch, params)
