"""Math env: checker, seeding, generator levels, answer extraction, math-verify equivalence, data files."""

from __future__ import annotations

# agentrl before agentrl_envs: importing agentrl_envs first runs agentrl's plugin loader while
# agentrl_envs is half-imported, and the built-in envs would not get registered.
import agentrl  # isort: skip
import json
import random
import threading
import time

import numpy as np
import pytest
from agentrl_envs.math_env import MathEnv, extract_answer, extract_boxed, load_problems, refusal_reason
from agentrl_envs.math_problems import LEVELS, generate_problem

from agentrl.env import HOSTILE_ACTIONS


def test_check_env_passes():
    agentrl.check_env(lambda: agentrl.make("math"))


def test_same_seed_same_problem_and_seeds_vary():
    assert MathEnv().reset(seed=9) == MathEnv().reset(seed=9)
    problems = {MathEnv().reset(seed=s)[0] for s in range(30)}
    assert len(problems) > 25
    assert {MathEnv().reset(seed=s)[1]["level"] for s in range(40)} == set(LEVELS)


def test_global_random_state_untouched():
    random.seed(2)
    np.random.seed(2)
    state, np_state = random.getstate(), np.random.get_state()[1].copy()
    env = MathEnv()
    for s in range(8):
        env.reset(seed=s)
        env.step(env.oracle_actions()[0])
    assert random.getstate() == state and (np.random.get_state()[1] == np_state).all()


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_oracle_wins_on_every_level(level):
    env = MathEnv(level=level)
    for seed in range(25):
        _, info = env.reset(seed=seed)
        assert info["level"] == level and info["source"] == "generator"
        _, reward, terminated, truncated, step_info = env.step(env.oracle_actions()[0])
        assert (reward, terminated, truncated) == (1.0, True, False), info
        assert step_info["success"] and step_info["action_is_valid"]


def test_generator_answers_hand_checked():
    # Recompute a few answers from the problem text independently of the generator's arithmetic.
    rng = np.random.default_rng(0)
    for _ in range(30):
        problem, answer = generate_problem(rng, 1)
        expr = problem.removeprefix("Compute ").removesuffix(".")
        assert str(eval(expr)) == answer  # noqa: S307 - our own generated digits and + - * only


def test_equivalent_forms_of_one_half():
    env = MathEnv()
    env.reset(options={"problem": "What is one half?", "answer": "1/2"})
    for action in [
        "1/2",
        "0.5",
        "\\frac{1}{2}",
        "\\boxed{0.5}",
        "\\boxed{\\dfrac{1}{2}}",
        "So $x = \\boxed{\\frac12}$.",
    ]:
        _, reward, _, _, info = env.step(action)
        assert reward == 1.0 and info["success"], action
    env.reset(options={"problem": "What is one half?", "answer": "\\frac{1}{2}"})
    assert env.step("0.5")[1] == 1.0


def test_rewards_exact_values():
    env = MathEnv()
    env.reset(options={"problem": "2 + 2?", "answer": "4"})
    assert env.step("\\boxed{4}")[1:3] == (1.0, True)
    _, reward, _, _, info = env.step("\\boxed{5}")
    assert reward == -0.5 and info["action_is_valid"] and info["reason"] == "wrong"
    for action in ["", "   ", "\\boxed{}", "no idea"]:
        _, reward, _, _, info = env.step(action)
        assert reward == -1.0 and not info["action_is_valid"], action


def test_reward_values_configurable():
    env = MathEnv(reward_correct=2.0, reward_wrong=0.0, reward_no_answer=-3.0)
    env.reset(options={"problem": "2 + 2?", "answer": "4"})
    assert [env.step(a)[1] for a in ["4", "5", ""]] == [2.0, 0.0, -3.0]
    assert env.invalid_action_penalty == -3.0


def test_boxed_extraction_with_nested_braces():
    assert extract_boxed("x \\boxed{\\frac{1}{2}} y") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{1} then \\boxed{\\sqrt{\\frac{3}{4}}}") == "\\sqrt{\\frac{3}{4}}"
    assert extract_boxed("\\boxed{2} and a broken \\boxed{3") == "2"
    assert extract_boxed("no box") is None
    assert extract_answer("The answer is $\\boxed{7}$.") == ("7", True)
    assert extract_answer("  $42$ ") == ("42", False)
    env = MathEnv()
    env.reset(options={"problem": "?", "answer": "3/4"})
    assert env.step("first \\boxed{1}, finally \\boxed{\\frac{3}{4}}")[1] == 1.0
    assert env.step("first \\boxed{\\frac{3}{4}}, finally \\boxed{1}")[1] == -0.5


def test_symbolic_answers_from_options():
    env = MathEnv()
    env.reset(options={"problem": "Simplify sqrt(8)/2.", "answer": "\\sqrt{2}"})
    assert env.step("\\boxed{\\frac{2\\sqrt{2}}{2}}")[1] == 1.0
    assert env.step("\\boxed{\\sqrt{3}}")[1] == -0.5


def test_data_file(tmp_path):
    path = tmp_path / "probs.jsonl"
    records = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(5)]
    records.append({"problem": "Half?", "answer": 0.5, "source": "extra keys are fine"})
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    env = MathEnv(data_file=path)
    assert len(env.records) == 6 and env.records[5]["answer"] == "0.5"
    seen = set()
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        assert info["source"] == "file" and env.records[info["index"]]["problem"] == obs
        assert MathEnv(data_file=path).reset(seed=seed)[1]["index"] == info["index"]
        seen.add(info["index"])
        assert env.step(env.oracle_actions()[0])[1] == 1.0
    assert len(seen) == 6
    env2 = agentrl.make("math", data_file=str(path))
    assert env2.reset(seed=0)[1]["source"] == "file"


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "JSON object"),
        ('{"answer": "1"}', "'problem'"),
        ('{"problem": "p"}', "'answer'"),
        ('{"problem": "p", "answer": true}', "'answer'"),
    ],
)
def test_data_file_bad_record_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "ok", "answer": "1"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as exc:
        MathEnv(data_file=path)
    assert f"{path}:2" in str(exc.value)


def test_data_file_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no records"):
        load_problems(empty)


def test_refusal_screen():
    for risky in [
        "9^{9^{9}}",
        "9**9**9",
        "2^3^4",
        "10^{100000}",
        "1000000!",
        "5!!!",
        "(" * 20 + "1" + ")" * 20,
        "a\x00",
    ]:
        assert refusal_reason(risky, 1000) is not None, risky
    for fine in ["2^{10}", "\\frac{\\sqrt{3}}{2}", "x^2 + 1", "120", "5!", "(1, 2)"]:
        assert refusal_reason(fine, 1000) is None, fine
    assert refusal_reason("1" * 1001, 1000) is not None


@pytest.mark.parametrize(
    "action",
    [*HOSTILE_ACTIONS, "\\boxed{9^{9^{9}}}", "\\boxed{" * 3000, "\\boxed{1000000!}", "\\boxed{10^{10^{10}}}"],
)
def test_hostile_actions_bounded(action):
    env = MathEnv()
    env.reset(seed=0)
    start = time.perf_counter()
    _, reward, terminated, _, info = env.step(action)
    assert time.perf_counter() - start < 1.5
    assert terminated and not info["success"]
    assert reward in (-1.0, -0.5)


def test_expensive_answer_is_cut_off_by_the_sandbox_in_a_worker_thread():
    # (x+y+z+1)^20 passes the cheap screen but makes sympy's simplify run for many seconds; the
    # verifier subprocess is killed at verify_timeout_s, also when stepping from a non-main thread.
    env = MathEnv(verify_timeout_s=1.0)
    env.reset(options={"problem": "?", "answer": "x + 1"})
    result: dict = {}

    def work():
        start = time.perf_counter()
        result["step"] = env.step("\\boxed{(x+y+z+1)^{20}}")
        result["elapsed"] = time.perf_counter() - start

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    _, reward, _, _, info = result["step"]
    assert reward == -1.0 and info["reason"] == "timeout" and result["elapsed"] < 5
    # The pool recovers: the next symbolic check works.
    assert env.step("\\boxed{1 + x}")[1] == 1.0


def test_bad_level():
    with pytest.raises(ValueError):
        MathEnv(level=7)
