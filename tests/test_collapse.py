"""Collapse guard: detection on hand-made metric sequences, the instruction-echo metric, the actions,
and end to end: a constant-reward env (every group zero-variance) with action=stop ends the run early."""

from __future__ import annotations

import json

import pytest
from envs_for_tests import tiny_run_args  # also registers test_constant

from agentrl.algorithms.collapse import detect, signals
from agentrl.cli import main
from agentrl.config import ConfigError, load_config
from agentrl.training.checkpoint import TrainerState
from agentrl.training.metrics import echoes_instructions, instruction_echo_rate, word_ngrams
from agentrl.training.trainer import collapse_guard

ZERO, DISTINCT, ECHO = (
    "train/zero_adv_group_fraction",
    "train/distinct_replies_per_group",
    "train/instruction_echo_rate",
)
DEFAULT = signals(0.9, 0.3, 0.5)


def _step(zero: float = 0.0, distinct: float = 1.0, echo: float = 0.0) -> dict[str, float]:
    return {ZERO: zero, DISTINCT: distinct, ECHO: echo}


def test_a_signal_fires_only_after_patience_consecutive_steps():
    healthy, flat = _step(), _step(zero=1.0)
    assert detect([flat, flat], DEFAULT, patience=3) == []  # too few steps known
    assert detect([flat, healthy, flat, flat], DEFAULT, patience=3) == []  # interrupted
    assert detect([healthy, flat, flat, flat], DEFAULT, patience=3) == [f"{ZERO}=1 (>= 0.9)"]
    assert detect([flat, flat, flat, healthy], DEFAULT, patience=3) == []  # recovered
    assert detect([_step(zero=0.9)] * 3, DEFAULT, patience=3) == [f"{ZERO}=0.9 (>= 0.9)"]  # at threshold
    assert detect([_step(zero=0.89)] * 3, DEFAULT, patience=3) == []


def test_each_signal_and_their_combination():
    assert detect([_step(distinct=0.25)] * 2, DEFAULT, 2) == [f"{DISTINCT}=0.25 (< 0.3)"]
    assert detect([_step(distinct=0.3)] * 2, DEFAULT, 2) == []  # not below
    assert detect([_step(echo=0.75)] * 2, DEFAULT, 2) == [f"{ECHO}=0.75 (>= 0.5)"]
    both = detect([_step(zero=1.0, echo=0.6), _step(zero=0.95, echo=1.0)], DEFAULT, 2)
    assert both == [f"{ZERO}=0.95 (>= 0.9)", f"{ECHO}=1 (>= 0.5)"]  # the latest value is named
    # Different signals on different steps do not add up to a streak.
    assert detect([_step(zero=1.0), _step(echo=1.0)], DEFAULT, 2) == []


def test_switched_off_and_missing_metrics_never_fire():
    only_echo = signals(None, None, 0.5)
    assert [s.metric for s in only_echo] == [ECHO]
    assert detect([_step(zero=1.0, distinct=0.0)] * 3, only_echo, 3) == []
    assert detect([{}, {}, {}], DEFAULT, 3) == []


INSTRUCTIONS = (
    "Push every box onto a target. Reply with <think> your reasoning </think> <answer> your moves </answer>, "
    "for example <answer>Up || Left</answer>."
)


def test_instruction_echo_counts_replies_mostly_made_of_the_instructions_5_grams():
    assert word_ngrams("A b c d e f", 5) == [("a", "b", "c", "d", "e"), ("b", "c", "d", "e", "f")]
    known = set(word_ngrams(INSTRUCTIONS))
    echo = "<think> your reasoning </think> <answer> your moves </answer>"  # 7 words, 3 grams, all known
    assert echoes_instructions(echo, known)
    assert not echoes_instructions(
        "<think>the box is left of me so I push it</think><answer>Left</answer>", known
    )
    assert not echoes_instructions("Up || Left", known)  # under 5 words: never an echo
    # 6 words, 2 grams, 1 known: exactly half is not more than half.
    assert not echoes_instructions("Push every box onto a wall", known)
    assert echoes_instructions("Push every box onto a target now", known)  # 3 grams, 2 known
    replies = [echo, "Up || Left", "I think the answer is to go up twice", echo]
    assert instruction_echo_rate(replies, INSTRUCTIONS) == 0.5
    assert instruction_echo_rate([], INSTRUCTIONS) == 0.0


def _cfg(*overrides: str):
    return load_config(env="sokoban", overrides=["collapse.patience=2", *overrides])


def _run_guard(cfg, loop: TrainerState, steps: list[dict[str, float]]) -> list:
    """The guard's decisions over ``steps``, applied to ``loop`` as the training loop does."""
    decisions = []
    for step, metrics in enumerate(steps, start=1):
        decision = collapse_guard(cfg, loop, metrics, step)
        loop.warning = decision.warning
        if decision.keep_group_fraction is not None:
            loop.keep_group_fraction = decision.keep_group_fraction
        decisions.append(decision)
    return decisions


def test_warn_flags_every_step_and_prints_one_line_per_episode():
    flat, healthy = _step(zero=1.0), _step()
    decisions = _run_guard(_cfg(), TrainerState(step=0), [flat, flat, flat, healthy, flat, flat])
    assert [d.warning for d in decisions] == [False, True, True, False, False, True]
    assert not any(d.stop for d in decisions)
    lines = [d.message for d in decisions if d.message]
    assert [line.split(":")[1].strip() for line in lines] == [
        "collapse warning at step 2 (2 steps in a row)",
        "collapse signals cleared at step 4",
        "collapse warning at step 6 (2 steps in a row)",
    ]
    assert "agentrl sft" in lines[0] and ZERO in lines[0]


def test_filter_switches_on_starpo_s_once_and_never_raises_the_fraction():
    loop = TrainerState(step=0, keep_group_fraction=1.0)
    decisions = _run_guard(_cfg("collapse.action=filter"), loop, [_step(distinct=0.1)] * 3)
    assert loop.keep_group_fraction == 0.25
    lines = [d.message for d in decisions if d.message]
    assert len(lines) == 1 and "StarPO-S filtering on from step 3" in lines[0]
    lower = TrainerState(step=0, keep_group_fraction=0.1)
    _run_guard(_cfg("collapse.action=filter"), lower, [_step(distinct=0.1)] * 2)
    assert lower.keep_group_fraction == 0.1


def test_stop_asks_to_stop_and_says_what_to_try():
    decisions = _run_guard(_cfg("collapse.action=stop"), TrainerState(step=0), [_step(echo=0.9)] * 2)
    assert [d.stop for d in decisions] == [False, True]
    assert ECHO in decisions[-1].message and "Stopping" in decisions[-1].message
    assert "lower train.lr" in decisions[-1].message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("collapse.action=halt", "collapse.action='halt' is not one of"),
        ("collapse.warn_zero_std_fraction=1.5", "collapse.warn_zero_std_fraction is a fraction"),
        ("collapse.patience=0", "collapse.patience must be a positive"),
    ],
)
def test_collapse_config_mistakes_are_named(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(env="sokoban", overrides=[override])
    assert message in str(info.value)
    assert (
        load_config(
            env="sokoban", overrides=["collapse.warn_distinct_below=null"]
        ).collapse.warn_distinct_below
        is None
    )


@pytest.mark.slow  # a whole run until the guard stops it
def test_forced_collapse_with_stop_ends_the_run_early_with_a_checkpoint(tmp_path, capsys):
    sets = ["train.steps=6", "run.save_every=0", "collapse.action=stop", "collapse.patience=2"]
    assert main(["train", *tiny_run_args("test_constant", "flat", tmp_path, *sets)]) == 0
    run = tmp_path / "flat"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["train/zero_adv_group_fraction"] for r in rows] == [1.0, 1.0]
    assert [r["collapse/warning"] for r in rows] == [0.0, 1.0]
    assert all(0.0 <= r["train/instruction_echo_rate"] <= 1.0 for r in rows)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000002"]
    loop = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())["loop"]
    assert len(loop["guard_history"]) == 2
    out = capsys.readouterr().out
    assert "collapse at step 2" in out and "agentrl sft" in out and "stopped after step 2" in out


def test_distinct_replies_across_puzzles_counts_one_episode_per_puzzle():
    from agentrl.rollout.trajectory import Trajectory, Turn
    from agentrl.training.metrics import distinct_across_puzzles

    def traj(seed: int, group: int, reply: str) -> Trajectory:
        return Trajectory(env="e", seed=seed, group=group, turns=[Turn(observation="o", reply=reply)])

    # 4 puzzles x 2 episodes; the first episode of puzzles 1-3 says "Down", puzzle 4 "Up":
    # 2 distinct replies over 4 puzzles. Second episodes (all different) do not count.
    batch = [traj(s, s, r) for s, r in [(1, "Down"), (2, "Down"), (3, "Down"), (4, "Up")]]
    batch += [traj(s, s, f"other {s}") for s in (1, 2, 3, 4)]
    assert distinct_across_puzzles(batch) == 2 / 4
    assert distinct_across_puzzles(batch[:3]) == 1 / 3  # one reply for every puzzle
    assert distinct_across_puzzles([]) == 0.0


def test_one_reply_for_every_puzzle_is_a_collapse_signal():
    across = "train/distinct_replies_across_puzzles"
    watched = signals(None, None, None, 0.3)
    assert [s.metric for s in watched] == [across]
    assert detect([{across: 0.25}] * 3, watched, 3) == [f"{across}=0.25 (< 0.3)"]
    assert detect([{across: 0.5}] * 3, watched, 3) == []
    assert load_config(env="sokoban").collapse.warn_distinct_across_puzzles == 0.3
    with pytest.raises(ConfigError, match="warn_distinct_across_puzzles"):
        load_config(env="sokoban", overrides=["collapse.warn_distinct_across_puzzles=2"])
