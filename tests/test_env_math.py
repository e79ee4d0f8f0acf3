"""Math env: checker, seeding, generator levels, answer extraction, math-verify equivalence, data files."""

from __future__ import annotations

# agentrl before agentrl_envs: importing agentrl_envs first runs agentrl's plugin loader while
# agentrl_envs is half-imported, and the built-in envs would not get registered.
import agentrl  # isort: skip
import json
import random
import re
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from agentrl_envs import math_problems
from agentrl_envs.math_env import MathEnv, extract_answer, extract_boxed, load_problems, refusal_reason
from agentrl_envs.math_problems import LEVELS, generate_problem, generate_worked_problem

from agentrl.envs.env import HOSTILE_ACTIONS


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


# --------------------------------------------------------------------------------------------
# Worked solutions: the oracle's thought
# --------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"-?\d+(?:/\d+)?")


def _last_number(text: str) -> str:
    return _NUMBER_RE.findall(text)[-1]


def test_int_expression_steps_hand_built():
    steps = math_problems.int_expression_steps
    assert steps([37, 4, 12, 9], ["+", "*", "-"]) == "4 * 12 = 48. 37 + 48 = 85. 85 - 9 = 76."
    assert steps([7, 4, 12, 9], ["*", "+", "-"]) == "7 * 4 = 28. 28 + 12 = 40. 40 - 9 = 31."
    # Products first, even when the sum comes earlier in the text.
    assert steps([5, 12, 41, 8], ["+", "+", "*"]) == "41 * 8 = 328. 5 + 12 = 17. 17 + 328 = 345."
    assert steps([3, 4, 5], ["*", "*"]) == "3 * 4 = 12. 12 * 5 = 60."
    assert steps([10, 25, 3], ["-", "+"]) == "10 - 25 = -15. -15 + 3 = -12."
    assert steps([2, 3, 4, 5], ["*", "-", "*"]) == "2 * 3 = 6. 4 * 5 = 20. 6 - 20 = -14."


def test_fraction_steps_hand_built():
    steps, F = math_problems.fraction_steps, Fraction
    assert steps(F(3, 4), F(5, 6), "+") == "3/4 + 5/6 = 9/12 + 10/12 = 19/12."
    assert steps(F(1, 6), F(1, 3), "+") == "1/6 + 1/3 = 1/6 + 2/6 = 3/6 = 1/2."
    assert steps(F(5, 4), F(1, 4), "-") == "5/4 - 1/4 = 4/4 = 1."
    assert steps(F(1, 2), F(8, 5), "-") == "1/2 - 8/5 = 5/10 - 16/10 = -11/10."
    assert steps(F(3, 4), F(5, 7), "*") == "3/4 * 5/7 = 15/28."
    assert steps(F(5, 4), F(16, 9), "*") == "5/4 * 16/9 = 80/36 = 20/9."
    assert steps(F(3, 4), F(5, 6), "/") == "Dividing by 5/6 is multiplying by 6/5: 3/4 * 6/5 = 18/20 = 9/10."
    assert steps(F(19, 10), F(1, 2), "/") == "Dividing by 1/2 is multiplying by 2: 19/10 * 2 = 38/10 = 19/5."


def test_linear_steps_hand_built():
    steps = math_problems.linear_steps  # a x + b = c x + d
    assert steps(5, -3, 2, 9) == "5x - 2x = 9 + 3, so 3x = 12 and x = 4."
    assert steps(6, -13, -8, -11) == "6x + 8x = -11 + 13, so 14x = 2 and x = 1/7."
    assert steps(3, 2, 2, 7) == "3x - 2x = 7 - 2, so x = 5."
    assert steps(-8, 15, -9, 10) == "-8x + 9x = 10 - 15, so x = -5."
    assert steps(-1, 10, 0, -1) == "-x = -1 - 10, so -x = -11 and x = 11."
    assert steps(6, -10, 9, 5) == "6x - 9x = 5 + 10, so -3x = 15 and x = -5."
    assert steps(5, 3, 2, 0) == "5x - 2x = -3, so 3x = -3 and x = -1."
    assert steps(4, 0, -2, 9) == "4x + 2x = 9, so 6x = 9 and x = 3/2."
    assert steps(4, 0, 0, 6) == "4x = 6, so x = 3/2."
    assert steps(5, 3, 0, 0) == "5x = -3, so x = -3/5."
    assert steps(1, 0, 0, 7) == "x = 7."


@pytest.mark.parametrize(
    "generator, seed, problem, answer, solution",
    [
        # Each solution below was worked out by hand from the problem text.
        (
            math_problems.LEVELS[1],
            3,
            "Compute 5 + 12 + 41 * 8.",
            345,
            "41 * 8 = 328. 5 + 12 = 17. 17 + 328 = 345.",
        ),
        (
            math_problems.LEVELS[1],
            7,
            "Compute 32 * 11 - 39 * 4.",
            196,
            "32 * 11 = 352. 39 * 4 = 156. 352 - 156 = 196.",
        ),
        (
            math_problems.LEVELS[2],
            3,
            "Compute $\\frac{1}{5} + \\frac{2}{3}$. Give the answer as a fraction in lowest terms (or an integer).",
            Fraction(13, 15),
            "1/5 + 2/3 = 3/15 + 10/15 = 13/15.",
        ),
        (
            math_problems.LEVELS[3],
            7,
            "Solve for $x$: $8x + 8 = 2x + 16$. Give the exact value of $x$.",
            Fraction(4, 3),
            "8x - 2x = 16 - 8, so 6x = 8 and x = 4/3.",
        ),
        (
            math_problems.WORD_PROBLEMS["shopping"],
            3,
            "Nina buys 5 pencils at 3 dollars each and pays with 20 dollars. How many dollars of change does Nina get?",
            5,
            "5 pencils at 3 dollars each cost 5 * 3 = 15 dollars. 20 - 15 = 5.",
        ),
        (
            math_problems.WORD_PROBLEMS["speed"],
            7,
            "Yusuf travels at 51 km per hour for 7 hours, then another 27 km. "
            "How many km does Yusuf travel in total?",
            384,
            "7 hours at 51 km per hour is 51 * 7 = 357 km. 357 + 27 = 384.",
        ),
        (
            math_problems.WORD_PROBLEMS["sharing"],
            3,
            "Nina shares 17 liters of juice equally among 3 friends. "
            "How many liters does each friend get? Give an exact answer.",
            Fraction(17, 3),
            "Each friend gets 17 / 3 = 17/3 liters.",
        ),
        (
            math_problems.WORD_PROBLEMS["ages"],
            3,
            "Priya is 2 times as old as Kenji. Kenji is 5 years old. How old will Priya be in 3 years?",
            13,
            "Priya is now 2 * 5 = 10 years old, so in 3 years Priya will be 10 + 3 = 13.",
        ),
        (
            math_problems.WORD_PROBLEMS["work"],
            3,
            "Priya can paint a fence in 3 hours and Kenji can paint it in 4 hours. "
            "Working together at these rates, how many hours do they need? Give an exact answer.",
            Fraction(12, 7),
            "Together they paint 1/3 + 1/4 = 7/12 of the fence per hour, so they need 1 / (7/12) = 12/7 hours.",
        ),
    ],
)
def test_worked_solution_hand_checked(generator, seed, problem, answer, solution):
    assert generator(np.random.default_rng(seed)) == (problem, Fraction(answer), solution)


def _fraction_side(side: str) -> Fraction:
    # "3/4", "9/12 + 10/12", "3/4 * 6/5": one number or two joined by one operator.
    tokens = side.split(" ")
    if len(tokens) == 1:
        return Fraction(tokens[0])
    a, op, b = Fraction(tokens[0]), tokens[1], Fraction(tokens[2])
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_worked_solution_ends_with_the_answer_and_its_steps_are_true(level):
    rng = np.random.default_rng(1234 + level)
    for _ in range(50):
        problem, answer, solution = generate_worked_problem(rng, level)
        assert _last_number(solution) == answer, (problem, solution)
        assert 0 < len(solution) < 200 and solution.endswith("."), solution
        # Every "A op B = C" between integers states true arithmetic.
        for a, op, b, c in re.findall(r"(?<![\d/])(-?\d+) ([-+*]) (\d+) = (-?\d+)(?![\d/])", solution):
            assert eval(f"{a} {op} {b}") == int(c), solution  # noqa: S307 - digits and one operator
        if level == 2:
            chain = solution.split(": ")[-1].removesuffix(".").split(" = ")
            assert {_fraction_side(side) for side in chain} == {Fraction(answer)}, solution
        if level == 3:
            # The collected "kx = m" and the final "x = answer" hold for the answer.
            claims = re.findall(r"(?:^|so |and )(-?\d*)x = (-?\d+(?:/\d+)?)(?=[.,]| and)", solution)
            assert claims and claims[-1] == ("", answer), solution
            for k, m in claims:
                coef = 1 if k == "" else -1 if k == "-" else int(k)
                assert coef * Fraction(answer) == Fraction(m), solution


def test_generate_problem_matches_generate_worked_problem():
    for level in sorted(LEVELS):
        for seed in range(100):
            rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
            for _ in range(3):
                assert generate_problem(rng_a, level) == generate_worked_problem(rng_b, level)[:2]
            assert rng_a.bit_generator.state == rng_b.bit_generator.state
    with pytest.raises(ValueError):
        generate_worked_problem(np.random.default_rng(0), 5)


def test_oracle_thought_is_the_generated_solution():
    env = MathEnv()
    for seed in range(20):
        _, info = env.reset(seed=seed)
        assert info["source"] == "generator" and env.oracle_thought() == env.solution
        assert _last_number(env.oracle_thought()) == info["answer"]
        other = MathEnv()
        other.reset(seed=seed)
        assert other.oracle_thought() == env.oracle_thought()
    env.reset(seed=0, options={"level": 1})
    expr = env.problem.removeprefix("Compute ").removesuffix(".")
    assert env.oracle_thought() == math_problems.int_expression_steps(
        [int(t) for t in expr.split(" ")[::2]], expr.split(" ")[1::2]
    )


def test_oracle_thought_from_file_solution_and_fallback(tmp_path):
    path = tmp_path / "probs.jsonl"
    records = [
        {"problem": "What is 2 + 3 * 4?", "answer": "14", "solution": " 3 * 4 = 12. 2 + 12 = 14. "},
        {"problem": "Half of 9?", "answer": "9/2"},
        {"problem": "What is 1 + 1?", "answer": 2, "solution": None},
        {"problem": "What is 2 + 2?", "answer": 4, "solution": "   "},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    env = MathEnv(data_file=path)
    assert env.records[0]["solution"] == "3 * 4 = 12. 2 + 12 = 14."
    assert all("solution" not in rec for rec in env.records[1:])
    thoughts = {}
    for seed in range(40):
        _, info = env.reset(seed=seed)
        thoughts[info["index"]] = env.oracle_thought()
    assert thoughts == {
        0: "3 * 4 = 12. 2 + 12 = 14.",
        1: "The answer is 9/2.",
        2: "The answer is 2.",
        3: "The answer is 4.",
    }


def test_data_file_bad_solution(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"problem": "p", "answer": "1", "solution": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="'solution' must be a string") as exc:
        MathEnv(data_file=path)
    assert f"{path}:1" in str(exc.value)


def test_oracle_thought_from_options_and_fallback():
    env = MathEnv()
    env.reset(options={"problem": "2 + 2?", "answer": "4", "solution": "2 + 2 = 4."})
    assert env.oracle_thought() == "2 + 2 = 4."
    env.reset(options={"problem": "Simplify sqrt(8)/2.", "answer": "\\sqrt{2}"})
    assert env.oracle_thought() == "The answer is \\sqrt{2}."
    # A generated problem after an options problem has its own solution again.
    env.reset(seed=3, options={"level": 3})
    assert env.oracle_thought().endswith(f"x = {env.answer}.")
    with pytest.raises(ValueError, match="solution"):
        env.reset(options={"problem": "2 + 2?", "answer": "4", "solution": 4})
