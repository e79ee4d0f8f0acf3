"""The text-environment contract and its checker.

An agentrl env is a plain :class:`gymnasium.Env` whose observations and actions are ``str``.
:class:`TextEnv` adds the three things the rollout manager relies on and documents them as a
contract; subclass it and implement ``reset`` and ``step`` as in any Gymnasium env.

Importing this module never imports torch: envs stay light.

May import: suggest, seeds (the stages below agentrl.envs; lint-imports checks).
"""

from __future__ import annotations

import math
import string
import time
from collections.abc import Callable
from typing import Any, ClassVar

import gymnasium
from gymnasium import spaces

#: Characters a text space admits by default: printable ASCII plus the symbols the built-in envs
#: draw with. Gymnasium's ``spaces.Text`` admits only alphanumerics unless told otherwise.
TEXT_CHARSET = string.printable + "√·×÷−≤≥"


def text_space(max_length: int = 4096, min_length: int = 0, extra_chars: str = "") -> spaces.Text:
    """A ``gymnasium.spaces.Text`` wide enough for free text (observations, action strings)."""
    charset = "".join(dict.fromkeys(TEXT_CHARSET + extra_chars))
    return spaces.Text(max_length=max_length, min_length=min_length, charset=charset)


class TextEnv(gymnasium.Env[str, str]):
    """A Gymnasium env that speaks text.

    Contract (checked by :func:`check_env`):

    - ``reset(*, seed=None, options=None) -> (observation: str, info: dict)``. The same ``seed``
      gives the same episode on any machine; no global random state is read or changed.
      Ground truth (the solution, the target...) goes into reset's ``info`` so logs can show it.
    - ``step(action: str) -> (observation, reward: float, terminated, truncated, info)``.
      ``action`` is the action text only (``"Up"``, ``"(3 + 5) * 2"``), never the model's whole
      reply: the rollout manager extracts it from the answer tags.
    - Every ``info`` (from reset and from step) holds ``success: bool`` and
      ``action_is_valid: bool``.
    - Any action string (empty, unicode, a megabyte, ``9**9**9``) returns within bounded time;
      an unusable one gives ``action_is_valid=False`` and :attr:`invalid_action_penalty`.
      A hostile action never raises and never hangs.
    - :attr:`instructions` describes the task and the action format with a concrete example
      (never a placeholder: small models echo placeholders back). The rollout manager uses it
      as the system prompt and adds the ``<think>/<answer>`` reply format itself.
    - ``render()`` returns the state as text (render mode ``"ansi"``).
    - Optional: ``oracle_actions() -> list[str] | None``, a list of action strings that solves the
      current episode from its current state (Sokoban: a shortest plan; single-step tasks: one
      correct answer), or ``None`` when none is known. Used by tests, optimality metrics and
      warm-start data.
    - Optional: ``oracle_thought() -> str``, a short true account of the next actions (the
      warm-start reply's ``<think>``), and ``oracle_turn_actions() -> list[str] | None``, the
      actions one warm-start reply gives: those the thought explains (default: the plan's first
      ``max_actions_per_turn``).
    - Optional: ``actions_follow_thought(thought: str, actions: list[str]) -> bool | None``,
      called before a reply's actions are sent: whether they are the ones its ``<think>`` text
      (``thought``) names, judged at the current state; ``None`` when there is nothing to judge.
      Recorded as the turn's ``follows_thought``; ``algo.faithful_only`` then trains no success
      whose answer ignored its reasoning. Untrusted text: parse it, never run it.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    #: The task and the action format, shown to the model as the system prompt.
    instructions: str = ""
    #: How many actions the agent may send in one turn, joined by ``||`` (1 for single-step tasks).
    max_actions_per_turn: int = 1
    #: Reward for an action the env cannot use.
    invalid_action_penalty: float = 0.0
    #: A concrete answer (the text between the answer tags) shown in the reply-format example.
    example_answer: str = ""
    #: Optional closed action vocabulary (case-insensitive). When set, the rollout manager treats
    #: any other word as a format error and does not step the env.
    valid_actions: tuple[str, ...] | None = None

    def __init__(self, render_mode: str | None = "ansi", max_obs_length: int = 16384):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported by {type(self).__name__}; "
                f"choose one of {self.metadata['render_modes']}"
            )
        self.render_mode = render_mode
        self.observation_space = text_space(max_obs_length)
        self.action_space = text_space(4096)

    def render(self) -> Any:  # pragma: no cover - subclasses override
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# check_env: small named checks, each raising AssertionError with a message that says the fix.
# --------------------------------------------------------------------------------------------

HOSTILE_ACTIONS: tuple[str, ...] = (
    "",
    " ",
    "\n\n\t",
    "9**9**9",
    "(" * 5000,
    "x" * 1_000_000,
    "😀 ünïcödé ⚙️ \u202e\u0000",
    "<script>alert(1)</script>",
    "1/0",
    "__import__('os').system('true')",
    "Up" * 10_000,
)


def _check_spaces(env: gymnasium.Env) -> None:
    assert isinstance(env.observation_space, spaces.Text), (
        f"{type(env).__name__}.observation_space must be gymnasium.spaces.Text (use agentrl.envs.env.text_space())"
    )
    assert isinstance(env.action_space, spaces.Text), (
        f"{type(env).__name__}.action_space must be gymnasium.spaces.Text (use agentrl.envs.env.text_space())"
    )


def _check_instructions(env: gymnasium.Env) -> None:
    text = getattr(env, "instructions", None)
    assert isinstance(text, str) and text.strip(), (
        f"{type(env).__name__}.instructions must be a non-empty str: the task and action format "
        "the model is shown as its system prompt"
    )


def _check_info(info: Any, where: str) -> None:
    assert isinstance(info, dict), f"{where} must return an info dict, got {type(info).__name__}"
    for key in ("success", "action_is_valid"):
        assert key in info, (
            f"{where}: info lacks {key!r}; every info must hold 'success' and 'action_is_valid'"
        )
        assert isinstance(info[key], bool), f"{where}: info[{key!r}] must be a bool, got {info[key]!r}"


def _check_reset(env: gymnasium.Env, seed: int) -> tuple[str, dict]:
    result = env.reset(seed=seed)
    assert isinstance(result, tuple) and len(result) == 2, "reset must return (observation, info)"
    obs, info = result
    assert isinstance(obs, str), f"reset's observation must be a str, got {type(obs).__name__}"
    _check_info(info, "reset")
    return obs, info


def _check_determinism(env_fn: Callable[[], gymnasium.Env], seed: int) -> None:
    first, second = env_fn(), env_fn()
    o1, _ = first.reset(seed=seed)
    o2, _ = second.reset(seed=seed)
    assert o1 == o2, f"reset(seed={seed}) gave different observations in two fresh envs: seeding is broken"


def _check_step_result(result: Any, where: str) -> None:
    assert isinstance(result, tuple) and len(result) == 5, (
        f"{where} must return (observation, reward, terminated, truncated, info)"
    )
    obs, reward, terminated, truncated, info = result
    assert isinstance(obs, str), f"{where}: observation must be a str"
    assert isinstance(reward, (int, float)) and math.isfinite(reward), (
        f"{where}: reward must be a finite float"
    )
    assert isinstance(terminated, bool) and isinstance(truncated, bool), (
        f"{where}: terminated/truncated must be bool"
    )
    _check_info(info, where)


def _check_hostile_actions(env: gymnasium.Env, seed: int, time_limit_s: float) -> None:
    for action in HOSTILE_ACTIONS:
        env.reset(seed=seed)
        start = time.perf_counter()
        try:
            result = env.step(action)
        except Exception as exc:  # noqa: BLE001 - the check reports it
            raise AssertionError(
                f"step({action[:40]!r}...) raised {type(exc).__name__}: {exc}; hostile actions must "
                "return action_is_valid=False instead"
            ) from exc
        elapsed = time.perf_counter() - start
        assert elapsed < time_limit_s, f"step({action[:40]!r}...) took {elapsed:.1f}s (limit {time_limit_s}s)"
        _check_step_result(result, f"step({action[:20]!r}...)")


def _check_render(env: gymnasium.Env, seed: int) -> None:
    if getattr(env, "render_mode", None) == "ansi":
        env.reset(seed=seed)
        assert isinstance(env.render(), str), "render() in 'ansi' mode must return a str"


def check_env(
    env_fn: Callable[[], gymnasium.Env],
    seed: int = 0,
    hostile_time_limit_s: float = 2.0,
    gymnasium_checks: bool = True,
) -> None:
    """Check an env factory against the text-env contract; raise ``AssertionError`` saying what to fix.

    Runs Gymnasium's own ``check_env`` first, then agentrl's checks: text spaces, instructions,
    the info keys, seeding, a step result's types, hostile actions in bounded time, text render.
    """
    env = env_fn()
    if gymnasium_checks:
        from gymnasium.utils.env_checker import check_env as gymnasium_check_env

        gymnasium_check_env(env, skip_render_check=True)
    _check_spaces(env)
    _check_instructions(env)
    _check_reset(env, seed)
    _check_determinism(env_fn, seed)
    _check_hostile_actions(env, seed, hostile_time_limit_s)
    _check_render(env, seed)
    env.close()
