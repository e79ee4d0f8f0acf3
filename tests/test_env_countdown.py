"""Countdown env: checker, seeding, the safe evaluator, the solver and the exact rewards."""

from __future__ import annotations

# agentrl before agentrl_envs: importing agentrl_envs first runs agentrl's plugin loader while
# agentrl_envs is half-imported, and the built-in envs would not get registered.
import agentrl  # isort: skip
import random
import time
from fractions import Fraction

import gymnasium
import numpy as np
import pytest
from agentrl_envs.countdown import (
    CountdownEnv,
    InvalidExpression,
    evaluate_expression,
    parse_expression,
    solve,
)

from agentrl.envs.env import HOSTILE_ACTIONS


def test_check_env_passes():
    agentrl.check_env(lambda: agentrl.make("countdown"))


def test_gymnasium_make_after_import_agentrl():
    env = gymnasium.make("agentrl/Countdown-v0")
    obs, info = env.reset(seed=3)
    assert isinstance(obs, str) and str(info["target"]) in obs


def test_same_seed_same_puzzle_and_seeds_vary():
    a, b = CountdownEnv(), CountdownEnv()
    assert a.reset(seed=11) == b.reset(seed=11)
    puzzles = {tuple(CountdownEnv().reset(seed=s)[1]["numbers"]) for s in range(20)}
    assert len(puzzles) > 15


def test_global_random_state_untouched():
    random.seed(5)
    np.random.seed(5)
    before = (random.getstate(), np.random.get_state()[1].copy())
    env = CountdownEnv()
    for s in range(5):
        env.reset(seed=s)
        env.step(env.oracle_actions()[0])
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()


def test_generated_puzzles_within_ranges_and_oracle_wins():
    env = CountdownEnv()
    for seed in range(200):
        _, info = env.reset(seed=seed)
        assert 3 <= len(info["numbers"]) <= 4
        assert all(1 <= x <= 99 for x in info["numbers"])
        assert 10 <= info["target"] <= 100 and info["solvable"]
        (answer,) = env.oracle_actions()
        _, reward, terminated, truncated, step_info = env.step(answer)
        assert reward == 1.0 and terminated and not truncated
        assert step_info["success"] and step_info["action_is_valid"]


def test_configurable_sizes_and_ranges():
    env = CountdownEnv(num_numbers=5, number_range=(1, 20), target_range=(50, 60))
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert len(info["numbers"]) == 5 and all(1 <= x <= 20 for x in info["numbers"])
        assert 50 <= info["target"] <= 60
        assert env.step(env.oracle_actions()[0])[1] == 1.0
    with pytest.raises(ValueError):
        CountdownEnv(num_numbers=9)


def test_rewards_exact_values():
    env = CountdownEnv()
    env.reset(options={"numbers": [3, 5, 2], "target": 16})
    cases = {
        "(3 + 5) * 2": (1.0, True, True, "correct"),
        "2 * (5 + 3) = 16": (1.0, True, True, "correct"),
        "3 + 5 + 2": (0.1, False, True, "wrong_value"),
        "(3 + 5) * 2 + 0": (0.1, False, False, "wrong_numbers"),
        "8 * 2": (0.1, False, False, "wrong_numbers"),
        "2**3": (0.0, False, False, "unparsable"),
        "3 / (5 - 5) * 2": (0.0, False, False, "unparsable"),
        "sixteen": (0.0, False, False, "unparsable"),
        "": (0.0, False, False, "unparsable"),
    }
    for action, (reward, success, valid, reason) in cases.items():
        _, r, _, _, info = env.step(action)
        assert (r, info["success"], info["action_is_valid"], info["reason"]) == (
            reward,
            success,
            valid,
            reason,
        ), action


def test_reward_values_configurable():
    env = CountdownEnv(reward_correct=2.0, reward_format=-0.25, reward_unparsable=-1.0)
    env.reset(options={"numbers": [3, 5, 2], "target": 16})
    assert env.step("(3 + 5) * 2")[1] == 2.0
    assert env.step("3 + 5 + 2")[1] == -0.25
    assert env.step("nope")[1] == -1.0
    assert env.invalid_action_penalty == -1.0


def test_options_unsolvable_puzzle():
    env = CountdownEnv()
    _, info = env.reset(options={"numbers": [1, 1], "target": 97})
    assert not info["solvable"] and env.oracle_actions() is None


def test_evaluator_hand_computed():
    assert evaluate_expression("(3 + 5) * 2") == 16
    assert evaluate_expression("7/2") == Fraction(7, 2)
    assert evaluate_expression("6 / 4 * 2") == 3
    assert evaluate_expression("-(3 - 10)") == 7
    assert evaluate_expression("10 - 2 - 3") == 5
    assert parse_expression("(3 + 5) * 2")[1] == [3, 5, 2]
    for bad in [
        "2**3",
        "1/0",
        "7//2",
        "3.5 + 1",
        "abs(-3)",
        "x + 1",
        "3 +",
        "()",
        "1e3",
        "True",
        "007 + 1",
        "2 ^ 3",
    ]:
        with pytest.raises(InvalidExpression):
            evaluate_expression(bad)


def test_numbers_must_match_as_multiset():
    env = CountdownEnv()
    env.reset(options={"numbers": [3, 4], "target": 6})
    _, reward, _, _, info = env.step("3+3")
    assert reward == 0.1 and not info["action_is_valid"] and info["reason"] == "wrong_numbers"
    env.reset(options={"numbers": [3, 3], "target": 6})
    assert env.step("3+3")[1] == 1.0


def test_solver():
    expr = solve([3, 5, 2], 16)
    assert expr is not None and evaluate_expression(expr) == 16
    assert solve([1, 1], 97) is None
    assert evaluate_expression(solve([8, 4], 2)) == 2  # only exact division reaches 2
    assert solve([2, 3], 7) is None  # 5, 6, 1 are all that two numbers give
    assert solve([7, 2], 3) is None  # 7 / 2 is not integral, so not allowed mid-way


@pytest.mark.parametrize(
    "action", [*HOSTILE_ACTIONS, "(" * 100 + "1" + ")" * 100, "1" * 300, "-" * 200 + "1"]
)
def test_hostile_actions_bounded(action):
    env = CountdownEnv()
    env.reset(seed=0)
    start = time.perf_counter()
    _, reward, terminated, _, info = env.step(action)
    assert time.perf_counter() - start < 0.5
    assert terminated and not info["success"] and not info["action_is_valid"]
    assert reward in (0.0, 0.1)


def test_deep_nesting_never_raises():
    env = CountdownEnv()
    env.reset(seed=0)
    # Below the length cap but deep enough to trouble a recursive parser: rejected by the depth cap.
    assert env.step("(" * 120 + "1" + ")" * 120)[1] == 0.0


def test_solution_steps_hand_computed():
    from agentrl_envs.countdown import solution_steps

    assert solution_steps("(60 - 52) + 84") == ["60 - 52 = 8", "8 + 84 = 92"]
    assert solution_steps("8 / (3 - 1) * 5 = 20") == ["3 - 1 = 2", "8 / 2 = 4", "4 * 5 = 20"]
    assert solution_steps("7 / 2") == ["7 / 2 = 7/2"]
    assert solution_steps("5") == []


def test_oracle_thought_shows_the_arithmetic_of_the_answer():
    from agentrl_envs.countdown import CountdownEnv, evaluate_expression, solution_steps

    env = CountdownEnv()
    env.reset(seed=3)
    (answer,) = env.oracle_actions()
    thought = env.oracle_thought()
    assert thought.startswith(f"I need {env.target} from ")
    for step in solution_steps(answer):
        assert step in thought
    assert thought.endswith(f"= {env.target}.") and evaluate_expression(answer) == env.target
