"""Knights and Knaves env: checker, seeding, uniqueness of every puzzle, the tolerant parser, rewards."""

from __future__ import annotations

# agentrl before agentrl_envs: importing agentrl_envs first runs agentrl's plugin loader while
# agentrl_envs is half-imported, and the built-in envs would not get registered.
import agentrl  # isort: skip
import itertools
import random
import time

import numpy as np
import pytest
from agentrl_envs.knights_knaves import KnightsKnavesEnv, evaluate, parse_answer, render_statement

from agentrl.envs.env import HOSTILE_ACTIONS


def test_check_env_passes():
    agentrl.check_env(lambda: agentrl.make("knights_knaves"))


def test_same_seed_same_puzzle_and_seeds_vary():
    assert KnightsKnavesEnv().reset(seed=4) == KnightsKnavesEnv().reset(seed=4)
    texts = {KnightsKnavesEnv().reset(seed=s)[0] for s in range(20)}
    assert len(texts) == 20


def test_global_random_state_untouched():
    random.seed(1)
    np.random.seed(1)
    state, np_state = random.getstate(), np.random.get_state()[1].copy()
    env = KnightsKnavesEnv(n_people=5)
    for s in range(5):
        env.reset(seed=s)
    assert random.getstate() == state and (np.random.get_state()[1] == np_state).all()


def _brute_force(statements, n):
    # Independent of the env's solver: re-derive the consistent assignments here.
    return [
        k
        for k in itertools.product((True, False), repeat=n)
        if all(evaluate(s, k) == k[i] for i, s in enumerate(statements))
    ]


@pytest.mark.parametrize("n_people", range(2, 9))
def test_every_puzzle_has_exactly_one_solution_and_oracle_wins(n_people):
    env = KnightsKnavesEnv()
    for seed in range(25):
        obs, info = env.reset(seed=seed, options={"n_people": n_people})
        assert len(info["names"]) == n_people == len(set(info["names"]))
        found = _brute_force(env.statements, n_people)
        assert len(found) == 1
        assert [("knight" if k else "knave") for k in found[0]] == info["solution"]
        for name, statement in zip(info["names"], env.statements):
            assert statement_mentions_only_others(statement, info["names"].index(name))
            assert sides_are_about_different_people(statement)
        assert all(s in obs for s in info["statements"])
        _, reward, terminated, truncated, step_info = env.step(env.oracle_actions()[0])
        assert (reward, terminated, truncated) == (2.0, True, False)
        assert step_info["success"] and step_info["action_is_valid"]


def statement_mentions_only_others(statement, speaker):
    # Only at the top level: "I am a knave and Noah is a knight" is fine, a bare "I am a knight" not.
    return statement[0] != "is" or statement[1] != speaker


def people(statement):
    return {statement[1]} if statement[0] == "is" else set().union(*(people(s) for s in statement[1:]))


def sides_are_about_different_people(statement):
    if statement[0] == "is":
        return True
    if statement[0] != "not" and not people(statement[1]).isdisjoint(people(statement[2])):
        return False
    return all(sides_are_about_different_people(s) for s in statement[1:])


def test_statement_depth_bounded():
    def depth(s):
        return 0 if s[0] == "is" else 1 + max(depth(x) for x in s[1:])

    env = KnightsKnavesEnv(n_people=4)
    for seed in range(30):
        env.reset(seed=seed)
        assert all(depth(s) <= 2 for s in env.statements)


def test_rendering():
    names = ["Mia", "Noah", "Emma"]
    s = ("and", ("is", 1, True), ("or", ("is", 2, False), ("not", ("is", 1, False))))
    text = render_statement(s, names)
    assert text == "Noah is a knight and (Emma is a knave or (it is not the case that Noah is a knave))"
    assert render_statement(("and", ("is", 0, False), ("is", 1, True)), names, speaker=0) == (
        "I am a knave and Noah is a knight"
    )
    assert render_statement(("implies", ("is", 0, True), ("is", 2, True)), names) == (
        "if Mia is a knight then Emma is a knight"
    )
    assert render_statement(("iff", ("is", 0, True), ("is", 2, False)), names) == (
        "Mia is a knight if and only if Emma is a knave"
    )


def test_parser_is_tolerant():
    names = ["Mia", "Noah", "Emma"]
    want = [True, False, True]
    for text in [
        "(1) Mia is a knight\n(2) Noah is a knave\n(3) Emma is a knight",
        "mia is a KNIGHT, noah is a knave, emma is a knight.",
        "Mia: knight\nNoah: knave\nEmma: knight",
        "Noah - Knave. Emma = knight; Mia is an knight",
        "1. Mia was a knight 2. Noah was a knave 3. Emma was a knight",
        "Mia is a knight\nMia is a knight\nNoah is a knave\nEmma is a knight",  # consistent repeat
    ]:
        assert parse_answer(text, names) == want, text


def test_parser_rejects_incomplete_or_conflicting():
    names = ["Mia", "Noah", "Emma"]
    for text in [
        "",
        "Mia is a knight\nNoah is a knave",  # Emma missing
        "Mia is a knight\nMia is a knave\nNoah is a knave\nEmma is a knight",  # conflict
        "Mia is not a knight, Noah is a knave, Emma is a knight",  # negation is not guessed at
        "Mianoah is a knight",
        "Mia is a knight " * 2000,
    ]:
        assert parse_answer(text, names) is None, text[:60]


def test_rewards_exact_values():
    env = KnightsKnavesEnv()
    _, info = env.reset(seed=7)
    names, solution = info["names"], info["solution"]
    flipped = ["knave" if r == "knight" else "knight" for r in solution]
    wrong = "\n".join(f"({i + 1}) {n} is a {r}" for i, (n, r) in enumerate(zip(names, flipped)))
    _, reward, _, _, step_info = env.step(wrong)
    assert reward == -1.5 and not step_info["success"] and step_info["action_is_valid"]
    assert step_info["num_correct"] == 0
    _, reward, _, _, step_info = env.step("I do not know")
    assert reward == -2.0 and not step_info["action_is_valid"]
    assert env.step(env.oracle_actions()[0])[1] == 2.0


def test_reward_values_configurable():
    env = KnightsKnavesEnv(reward_correct=1.0, reward_wrong=0.0, reward_unparsable=-1.0)
    env.reset(seed=0)
    assert env.step(env.oracle_actions()[0])[1] == 1.0
    assert env.step("?")[1] == -1.0 and env.invalid_action_penalty == -1.0


@pytest.mark.parametrize("action", HOSTILE_ACTIONS)
def test_hostile_actions_bounded(action):
    env = KnightsKnavesEnv(n_people=8)
    env.reset(seed=0)
    start = time.perf_counter()
    _, reward, terminated, _, info = env.step(action)
    assert time.perf_counter() - start < 0.5
    assert terminated and reward == -2.0 and not info["action_is_valid"]


def test_bad_n_people():
    with pytest.raises(ValueError):
        KnightsKnavesEnv(n_people=9)
    with pytest.raises(ValueError):
        KnightsKnavesEnv().reset(seed=0, options={"n_people": 1})


def test_check_assignment_hand_written():
    from agentrl_envs.knights_knaves import check_assignment

    statements = [("is", 1, False), ("or", ("is", 0, True), ("is", 1, True))]
    names = ["Mia", "Noah"]
    # Mia says "Noah is a knave"; Noah says "I am a knight or ...": with Mia knight, Noah knave,
    # Mia's claim is true and Noah's "Mia is a knight or Noah is a knight" is true: a knave can't say it.
    assert check_assignment(statements, names, (True, False)) == (
        "Suppose Mia is a knight and Noah is a knave. Mia says Noah is a knave: true, which fits a knight. "
        "Noah says Mia is a knight or Noah is a knight: true, which a knave cannot say."
    )


def test_oracle_thought_checks_the_solution_and_never_contradicts_it():
    from agentrl_envs.knights_knaves import KnightsKnavesEnv

    env = KnightsKnavesEnv(n_people=3)
    for seed in range(20):
        env.reset(seed=seed)
        thought = env.oracle_thought()
        assert "cannot say" not in thought  # the solution satisfies every statement
        assert thought.count(" says ") == 3
        for name, knight in zip(env.names, env.solution):
            assert f"{name} is a {'knight' if knight else 'knave'}" in thought.split(".")[0]
