"""Reward shaping against hand-computed numbers (arithmetic in the comments); one end-to-end run of
the cosine length reward through `agentrl train`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agentrl.algorithms.rewards import (
    ShapingParams,
    cosine_length_reward,
    length_penalty,
    reasoning_behaviour_counts,
    repetition_penalty,
    shaping_bonus,
)


def test_repetition_penalty() -> None:
    # "a b c a b c", trigrams: abc, bca, cab, abc -> 4 in all, 3 distinct -> share 1 - 3/4 = 0.25
    assert repetition_penalty("a b c a b c", ngram=3, max_penalty=-1.0) == pytest.approx(-0.25)
    # lower-cased: "A a a a" -> trigrams aaa, aaa -> 1 - 1/2 = 0.5; times -2 = -1
    assert repetition_penalty("A a a a", ngram=3, max_penalty=-2.0) == pytest.approx(-1.0)
    # bigrams of "x y x y x": xy, yx, xy, yx -> 1 - 2/4 = 0.5
    assert repetition_penalty("x y\nx  y x", ngram=2) == pytest.approx(-0.5)
    assert repetition_penalty("all words differ here", ngram=3) == 0.0
    assert repetition_penalty("too short", ngram=3) == 0.0
    assert repetition_penalty("", ngram=3) == 0.0


def test_length_penalty() -> None:
    # lengths 10, 20, 30, 10: min 10, max 30 -> lam = 0.5 - (len - 10)/20 = 0.5, 0, -0.5, 0.5
    # correct T, T, F, F -> 0.5, 0, min(0, -0.5) = -0.5, min(0, 0.5) = 0; times weight 0.2
    out = length_penalty(torch.tensor([10, 20, 30, 10]), torch.tensor([True, True, False, False]), 0.2)
    assert torch.allclose(out, torch.tensor([0.1, 0.0, -0.1, 0.0]))
    # all lengths equal -> zeros
    same = length_penalty(torch.tensor([7, 7]), torch.tensor([True, False]), 1.0)
    assert same.tolist() == [0.0, 0.0]
    assert length_penalty(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 1.0).shape == (0,)


def test_reasoning_behaviour_counts() -> None:
    text = (
        "Wait, let me recheck. Step 1: first push up. Then, finally... Let's check again; "
        "double-check. Waiting is not a reflection word, nor is 'thenceforth' or 'nextgen'. STEP 2 next"
    )
    # reflection: Wait, recheck, Let's check, double-check = 4 ("Waiting" is not whole-word "wait")
    # step: Step 1, first, Then, finally, STEP 2, next = 6 ("thenceforth", "nextgen" are not)
    assert reasoning_behaviour_counts(text) == {"reflection": 4, "step": 6}
    assert reasoning_behaviour_counts("") == {"reflection": 0, "step": 0}
    assert reasoning_behaviour_counts("Hmm, re-evaluate and try again") == {"reflection": 2, "step": 0}


def test_shaping_bonus() -> None:
    replies = ["a b c a b c", "x y z", "p q r", "u v w u v w u v w"]
    lengths = torch.tensor([10, 20, 5, 5])
    correct = torch.tensor([True, True, False, True])
    group = torch.tensor([0, 0, 1, 1])
    params = ShapingParams(repetition_ngram=3, repetition_max_penalty=-1.0, length_weight=1.0)
    # repetition: ep0 -0.25 (above); ep1 0; ep2 0;
    #   ep3 trigrams uvw vwu wuv uvw vwu wuv uvw = 7, 3 distinct -> -(1 - 3/7) = -4/7
    # length, group 0: lengths 10, 20 -> lam 0.5, -0.5, both correct -> 0.5, -0.5
    #         group 1: lengths 5, 5 -> all equal -> 0
    out = shaping_bonus(replies, lengths, correct, group, params)
    assert torch.allclose(out, torch.tensor([-0.25 + 0.5, -0.5, 0.0, -4 / 7]))
    off = shaping_bonus(replies, lengths, correct, group, ShapingParams())
    assert off.tolist() == [0.0] * 4
    assert not ShapingParams().enabled and params.enabled
    with pytest.raises(ValueError):
        shaping_bonus(replies[:3], lengths, correct, group, params)


def test_shaping_params_validation() -> None:
    assert not ShapingParams().enabled
    with pytest.raises(ValueError):
        ShapingParams(repetition_max_penalty=1.0)
    with pytest.raises(ValueError):
        ShapingParams(length_weight=-1.0)
    with pytest.raises(ValueError):
        ShapingParams(repetition_ngram=0)


# ------------------------------------------------------------------------------------------------
# Cosine length reward (Yeo et al. 2025): r = end + (start - end) * (1 + cos(pi L / L_max)) / 2
# ------------------------------------------------------------------------------------------------


def test_cosine_length_reward_by_hand() -> None:
    lengths = torch.tensor([0, 25, 50, 75, 99, 100, 150])
    # L_max = 100. cos(0) = 1, cos(pi/4) = 0.70711, cos(pi/2) = 0, cos(3pi/4) = -0.70711,
    # cos(0.99 pi) = -0.99951; L >= 100: the exceed penalty.
    # correct (start 2, end 1): 1 + 0.5 * 1 * (1 + c) -> 2, 1.85355, 1.5, 1.14645, 1.00025, -10, -10
    correct = cosine_length_reward(lengths, torch.ones(7, dtype=torch.bool), 100)
    expected = [2.0, 1.853553, 1.5, 1.146447, 1.000247, -10.0, -10.0]
    assert correct.tolist() == pytest.approx(expected, abs=1e-5)
    # wrong (start -10, end 0): 0 + 0.5 * -10 * (1 + c) -> -10, -8.53553, -5, -1.46447, -0.00247, -10, -10
    wrong = cosine_length_reward(lengths, torch.zeros(7, dtype=torch.bool), 100)
    assert wrong.tolist() == pytest.approx(
        [-10.0, -8.535534, -5.0, -1.464466, -0.002467, -10.0, -10.0], abs=1e-5
    )
    # Correct prefers short, wrong prefers long (strictly, below L_max).
    assert (correct[:5].diff() < 0).all() and (wrong[:5].diff() > 0).all()
    # Other values: start 1, end 0.5, exceed -1 at L_max = 8; L = 4 -> 0.75, L = 8 -> -1.
    custom = cosine_length_reward(
        torch.tensor([4, 8]), torch.tensor([True, True]), 8, 1.0, 0.5, -1.0, -0.5, -1.0
    )
    assert custom.tolist() == pytest.approx([0.75, -1.0])
    assert custom.dtype == torch.float32


def test_cosine_length_reward_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="L_max"):
        cosine_length_reward(torch.tensor([1]), torch.tensor([True]), 0)
    with pytest.raises(ValueError, match="L_max"):
        cosine_length_reward(torch.tensor([1]), torch.tensor([True]), -5)
    with pytest.raises(ValueError, match="must both be"):
        cosine_length_reward(torch.tensor([1, 2]), torch.tensor([True]), 10)


def test_cosine_in_shaping_bonus_and_its_params() -> None:
    replies = ["a", "b", "c", "d"]
    lengths = torch.tensor([0, 8, 16, 4])
    correct = torch.tensor([True, True, False, False])
    group = torch.tensor([0, 0, 1, 1])
    params = ShapingParams(cosine=True)
    assert params.enabled and (params.cosine_correct_start, params.cosine_correct_end) == (2.0, 1.0)
    assert (params.cosine_wrong_start, params.cosine_wrong_end, params.cosine_exceed_penalty) == (
        -10.0,
        0.0,
        -10.0,
    )
    # L_max from the caller (the step's reply budget) = 16: 0 -> 2; 8 = L_max/2 -> 1.5; 16 -> -10;
    # wrong at 4 = L_max/4 -> -8.53553.
    out = shaping_bonus(replies, lengths, correct, group, params, max_tokens=16)
    assert out.tolist() == pytest.approx([2.0, 1.5, -10.0, -8.535534], abs=1e-5)
    # shaping.cosine_max_tokens wins over the caller's budget: L_max = 32 -> 8 is L_max/4: 1.85355.
    fixed = ShapingParams(cosine=True, cosine_max_tokens=32)
    assert shaping_bonus(replies, lengths, correct, group, fixed, max_tokens=16)[1].item() == pytest.approx(
        1.853553
    )
    # Summed with the other terms: Kimi length weight 1, group 0 lengths 0, 8 -> lam 0.5, -0.5.
    both = ShapingParams(cosine=True, length_weight=1.0)
    assert shaping_bonus(replies, lengths, correct, group, both, max_tokens=16).tolist()[:2] == pytest.approx(
        [2.5, 1.0]
    )
    with pytest.raises(ValueError, match="cosine_max_tokens"):
        shaping_bonus(replies, lengths, correct, group, params)  # no L_max from anywhere


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cosine_max_tokens": 0}, "cosine_max_tokens (L_max) must be a positive number"),
        ({"cosine_max_tokens": -8}, "cosine_max_tokens (L_max) must be a positive number"),
        ({"cosine_wrong_end": 1.5}, "must both be above"),  # a long wrong reply would beat a long correct one
        ({"cosine_correct_end": -20.0}, "must both be above"),
    ],
)
def test_cosine_params_validation(kwargs, message) -> None:
    with pytest.raises(ValueError, match=None) as info:
        ShapingParams(**kwargs)
    assert message in str(info.value)


def test_cosine_reward_end_to_end_follows_the_stage_budget(tmp_path) -> None:
    """`agentrl train` with shaping.cosine: each step's logged bonus is the formula on its episodes'
    lengths, with L_max the stage's reply budget (8 tokens, then a stage's 4)."""
    import test_curriculum  # noqa: F401  (registers test_options: success = the reset option `succeed`)
    from envs_for_tests import tiny_run_args

    from agentrl.cli import main
    from agentrl.rollout.trajectory import read_jsonl

    stages = "[{steps: 1, env_options: {succeed: true}}, {steps: 1, env_options: {succeed: false}, rollout: {max_new_tokens: 4}}]"
    args = tiny_run_args(
        "test_options", "cosine", tmp_path, "algo.shaping.cosine=true", f"curriculum.stages={stages}"
    )
    assert main(["train", *args]) == 0
    run = tmp_path / "cosine"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row, l_max in zip(rows, (8, 4)):
        trajs, _ = read_jsonl(run / "trajectories" / f"step_{row['step']:06d}.jsonl")
        expected = []
        for t in trajs:
            n = t.num_sampled_tokens
            assert 0 < n <= l_max
            start, end = (2.0, 1.0) if t.success else (-10.0, 0.0)
            expected.append(
                -10.0 if n >= l_max else end + 0.5 * (start - end) * (1 + math.cos(math.pi * n / l_max))
            )
        assert row["train/shaping_bonus"] == pytest.approx(sum(expected) / len(expected), abs=1e-5)
        assert row["curriculum/max_new_tokens"] == l_max
    assert [t.success for t in read_jsonl(run / "trajectories" / "step_000001.jsonl")[0]] == [True] * 4
