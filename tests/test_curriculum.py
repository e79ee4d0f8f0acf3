"""Curriculum: stage of a step, adaptive promote/demote by hand-worked cases, config, and end to end
(options reach the env, lr and temperature follow the stage, --resume continues in the stage)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

import agentrl  # isort: skip  (registers the built-in envs before anything imports them)
from envs_for_tests import tiny_run_args

from agentrl.cli import main
from agentrl.config import ConfigError, configs_dir, from_dict, load_config
from agentrl.envs.env import TextEnv
from agentrl.training.curriculum import CurriculumState, advance, decide, stage_at

# ------------------------------------------------------------------------------------------------
# Pure logic
# ------------------------------------------------------------------------------------------------


def test_stage_at_follows_the_cumulative_step_counts():
    steps = [100, 100, 300]
    assert [stage_at(s, steps) for s in (1, 100, 101, 200, 201, 500)] == [0, 0, 1, 1, 2, 2]
    assert stage_at(501, steps) == 2  # past the end: the last stage
    assert stage_at(1, []) == 0
    assert [stage_at(s, [1, 1, 1]) for s in (1, 2, 3)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ([0.8, 0.8, 0.8], 1),  # mean 0.8 reaches promote_at 0.8
        ([1.0, 0.6, 0.7], 0),  # mean 0.767: stay
        ([0.2, 0.0, 0.0], -1),  # mean 0.067 < 0.1: demote
        ([0.1, 0.0, 0.0], -1),  # mean 0.033 < 0.1: demote
        ([0.1, 0.1, 0.1], 0),  # exactly demote_at is not below it
        ([1.0, 1.0], 0),  # window not full yet
        ([0.0, 1.0, 1.0, 1.0], 1),  # only the last 3 count
    ],
)
def test_decide_on_a_window(window, expected):
    assert decide(window, 3, promote_at=0.8, demote_at=0.1) == expected


def test_advance_promotes_demotes_and_spends_budgets():
    steps = [10, 10, 10]
    kw = dict(stage_steps=steps, window=2, promote_at=0.8, demote_at=0.1)
    s = CurriculumState()
    s, why = advance(s, 0.9, **kw)  # window [0.9] not full
    assert (s.stage, s.steps_in_stage, s.window, why) == (0, 1, [0.9], None)
    s, why = advance(s, 0.7, **kw)  # mean 0.8: promote, window emptied
    assert (s.stage, s.steps_in_stage, s.window, why) == (1, 0, [], "promote")
    s, why = advance(s, 0.0, **kw)
    s, why = advance(s, 0.1, **kw)  # mean 0.05 < 0.1: back to stage 0
    assert (s.stage, why) == (0, "demote")
    s, why = advance(CurriculumState(stage=0, steps_in_stage=9, window=[0.5]), 0.5, **kw)
    assert (s.stage, why) == (1, "budget")  # 10 steps spent without reaching 0.8
    s, why = advance(CurriculumState(stage=2, steps_in_stage=30, window=[1.0]), 1.0, **kw)
    assert (s.stage, s.steps_in_stage, why) == (2, 31, None)  # the last stage stays
    s, why = advance(CurriculumState(stage=0, window=[0.0]), 0.0, **kw)
    assert (s.stage, why) == (0, None)  # the first stage cannot be left downwards
    state = CurriculumState(stage=1, steps_in_stage=3, window=[0.5])
    advance(state, 1.0, **kw)
    assert state == CurriculumState(stage=1, steps_in_stage=3, window=[0.5])  # not modified
    assert CurriculumState.from_dict(state.to_dict()) == state


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

STAGES = "curriculum.stages=[{steps: 2, env_options: {n_people: 3}}, {steps: 3, lr: 1e-6, temperature: 0.5}]"


def test_stages_are_typed_and_train_steps_is_their_sum():
    cfg = load_config(env="knights_knaves", overrides=[STAGES, "curriculum.stages.1.lr=2e-6"])
    assert cfg.train.steps == 5  # the recipe's train.steps gives way to stages set after it
    first, second = cfg.curriculum.stages
    assert (first.steps, first.env_options, first.lr, first.temperature) == (2, {"n_people": 3}, None, None)
    assert (second.steps, second.lr, second.temperature) == (3, 2e-6, 0.5)
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # a run's config.yaml round-trips
    assert load_config(env="knights_knaves", overrides=[STAGES, "train.steps=5"]).train.steps == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([STAGES, "train.steps=7"], "curriculum stages add up to 5 steps"),
        (["curriculum.stages=[{steps: 2, n_people: 3}]"], "unknown config key curriculum.stages[0].n_people"),
        (["curriculum.stages=[{steps: 2}, {lr: 1e-6}]"], "curriculum.stages[1].steps must be positive"),
        (["curriculum.stages=[{steps: 2, lr: -1}]"], "curriculum.stages[0].lr must be positive"),
        (["curriculum.stages={steps: 2}"], "curriculum.stages must be a list of mappings"),
        ([STAGES, "curriculum.promote_at=1.5"], "0 <= demote_at < promote_at <= 1"),
        ([STAGES, "curriculum.demote_at=0.9"], "0 <= demote_at < promote_at <= 1"),
        ([STAGES, "curriculum.window=0"], "curriculum.window must be positive"),
        (["curriculum.adaptive=true"], "needs curriculum.stages"),
        ([STAGES, "curriculum.stages.4.lr=1"], "is a list of 2; index it 0..1"),
        # Rollout limits of a stage (knights_knaves.yaml: group_size 4, 192 new tokens, context 1536).
        (
            [STAGES, "curriculum.stages.1.rollout.max_new_tokens=4096"],
            "[1].rollout.max_new_tokens=4096 exceeds rollout.max_new_tokens=192",
        ),
        (
            [STAGES, "curriculum.stages.1.rollout.group_size=8"],
            "set rollout.group_size to the largest stage's value",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.max_new_tokens=0"],
            "curriculum.stages[0].rollout.max_new_tokens must be positive",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.max_context_tokens=-5"],
            "rollout.max_context_tokens must be positive",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.max_context_tokens=150"],
            "rollout.max_new_tokens=192 exceeds curriculum.stages[0].rollout.max_context_tokens=150 in curriculum.stages[0]",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout={max_new_tokens: 100, max_context_tokens: 100}"],
            "leaving no room for the prompt",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.group_size=1"],
            "curriculum.stages[0].rollout.group_size must be at least 2",
        ),
        (
            [STAGES, "algo.mini_batches=8", "curriculum.stages.0.rollout.group_size=3"],
            "must divide the 12 episodes per step of curriculum.stages[0]",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.max_new_token=64"],
            "Did you mean curriculum.stages[0].rollout.max_new_tokens?",
        ),
        (
            [STAGES, "curriculum.stages.0.rollout.temperature=0.5"],
            "set the stage's own curriculum.stages[0].temperature",
        ),
        ([STAGES, "curriculum.stages.0.rollout.top_p=0.5"], "rollout.top_p is fixed for the whole run"),
    ],
)
def test_curriculum_mistakes_are_named(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(env="knights_knaves", overrides=overrides)
    assert message in str(info.value)


def test_stages_set_rollout_limits_typed_and_round_trip():
    staged = "curriculum.stages=[{steps: 2, rollout: {max_new_tokens: 64, group_size: 2}}, {steps: 3}]"
    cfg = load_config(
        env="knights_knaves", overrides=[staged, "curriculum.stages.1.rollout.max_context_tokens=1024"]
    )
    first, second = cfg.curriculum.stages
    assert first.rollout.overrides() == {"group_size": 2, "max_new_tokens": 64}
    assert second.rollout.overrides() == {"max_context_tokens": 1024} and second.rollout.max_turns is None
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    from agentrl.config import StageRolloutConfig
    from agentrl.rollout.manager import PER_CALL_SETTINGS

    # The stage keys are exactly the settings the rollout manager takes per call.
    assert tuple(f.name for f in dataclasses.fields(StageRolloutConfig)) == PER_CALL_SETTINGS


def test_stage_settings_and_metrics_fill_in_the_runs_limits():
    from agentrl.training.trainer import stage_metrics, stage_settings

    staged = (
        "curriculum.stages=[{steps: 1, rollout: {max_new_tokens: 64, max_context_tokens: 512}}, {steps: 1}]"
    )
    cfg = load_config(env="knights_knaves", overrides=[staged])
    first, second = stage_settings(cfg, 0), stage_settings(cfg, 1)
    assert first.rollout == {"max_new_tokens": 64, "max_context_tokens": 512} and second.rollout == {}
    assert stage_metrics(cfg, first) == {
        "curriculum/stage": 0.0,
        "curriculum/group_size": 4.0,
        "curriculum/max_turns": 1.0,
        "curriculum/max_new_tokens": 64.0,
        "curriculum/max_context_tokens": 512.0,
    }
    assert stage_metrics(cfg, second)["curriculum/max_new_tokens"] == 192.0  # the run's own


def test_deepscaler_recipes_are_three_context_stages():
    cfg = load_config(config_file=str(configs_dir() / "deepscaler_math.yaml"))
    assert cfg.train.steps == 1750 and cfg.train.lr == 1e-6 and cfg.train.n_groups == 128
    assert [s.rollout.max_new_tokens or cfg.rollout.max_new_tokens for s in cfg.curriculum.stages] == [
        8192,
        16384,
        24576,
    ]
    assert [s.rollout.group_size or cfg.rollout.group_size for s in cfg.curriculum.stages] == [8, 16, 16]
    assert cfg.rollout.temperature == 0.6 and cfg.eval.temperature == 0.6 and not cfg.eval.greedy
    cpu = load_config(config_file=str(configs_dir() / "deepscaler_math_cpu.yaml"))
    assert [s.rollout.max_new_tokens or cpu.rollout.max_new_tokens for s in cpu.curriculum.stages] == [
        64,
        128,
        192,
    ]


def test_logic_rl_recipe_is_one_run_of_three_stages():
    cfg = load_config(config_file=str(configs_dir() / "logic_rl_kk.yaml"))
    assert cfg.train.steps == 500
    assert [s.env_options["n_people"] for s in cfg.curriculum.stages] == [3, 5, 5]
    assert [s.lr for s in cfg.curriculum.stages] == [None, 4e-7, 1e-7]
    assert cfg.curriculum.stages[2].temperature == 0.5
    assert not list(configs_dir().glob("logic_rl_kk_stage*.yaml"))
    assert load_config(config_file=str(configs_dir() / "logic_rl_kk_adaptive.yaml")).curriculum.adaptive


# ------------------------------------------------------------------------------------------------
# End to end (tiny model)
# ------------------------------------------------------------------------------------------------


class OptionsEnv(TextEnv):
    """Single step; reset info records the reset options; success = the option ``succeed``."""

    instructions = "Write some English words."
    example_answer = "hello world"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.options = dict(options or {})
        return "Write words.", {"success": False, "action_is_valid": True, "options": self.options}

    def step(self, action):
        text = action[:4096]
        share = sum(c.isascii() and c.isalpha() for c in text) / max(1, len(text))
        info = {"success": bool(self.options.get("succeed", False)), "action_is_valid": True}
        return "", float(share), True, False, info


agentrl.register("test_options", OptionsEnv, override=True)


def _args(root: Path, name: str, stages: str, *extra: str) -> list[str]:
    sets = [
        "eval.episodes=2",
        "eval.at_start=false",
        "run.save_every=1",
        "run.keep_checkpoints=0",
        "algo.kl.coef=0.01",
        f"curriculum.stages={stages}",
        *extra,
    ]
    return tiny_run_args("test_options", name, root, *sets)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _options(run: Path, step: int, split: str = "trajectories") -> list[dict]:
    lines = (run / split / f"step_{step:06d}.jsonl").read_text().splitlines()
    return [json.loads(line)["reset_info"]["options"] for line in lines]


FIXED = "[{steps: 2, env_options: {level: 1}, lr: 1e-3}, {steps: 2, env_options: {level: 2}, lr: 1e-4, temperature: 0.5}]"


@pytest.mark.slow  # a run through every stage, then a resume
def test_fixed_stages_set_options_lr_and_temperature_and_resume_in_stage(tmp_path):
    # float32 throughout (no bf16 autocast on CPUs that have it): the log-probs compare to 1e-4.
    assert main(["train", *_args(tmp_path, "fixed", FIXED, "eval.every=4", "train.autocast=off")]) == 0
    run = tmp_path / "fixed"
    rows = _rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["curriculum/stage"] for r in rows] == [0, 0, 1, 1]
    assert [r["train/lr"] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert all(o == {"level": 1} for o in _options(run, 2))
    assert all(o == {"level": 2} for o in _options(run, 3))
    assert all(o == {"level": 2} for o in _options(run, 4, "eval"))  # eval plays the stage's options
    # Stage 2 samples at temperature 0.5 and the trainer's log-probs follow: no drift before the update.
    assert rows[2]["train/logprob_mismatch_mean"] < 1e-4 and rows[2]["train/trained_tokens"] > 0
    state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert (state["step"], state["stage"]) == (2, 1)  # the stage the next step plays

    # Resume from step 2 (in the stage change): steps 3 and 4 repeat exactly.
    for step in (3, 4):
        shutil.rmtree(run / "checkpoints" / f"step_{step:06d}")
    assert main(["train", "--resume", *_args(tmp_path, "fixed", FIXED, "eval.every=4")]) == 0
    again = _rows(run)
    assert [r["curriculum/stage"] for r in again] == [0, 0, 1, 1]
    for key in ("train/reward", "train/lr", "train/policy_loss", "train/grad_norm"):
        assert [r[key] for r in again[2:]] == pytest.approx([r[key] for r in rows[2:]], rel=1e-6, abs=1e-9)


ADAPTIVE = "[{steps: 2, env_options: {succeed: true}}, {steps: 1, env_options: {succeed: false}}]"


def test_adaptive_promotes_on_success_demotes_on_failure_and_persists_the_window(tmp_path):
    extra = ("curriculum.adaptive=true", "curriculum.window=1", "algo.kl.coef=0")
    assert main(["train", *_args(tmp_path, "adaptive", ADAPTIVE, *extra)]) == 0
    run = tmp_path / "adaptive"
    # step 1 (stage 0) succeeds -> promote; step 2 (stage 1) fails -> demote; step 3 back in stage 0.
    assert [r["curriculum/stage"] for r in _rows(run)] == [0, 1, 0]
    assert _options(run, 2)[0] == {"succeed": False}
    loop = json.loads((run / "checkpoints" / "step_000003" / "trainer_state.json").read_text())["loop"]
    assert loop["curriculum"] == {"stage": 1, "steps_in_stage": 0, "window": []}  # step 3 succeeded
    state = json.loads((run / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["stage"] == 0


STAGED = (
    "[{steps: 1, rollout: {group_size: 2, max_new_tokens: 3, max_context_tokens: 600}},"
    " {steps: 1, rollout: {max_new_tokens: 5}}, {steps: 1}]"
)


def _reply_lengths(run: Path, step: int, split: str = "trajectories") -> list[int]:
    lines = (run / split / f"step_{step:06d}.jsonl").read_text().splitlines()
    return [b - a for line in lines for a, b in (t["response_span"] for t in json.loads(line)["turns"])]


def test_stages_set_rollout_limits_logged_and_resumed(tmp_path):
    """DeepScaleR-style staged context through `agentrl train`: each step's replies are cut at its
    stage's budget (the tiny random model almost never stops early), its groups have the stage's
    size, the limits are logged (metrics.jsonl, TensorBoard), evaluation plays the run's own limits,
    and --resume replays the later stages with theirs."""
    extra = ("rollout.group_size=4", "eval.every=3", "eval.episodes=2", "algo.kl.coef=0")
    assert main(["train", *_args(tmp_path, "staged", STAGED, *extra)]) == 0
    run = tmp_path / "staged"
    rows = _rows(run)
    assert [r["curriculum/stage"] for r in rows] == [0, 1, 2]
    assert [r["curriculum/max_new_tokens"] for r in rows] == [3, 5, 8]
    assert [r["curriculum/max_context_tokens"] for r in rows] == [600, 1024, 1024]
    assert [r["curriculum/group_size"] for r in rows] == [2, 4, 4]
    lengths = {step: _reply_lengths(run, step) for step in (1, 2, 3)}
    assert [len(lengths[s]) for s in (1, 2, 3)] == [
        2 * 2,
        2 * 4,
        2 * 4,
    ]  # n_groups 2 x the stage's group size
    assert [max(lengths[s]) for s in (1, 2, 3)] == [3, 5, 8]
    assert max(_reply_lengths(run, 3, "eval")) == 8  # evaluation: the run's own limits
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert {"curriculum/max_new_tokens", "curriculum/max_context_tokens"} <= set(acc.Tags()["scalars"])

    # Resume after step 1 (in stage 0): steps 2 and 3 play stages 1 and 2 with their limits again.
    for step in (2, 3):
        shutil.rmtree(run / "checkpoints" / f"step_{step:06d}")
    assert main(["train", "--resume", *_args(tmp_path, "staged", STAGED, *extra)]) == 0
    again = _rows(run)
    assert [r["curriculum/max_new_tokens"] for r in again] == [3, 5, 8]
    assert [max(_reply_lengths(run, s)) for s in (2, 3)] == [5, 8]
    assert len(_reply_lengths(run, 2)) == 2 * 4
