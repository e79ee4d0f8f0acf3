"""Reward shaping against hand-computed numbers (arithmetic in the comments)."""

from __future__ import annotations

import pytest
import torch

from agentrl.rewards import (
    ShapingParams,
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
    assert ShapingParams().format_penalty == -0.1
    with pytest.raises(ValueError):
        ShapingParams(repetition_max_penalty=1.0)
    with pytest.raises(ValueError):
        ShapingParams(length_weight=-1.0)
    with pytest.raises(ValueError):
        ShapingParams(repetition_ngram=0)
