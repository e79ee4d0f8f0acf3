"""Every built-in env and the example plugin env pass check_env and are won by their oracle."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium
import pytest

import agentrl
from agentrl.envs import registry as reg

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "guess_number"
GYM_IDS = {
    "sokoban": "agentrl/Sokoban-v0",
    "countdown": "agentrl/Countdown-v0",
    "knights_knaves": "agentrl/KnightsKnaves-v0",
    "math": "agentrl/Math-v0",
    "guess_number": "guess_number/GuessNumber-v0",
}
NAMES = sorted(GYM_IDS)
SEEDS = (0, 3, 17)


@pytest.fixture(scope="module", autouse=True)
def example_env():
    """Register the example env from examples/guess_number as its entry point would; undo it afterwards."""
    ours, gyms = dict(reg.registry), dict(gymnasium.registry)
    sys.path.insert(0, str(EXAMPLE))
    try:
        import guess_number

        guess_number.register_envs()
        yield guess_number
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop("guess_number", None)
        reg.registry.clear()
        reg.registry.update(ours)
        gymnasium.registry.clear()
        gymnasium.registry.update(gyms)


def test_the_builtins_are_registered():
    assert {"sokoban", "countdown", "knights_knaves", "math"} <= set(agentrl.names())


@pytest.mark.parametrize("name", NAMES)
def test_check_env(name):
    agentrl.check_env(lambda: agentrl.make(name))


@pytest.mark.parametrize("name", NAMES)
def test_instructions_example_answer_and_description(name):
    env = agentrl.make(name)
    assert isinstance(env, agentrl.TextEnv)
    assert env.instructions.strip() and env.example_answer.strip()
    assert env.example_answer in env.instructions or name in ("knights_knaves", "math"), (
        "the instructions should show the same concrete example as example_answer"
    )
    assert agentrl.spec(name).description.strip()
    assert env.invalid_action_penalty <= 0


def _play(env, oracle_env, seed: int) -> tuple[list[str], dict, float]:
    """Reset with ``seed``, step the oracle's actions; return (actions, last info, return)."""
    obs, info = env.reset(seed=seed)
    assert isinstance(obs, str) and info["success"] is False
    actions = oracle_env.oracle_actions()
    assert actions, f"no oracle plan for seed {seed}"
    total, terminated, truncated = 0.0, False, False
    for i, action in enumerate(actions):
        assert not (terminated or truncated), f"episode ended after {i} of {len(actions)} oracle actions"
        obs, reward, terminated, truncated, info = env.step(action)
        assert info["action_is_valid"] is True, (action, info)
        total += reward
    return actions, info, total


@pytest.mark.parametrize("name", NAMES)
def test_oracle_wins(name):
    env = agentrl.make(name)
    for seed in SEEDS:
        actions, info, _ = _play(env, env, seed)
        assert info["success"] is True, (seed, actions, info)
    if env.valid_actions is not None:
        canon = {a.lower() for a in env.valid_actions}
        assert all(a.lower() in canon for a in actions)


@pytest.mark.parametrize("name", NAMES)
def test_oracle_wins_through_gymnasium_make(name):
    env = gymnasium.make(GYM_IDS[name])
    assert type(env.unwrapped) is type(agentrl.make(name))
    for seed in SEEDS:
        _, info, _ = _play(env, env.unwrapped, seed)
        assert info["success"] is True


def test_guess_number_rules():
    env = agentrl.make("guess_number")
    _, info = env.reset(seed=5)
    secret = info["secret"]
    assert 1 <= secret <= env.n and [str(secret)] == env.oracle_actions()
    wrong = 1 if secret != 1 else 2
    obs, reward, terminated, truncated, info = env.step(f" {wrong}\n")
    assert (reward, terminated, truncated, info) == (
        -0.1,
        False,
        False,
        {"success": False, "action_is_valid": True},
    )
    assert obs == f"{'Higher' if wrong < secret else 'Lower'} than {wrong}."
    for bad in ("seven", "3.5", "-4", "²", "１２", "1" * 7, ""):
        obs, reward, terminated, _, info = env.step(bad)
        assert (reward, terminated, info["action_is_valid"]) == (env.invalid_action_penalty, False, False), (
            bad
        )
    # 1 wrong + 7 invalid guesses >= max_guesses: truncated on every step since the 6th
    assert env.step(str(wrong))[3] is True
    _, _ = env.reset(seed=5)
    obs, reward, terminated, truncated, info = env.step(str(secret))
    assert (obs, reward, terminated, truncated, info["success"]) == ("Correct!", 1.0, True, False, True)


def test_guess_number_truncates_after_max_guesses():
    env = agentrl.make("guess_number")
    _, info = env.reset(seed=1)
    wrong = "1" if info["secret"] != 1 else "2"
    ends = [env.step(wrong)[3] for _ in range(env.max_guesses)]
    assert ends == [False] * (env.max_guesses - 1) + [True]


def test_guess_number_is_learnable_by_halving():
    """Binary search always wins within max_guesses: the hints carry enough to learn from."""
    env = agentrl.make("guess_number")
    for seed in range(40):
        env.reset(seed=seed)
        lo, hi = 1, env.n
        for _ in range(env.max_guesses):
            guess = (lo + hi) // 2
            obs, _, terminated, truncated, info = env.step(str(guess))
            if terminated:
                break
            lo, hi = (guess + 1, hi) if obs.startswith("Higher") else (lo, guess - 1)
        assert info["success"], seed


# --------------------------------------------------------------------------------------------
# docs/custom_env.md and the example package stay in step
# --------------------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "custom_env.md"


def test_the_example_env_is_under_40_lines():
    lines = (EXAMPLE / "guess_number.py").read_text().splitlines()
    assert len(lines) < 40, (
        f"examples/guess_number/guess_number.py has {len(lines)} lines; the doc promises < 40"
    )


def test_the_doc_shows_the_example_files_verbatim():
    doc = DOC.read_text()
    code = (EXAMPLE / "guess_number.py").read_text()
    assert f"```python\n{code}```" in doc, "docs/custom_env.md must hold guess_number.py exactly"
    pyproject = (EXAMPLE / "pyproject.toml").read_text()
    assert f"```toml\n{pyproject}```" in doc, "docs/custom_env.md must hold pyproject.toml exactly"


def test_the_example_pyproject_declares_the_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "agentrl-guess-number"
    assert meta["project"]["entry-points"]["agentrl.envs"] == {"guess_number": "guess_number:register_envs"}
    assert meta["tool"]["setuptools"]["py-modules"] == ["guess_number"]
