"""Advantage estimators against hand-computed numbers (arithmetic in the comments), and the credit
path that puts them onto tokens (agentrl.algorithms.credit)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageParams,
    TurnBatch,
    compute_advantages,
    discounted_returns,
    get_estimator,
    group_reward_stats,
    nonzero_std_groups,
    observation_key,
    select_groups_by_spread,
    select_groups_by_std,
    select_groups_with_mixed_success,
)
from agentrl.algorithms.credit import EpisodeFilter, assign_credit
from agentrl.algorithms.rewards import ShapingParams
from agentrl.rollout.trajectory import Sample, Trajectory, Turn

S2 = math.sqrt(2.0)

# Two groups (ids 10 and 20, deliberately not 0..G-1) of three episodes with 1-3 turns.
#   group 10: ep0 [0]         return 0
#             ep1 [1, 1]      return 2
#             ep2 [1, 1, 2]   return 4     -> returns 0, 2, 4: mean 2, unbiased std sqrt((4+0+4)/2) = 2
#   group 20: ep3 [0.5]       return 0.5
#             ep4 [0, 0.5]    return 0.5
#             ep5 [0.5, 0]    return 0.5   -> all equal: zero episode-level advantage
# Observation keys (GiGPO): every first turn sees key 1 (same seed, same start state); second turns key 2;
# ep2's third turn key 3.
# Rows, in order: 0 ep0t0 | 1 ep1t0 | 2 ep1t1 | 3 ep2t0 | 4 ep2t1 | 5 ep2t2 | 6 ep3t0 | 7 ep4t0 | 8 ep4t1 |
#                 9 ep5t0 | 10 ep5t1
REWARDS = [[0.0], [1.0, 1.0], [1.0, 1.0, 2.0], [0.5], [0.0, 0.5], [0.5, 0.0]]
GROUPS = [10, 10, 10, 20, 20, 20]
KEYS = [[1], [1, 2], [1, 2, 3], [1], [1, 2], [1, 2]]


@pytest.fixture
def batch() -> TurnBatch:
    return TurnBatch.from_episodes(REWARDS, GROUPS, obs_keys=KEYS)


def approx(t: torch.Tensor, expected: list[float], tol: float = 1e-5) -> None:
    assert t.shape == (len(expected),)
    assert torch.allclose(t.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0), (
        t.tolist()
    )


def test_batch_helpers(batch: TurnBatch) -> None:
    assert batch.num_turns == 11 and batch.num_episodes == 6
    approx(batch.episode_return(), [0, 2, 4, 0.5, 0.5, 0.5])
    assert batch.episode_group().tolist() == GROUPS
    assert batch.episode_length().tolist() == [1, 2, 3, 1, 2, 2]
    assert batch.last_turn_row().tolist() == [0, 2, 5, 6, 8, 10]
    shaped = batch.add_to_last_turn(torch.tensor([1.0, 0, 0, 0, 0, -1.0]))
    approx(shaped.reward, [1, 1, 1, 1, 1, 2, 0.5, 0, 0.5, 0.5, -1])
    approx(batch.reward, [0, 1, 1, 1, 1, 2, 0.5, 0, 0.5, 0.5, 0])  # the original is untouched


def test_rows_in_any_order(batch: TurnBatch) -> None:
    perm = torch.tensor([10, 3, 0, 7, 5, 1, 9, 2, 8, 4, 6])
    shuffled = TurnBatch(
        *(getattr(batch, f)[perm] for f in ("reward", "episode", "group", "turn", "obs_key"))
    )
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        params = AdvantageParams(estimator=name, gamma=0.9, step_weight=0.5)
        assert torch.allclose(fn(shuffled, params), fn(batch, params)[perm], atol=1e-6), name


def test_batch_validation() -> None:
    long = torch.long
    with pytest.raises(ValueError, match="turn"):  # ep0 has turns 0 and 2
        TurnBatch(
            torch.zeros(2),
            torch.tensor([0, 0]),
            torch.tensor([0, 0]),
            torch.tensor([0, 2]),
            torch.zeros(2, dtype=long),
        )
    with pytest.raises(ValueError, match="episode"):  # episode 0 missing
        TurnBatch(
            torch.zeros(1),
            torch.tensor([1]),
            torch.tensor([0]),
            torch.tensor([0]),
            torch.zeros(1, dtype=long),
        )
    with pytest.raises(ValueError, match="group"):  # one episode, two groups
        TurnBatch(
            torch.zeros(2),
            torch.tensor([0, 0]),
            torch.tensor([0, 1]),
            torch.tensor([0, 1]),
            torch.zeros(2, dtype=long),
        )
    with pytest.raises(ValueError, match="shape"):
        TurnBatch(
            torch.zeros(2),
            torch.tensor([0]),
            torch.tensor([0]),
            torch.tensor([0]),
            torch.zeros(1, dtype=long),
        )


def test_grpo(batch: TurnBatch) -> None:
    # group 10: (0-2)/2 = -1, (2-2)/2 = 0, (4-2)/2 = 1 (eps 1e-6 changes the 6th digit only); group 20: 0.
    # Each turn gets its episode's value.
    adv = ADVANTAGE_ESTIMATORS["grpo"](batch, AdvantageParams())
    approx(adv, [-1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0])
    assert adv.dtype == torch.float32


def test_grpo_uses_unbiased_std() -> None:
    # returns 0, 1: mean 0.5, unbiased std sqrt((0.25+0.25)/1) = 1/sqrt(2) -> -0.5*sqrt(2), +0.5*sqrt(2)
    # (the biased std 0.5 would give -1, +1)
    b = TurnBatch.from_episodes([[0.0], [1.0]], [0, 0])
    approx(ADVANTAGE_ESTIMATORS["grpo"](b, AdvantageParams(eps=0.0)), [-S2 / 2, S2 / 2])


def test_drgrpo(batch: TurnBatch) -> None:
    # group 10: 0-2 = -2, 2-2 = 0, 4-2 = 2; group 20: 0.
    approx(ADVANTAGE_ESTIMATORS["drgrpo"](batch, AdvantageParams()), [-2, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0])


def test_rloo(batch: TurnBatch) -> None:
    # ep0: 0 - (2+4)/2 = -3; ep1: 2 - (0+4)/2 = 0; ep2: 4 - (0+2)/2 = 3; group 20: 0.5 - 0.5 = 0.
    approx(ADVANTAGE_ESTIMATORS["rloo"](batch, AdvantageParams()), [-3, 0, 0, 3, 3, 3, 0, 0, 0, 0, 0])


def test_rloo_group_of_one_is_zero() -> None:
    b = TurnBatch.from_episodes([[3.0], [1.0], [2.0]], [0, 1, 1])
    # group 0 has one episode -> 0; group 1: 1 - 2 = -1, 2 - 1 = 1
    approx(ADVANTAGE_ESTIMATORS["rloo"](b, AdvantageParams()), [0, -1, 1])


def test_discounted_returns() -> None:
    # rewards [1, 0, 2], gamma 0.5: G2 = 2; G1 = 0 + 0.5*2 = 1; G0 = 1 + 0.5*1 = 1.5.  Second episode [4]: 4.
    b = TurnBatch.from_episodes([[1.0, 0.0, 2.0], [4.0]], [0, 0])
    approx(discounted_returns(b, 0.5), [1.5, 1.0, 2.0, 4.0])
    approx(discounted_returns(b, 1.0), [3.0, 2.0, 2.0, 4.0])


def test_turn(batch: TurnBatch) -> None:
    # gamma 1, return-to-go per turn:
    #   group 10: ep0 [0]; ep1 [2, 1]; ep2 [4, 3, 2] -> values 0,2,1,4,3,2: mean 12/6 = 2,
    #     deviations -2,0,-1,2,1,0, squares sum 10, unbiased var 10/5 = 2, std sqrt(2)
    #     -> -2/sqrt2 = -sqrt2, 0, -1/sqrt2, sqrt2, 1/sqrt2, 0
    #   group 20: ep3 [0.5]; ep4 [0.5, 0.5]; ep5 [0.5, 0] -> values .5,.5,.5,.5,0: mean 2/5 = 0.4,
    #     deviations .1 (x4), -.4, squares sum 4*.01 + .16 = .2, var .2/4 = .05, std sqrt(.05) = 1/sqrt(20)
    #     -> .1*sqrt(20) = 1/sqrt(5) = 0.44721, -.4*sqrt(20) = -4/sqrt(5) = -1.78885
    r5 = 1 / math.sqrt(5)
    adv = ADVANTAGE_ESTIMATORS["turn"](batch, AdvantageParams())
    approx(adv, [-S2, 0, -1 / S2, S2, 1 / S2, 0, r5, r5, r5, r5, -4 * r5])


def test_gigpo(batch: TurnBatch) -> None:
    # episode level = grpo: ep0 -1, ep1 0, ep2 1, group 20: 0.
    # step groups (group, obs_key), values = return-to-go with gamma 1:
    #   (10, 1): ep0t0 0, ep1t0 2, ep2t0 4 -> mean 2, std 2 -> -1, 0, 1
    #   (10, 2): ep1t1 1, ep2t1 3 -> mean 2, unbiased std sqrt(1+1) = sqrt2 -> -1/sqrt2, 1/sqrt2
    #   (10, 3): ep2t2 alone -> 0
    #   (20, 1): 0.5, 0.5, 0.5 -> equal -> 0
    #   (20, 2): ep4t1 0.5, ep5t1 0 (same key 2 as group 10, but a different group) -> mean .25,
    #            std sqrt(.0625*2) = .25*sqrt2 -> 1/sqrt2, -1/sqrt2
    # advantage = episode + 0.5 * step:
    #   row0 -1 + .5*-1 = -1.5 | row1 0 + 0 = 0 | row2 0 + .5*-1/sqrt2 = -0.35355 | row3 1 + .5*1 = 1.5
    #   row4 1 + .5/sqrt2 = 1.35355 | row5 1 + 0 = 1 | row6 0 | row7 0 | row8 .5/sqrt2 | row9 0 | row10 -.5/sqrt2
    h = 0.5 / S2
    adv = ADVANTAGE_ESTIMATORS["gigpo"](batch, AdvantageParams(step_weight=0.5))
    approx(adv, [-1.5, 0, -h, 1.5, 1 + h, 1, 0, 0, h, 0, -h])


def test_gigpo_discounted_step_returns() -> None:
    # one group, two episodes: ep0 [0, 1] keys [7, 8]; ep1 [0, 0] keys [7, 9]; gamma 0.5, step_weight 1.
    # episode level: returns 1, 0 -> mean .5, std 1/sqrt2 -> +1/sqrt2, -1/sqrt2.
    # step group (0, 7): G of ep0t0 = 0 + .5*1 = .5, of ep1t0 = 0 -> +1/sqrt2, -1/sqrt2; keys 8, 9 alone -> 0.
    b = TurnBatch.from_episodes([[0.0, 1.0], [0.0, 0.0]], [0, 0], obs_keys=[[7, 8], [7, 9]])
    adv = ADVANTAGE_ESTIMATORS["gigpo"](b, AdvantageParams(gamma=0.5, eps=0.0))
    approx(adv, [2 / S2, 1 / S2, -2 / S2, -1 / S2])


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_constant_groups_give_exact_zeros(name: str) -> None:
    # 0.1 * 3 / 3 is not exactly 0.1 in floating point: the estimators must still return exact zeros.
    b = TurnBatch.from_episodes([[0.1], [0.1], [0.1], [0.7]], [0, 0, 0, 1], obs_keys=[[1], [1], [1], [1]])
    adv = get_estimator(name)(b, AdvantageParams(estimator=name, eps=0.0))
    assert not torch.isnan(adv).any()
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_empty_batch() -> None:
    b = TurnBatch.from_episodes([], [])
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        assert fn(b, AdvantageParams()).shape == (0,), name


def test_lookup_errors() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'grpo'\?.*Valid: drgrpo, gigpo, grpo, rloo, turn"):
        get_estimator("grp")
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'"):
        compute_advantages(TurnBatch.from_episodes([[1.0]], [0]), AdvantageParams(estimator="nope"))
    with pytest.raises(ValueError, match="gamma"):
        AdvantageParams(gamma=1.5)


def test_compute_advantages_dispatches(batch: TurnBatch) -> None:
    approx(compute_advantages(batch, AdvantageParams(estimator="rloo")), [-3, 0, 0, 3, 3, 3, 0, 0, 0, 0, 0])


def test_group_reward_stats(batch: TurnBatch) -> None:
    # group 10: returns 0, 2, 4 -> mean 2, std 2; group 20: 0.5 x3 -> mean 0.5, std 0 (a zero-std group)
    s = group_reward_stats(batch.episode_return(), batch.episode_group())
    assert s["group_ids"].tolist() == [10, 20]
    assert s["size"].tolist() == [3, 3]
    approx(s["mean"], [2.0, 0.5])
    approx(s["std"], [2.0, 0.0])
    assert s["std"][1].item() == 0.0
    assert s["zero_std_groups"] == 1 and s["zero_std_group_fraction"] == 0.5
    # three groups, two constant (one of them a single episode): 2/3
    s = group_reward_stats(torch.tensor([1.0, 1.0, 0.0, 2.0, 5.0]), torch.tensor([0, 0, 1, 1, 2]))
    assert s["zero_std_groups"] == 2 and s["zero_std_group_fraction"] == pytest.approx(2 / 3)


def test_nonzero_std_groups(batch: TurnBatch) -> None:
    keep = nonzero_std_groups(batch.episode_return(), batch.episode_group())
    assert keep.tolist() == [True, True, True, False, False, False]


def test_select_groups_by_std() -> None:
    # groups (ids 3, 1, 2, 0): rewards -> unbiased std
    #   id 3: [0, 2] -> sqrt(2)      id 1: [1, 1] -> 0
    #   id 2: [0, 2] -> sqrt(2)      id 0: [0, 1] -> sqrt(0.5)
    # ranking by std desc, ties by smaller id: 2, 3, 0, 1
    reward = torch.tensor([0.0, 2.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0])
    group = torch.tensor([3, 3, 1, 1, 2, 2, 0, 0])

    def kept(frac: float) -> list[int]:
        mask = select_groups_by_std(reward, group, frac)
        assert mask.shape == (8,)
        return sorted(set(group[mask].tolist()))

    assert kept(1.0) == [0, 1, 2, 3]
    assert kept(0.5) == [2, 3]  # ceil(0.5*4) = 2
    assert kept(0.6) == [0, 2, 3]  # ceil(2.4) = 3
    assert kept(0.75) == [0, 2, 3]  # ceil(3.0) = 3 (no float round-up to 4)
    assert kept(0.25) == [2]  # one group; tie between ids 2 and 3 goes to 2
    assert kept(0.01) == [2]  # at least one group
    with pytest.raises(ValueError):
        select_groups_by_std(reward, group, 0.0)


def test_select_groups_with_mixed_success() -> None:
    # group 0: solved, failed -> mixed; group 1: both solved; group 2: both failed; group 3: one
    # episode (constant by definition); group 4: failed, failed, solved -> mixed
    success = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4, 4])
    mask = select_groups_with_mixed_success(success, group)
    assert mask.tolist() == [True, True, False, False, False, False, False, True, True, True]
    assert select_groups_with_mixed_success(torch.zeros(0, dtype=torch.bool), torch.zeros(0)).numel() == 0


def test_select_groups_by_spread() -> None:
    # group 0 spans 1.5 - (-0.3) = 1.8; group 1 spans 0.4 (a per-move cost); group 2 spans
    # exactly 1.0; group 3 is one episode (spans 0)
    returns = torch.tensor([1.5, -0.3, 0.2, -0.2, 0.0, 1.0, 5.0])
    group = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    mask = select_groups_by_spread(returns, group, 1.0)
    assert mask.tolist() == [True, True, False, False, True, True, False]
    assert select_groups_by_spread(torch.zeros(0), torch.zeros(0, dtype=torch.long), 1.0).numel() == 0


def test_observation_key_is_stable() -> None:
    assert observation_key("#####\n#@ $.#") == observation_key("#####\n#@ $.#")
    assert observation_key("a") != observation_key("b")
    assert -(2**63) <= observation_key("a") < 2**63


# ------------------------------------------------------------------------------------------------
# The credit path: trajectories -> per-token advantages
# ------------------------------------------------------------------------------------------------


def _episode(group: int, seed: int, rewards: list[float]) -> Trajectory:
    """One sample of 2 prompt tokens, then per turn 2 sampled tokens and 1 env token."""
    ids, mask, turns = [1, 2], [0, 0], []
    for r in rewards:
        start = len(ids)
        ids += [3, 4, 5]
        mask += [1, 1, 0]
        turns.append(
            Turn(observation=f"o{len(turns)}", reply="r", reward=r, response_span=(start, start + 3))
        )
    sample = Sample(token_ids=ids, loss_mask=mask, logprobs=[0.0] * len(ids))
    return Trajectory(env="t", seed=seed, group=group, turns=turns, samples=[sample])


def test_assign_credit_puts_each_turns_advantage_on_its_sampled_tokens() -> None:
    trajs = [_episode(0, 0, [1.0, 0.0]), _episode(0, 0, [0.0]), _episode(1, 1, [0.5]), _episode(1, 1, [0.5])]
    credit = assign_credit(trajs, AdvantageParams(estimator="grpo"), ShapingParams())
    expected = compute_advantages(TurnBatch.from_trajectories(trajs), AdvantageParams(estimator="grpo"))
    assert expected.tolist()[:2] == pytest.approx(
        [0.7071, 0.7071], abs=1e-3
    )  # an episode's return, each turn
    first = trajs[0].samples[0].advantages
    assert first[:2] == [0.0, 0.0]  # the prompt
    assert first[2:5] == pytest.approx([expected[0].item()] * 2 + [0.0])  # sampled, sampled, env token
    assert first[5:8] == pytest.approx([expected[1].item()] * 2 + [0.0])
    assert trajs[2].samples[0].advantages == [0.0] * 5  # a group without spread: zero everywhere
    assert credit.selected == trajs
    assert credit.metrics["train/kept_episode_fraction"] == 1.0
    assert "train/shaping_bonus" not in credit.metrics


def test_assign_credit_starpo_s_keeps_the_groups_with_spread() -> None:
    trajs = [_episode(0, 0, [1.0]), _episode(0, 0, [0.0]), _episode(1, 1, [0.5]), _episode(1, 1, [0.5])]
    credit = assign_credit(trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(keep_group_fraction=0.5))
    assert credit.selected == trajs[:2]
    assert credit.metrics["train/kept_episode_fraction"] == 0.5


def _with_success(traj: Trajectory, success: bool) -> Trajectory:
    traj.success = success
    return traj


def test_assign_credit_mixed_success_only_drops_groups_that_all_solved_or_all_failed() -> None:
    # Returns: group 0 solved (10.9) vs failed (-0.2): std 7.85; group 1 both solved, in 1 and 3
    # moves (10.9 vs 10.7, a spread from the per-move cost alone): std 0.14; group 2 both failed
    # (-0.1 vs -1.1): std 0.71.
    trajs = [
        _with_success(_episode(0, 0, [10.9]), True),
        _with_success(_episode(0, 0, [-0.1, -0.1]), False),
        _with_success(_episode(1, 1, [10.9]), True),
        _with_success(_episode(1, 1, [-0.1, -0.1, 10.9]), True),
        _with_success(_episode(2, 2, [-0.1]), False),
        _with_success(_episode(2, 2, [-0.1, -1.0]), False),
    ]
    credit = assign_credit(trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(mixed_success_only=True))
    assert credit.selected == trajs[:2]
    assert credit.metrics["train/kept_episode_fraction"] == pytest.approx(2 / 6)
    # The filter picks episodes; it does not change advantages: group 1's are still +-0.7071.
    assert trajs[2].samples[0].advantages[2] == pytest.approx(0.7071, abs=1e-3)
    # StarPO-S alone at 0.34 keeps ceil(1.02) = 2 groups by spread: 0 and 2 (a group that only
    # failed); with the mixed filter too, an episode trains only if its group passes both.
    spread_only = assign_credit(
        trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(keep_group_fraction=0.34)
    )
    assert spread_only.selected == [trajs[0], trajs[1], trajs[4], trajs[5]]
    both = assign_credit(
        trajs,
        AdvantageParams(),
        ShapingParams(),
        EpisodeFilter(keep_group_fraction=0.34, mixed_success_only=True),
    )
    assert both.selected == trajs[:2]
    # min_return_spread 0.5 widens the mixed filter to group 2 (both failed, spanning 1.0), not
    # group 1 (both solved, spanning 0.2).
    wider = assign_credit(
        trajs,
        AdvantageParams(),
        ShapingParams(),
        EpisodeFilter(mixed_success_only=True, min_return_spread=0.5),
    )
    assert wider.selected == trajs[:2] + trajs[4:]


def test_assign_credit_faithful_only_never_pulls_up_a_success_its_thought_did_not_earn() -> None:
    # Group 0, returns 10, 10, 0: mean 6.6667, unbiased std sqrt((2 * 3.3333^2 + 6.6667^2) / 2)
    # = 5.7735, so A = +0.5774, +0.5774, -1.1547 over the episodes' every turn. Episode 1's second
    # turn made moves its thought did not name: its +0.5774 becomes 0 on both turns, and with
    # positive_advantage_only it leaves the update; episode 2's failure keeps its -1.1547.
    trajs = [_episode(0, 0, [10.0]), _episode(0, 0, [0.0, 10.0]), _episode(0, 0, [0.0])]
    for traj in trajs:
        traj.success = traj.reward > 0
        for turn in traj.turns:
            turn.follows_thought = True
    trajs[1].turns[1].follows_thought = False
    trajs[2].turns[0].follows_thought = None  # not judged: counts as faithful
    credit = assign_credit(trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(faithful_only=True))
    assert trajs[0].samples[0].advantages[2:4] == pytest.approx([0.5774] * 2, abs=1e-4)
    assert trajs[1].samples[0].advantages == [0.0] * 8
    assert trajs[2].samples[0].advantages[2:4] == pytest.approx([-1.1547] * 2, abs=1e-4)
    assert credit.selected == trajs
    assert credit.metrics["train/unfaithful_success_fraction"] == pytest.approx(1 / 2)
    assert credit.metrics["train/judged_turn_fraction"] == pytest.approx(3 / 4)  # of 4 turns, 1 unjudged
    both = assign_credit(
        trajs,
        AdvantageParams(),
        ShapingParams(),
        EpisodeFilter(faithful_only=True, positive_advantage_only=True),
    )
    assert both.selected == [trajs[0]]
    # A turn that ignored its thought pushed down, its episode kept although nothing else of it trains;
    # the failure (not judged) is still zeroed and dropped by positive_advantage_only.
    down = EpisodeFilter(faithful_only=True, positive_advantage_only=True, unfaithful_turn_advantage=-1.0)
    pushed = assign_credit(trajs, AdvantageParams(), ShapingParams(), down)
    assert pushed.selected == trajs[:2]
    assert trajs[1].samples[0].advantages == [0, 0, 0, 0, 0, -1.0, -1.0, 0]
    assert trajs[0].samples[0].advantages[2:4] == pytest.approx([0.5774] * 2, abs=1e-4)
    # Off, the unfaithful success is pulled up like the other; the metric still counts it.
    off = assign_credit(trajs, AdvantageParams(), ShapingParams())
    assert trajs[1].samples[0].advantages[5:7] == pytest.approx([0.5774] * 2, abs=1e-4)
    assert off.metrics["train/unfaithful_success_fraction"] == pytest.approx(1 / 2)
    # No turn judged (an env without the judge): no metric, and the filter changes nothing.
    for traj in trajs:
        for turn in traj.turns:
            turn.follows_thought = None
    plain = assign_credit(trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(faithful_only=True))
    assert "train/unfaithful_success_fraction" not in plain.metrics
    assert trajs[1].samples[0].advantages[2:4] == pytest.approx([0.5774] * 2, abs=1e-4)


def test_assign_credit_readmits_a_dropped_episode_for_its_pushed_down_turn_alone() -> None:
    # Group 0 solved twice, in 1 and 2 moves (10.9 vs 10.8: a spread from the step cost alone),
    # so mixed_success_only drops it; episode 1's second turn ignored its thought. Pushed down to
    # -1, that turn trains; its first turn (estimator: -0.7071) and episode 0 (+0.7071) do not.
    trajs = [_episode(0, 0, [10.9]), _episode(0, 0, [-0.1, 10.9])]
    for traj in trajs:
        traj.success = True
    trajs[1].turns[1].follows_thought = False
    down = EpisodeFilter(mixed_success_only=True, unfaithful_turn_advantage=-1.0)
    credit = assign_credit(trajs, AdvantageParams(), ShapingParams(), down)
    assert credit.selected == [trajs[1]]
    assert trajs[1].samples[0].advantages == [0, 0, 0, 0, 0, -1.0, -1.0, 0]
    # An episode the context ended before its first reply (no turn, one placeholder row) is judged
    # nothing and breaks nothing.
    empty = _episode(0, 0, [])
    empty.success = False
    credit = assign_credit([*trajs, empty], AdvantageParams(), ShapingParams(), down)
    assert empty.samples[0].advantages == [0.0, 0.0]
    assert credit.metrics["train/unfaithful_success_fraction"] == pytest.approx(1 / 2)


def test_assign_credit_positive_advantage_only_trains_the_better_tries_alone() -> None:
    # Group 0, returns 10.9, 10.9, -0.2: mean 7.2, unbiased std sqrt((2 * 3.7^2 + 7.4^2) / 2) = 6.4086,
    # so A = +0.5774, +0.5774, -1.1547. Group 1, returns 1 and 0 over one and two turns: A = +-0.7071.
    trajs = [
        _episode(0, 0, [10.9]),
        _episode(0, 0, [-0.1, 11.0]),
        _episode(0, 0, [-0.1, -0.1]),
        _episode(1, 1, [1.0]),
        _episode(1, 1, [0.0, 0.0]),
    ]
    credit = assign_credit(
        trajs, AdvantageParams(), ShapingParams(), EpisodeFilter(positive_advantage_only=True)
    )
    assert credit.selected == [trajs[0], trajs[1], trajs[3]]
    assert credit.metrics["train/kept_episode_fraction"] == pytest.approx(3 / 5)
    assert trajs[1].samples[0].advantages == pytest.approx(
        [0, 0, 0.5774, 0.5774, 0, 0.5774, 0.5774, 0], abs=1e-4
    )
    assert trajs[2].samples[0].advantages == [0.0] * 8  # -1.1547 zeroed
    assert trajs[3].samples[0].advantages[2] == pytest.approx(0.7071, abs=1e-4)
    # The advantage metric is the estimator's, before the clamp: mean |A| over the 8 turns.
    mean_abs = (3 * 0.5774 + 2 * 1.1547 + 3 * 0.7071) / 8
    assert credit.metrics["train/advantage_abs_mean"] == pytest.approx(mean_abs, abs=1e-3)
    # With GiGPO a turn of a failed episode can beat its step group, and only that turn trains.
    # Returns 9.9, -0.2, -1.1: episode A = (R - 2.867) / 6.107 = +1.152, -0.502, -0.650. Turn 0 (all
    # three saw "o0") adds the same again; episodes 1 and 2 reach one second state ("o1"), from where
    # they got -0.1 and -1.0: step A = +-0.7071. Episode 1's turn 1: -0.502 + 0.707 = +0.205.
    gig = [_episode(0, 0, [-0.1, 10.0]), _episode(0, 0, [-0.1, -0.1]), _episode(0, 0, [-0.1, -1.0])]
    gig[0].turns[1].observation = "o-solved"
    credit = assign_credit(
        gig, AdvantageParams(estimator="gigpo"), ShapingParams(), EpisodeFilter(positive_advantage_only=True)
    )
    assert credit.selected == [gig[0], gig[1]]
    assert gig[1].samples[0].advantages == pytest.approx([0, 0, 0, 0, 0, 0.205, 0.205, 0], abs=1e-3)
    assert gig[2].samples[0].advantages == [0.0] * 8


def test_advantage_balance_script_leans_negative_under_token_mean_when_failures_are_longer(
    tmp_path, load_script
):
    from agentrl.rollout.trajectory import write_jsonl

    script = load_script("advantage_balance")
    # One group: solved in one turn (2 sampled tokens, A = +0.7071), failed over two (4, A = -0.7071).
    # token_mean: (2 - 4) * 0.7071 / (6 * 0.7071) = -1/3; seq_mean: (0.7071 - 0.7071) / 1.41 = 0.
    trajs = [_with_success(_episode(0, 0, [10.9]), True), _with_success(_episode(0, 0, [-0.1, -0.1]), False)]
    write_jsonl(tmp_path / "trajectories" / "step_000001.jsonl", trajs)
    n, token_mean, seq_mean = script.balance(tmp_path, 1, EpisodeFilter(mixed_success_only=True))
    assert n == 2
    assert token_mean == pytest.approx(-1 / 3, abs=1e-4)
    assert seq_mean == pytest.approx(0.0, abs=1e-6)
