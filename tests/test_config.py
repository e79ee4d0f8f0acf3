"""The config tree: recipes load, overrides type-check, mistakes fail early with the fix in the message."""

from __future__ import annotations

from pathlib import Path

import pytest

import agentrl  # noqa: F401  isort: skip
from agentrl.config import ConfigError, configs_dir, load_config

RECIPES = sorted(p.name for p in configs_dir().glob("*.yaml"))


def test_every_recipe_loads_and_validates():
    assert len(RECIPES) >= 10
    for name in RECIPES:
        cfg = load_config(config_file=str(configs_dir() / name))
        assert cfg.train.n_groups * cfg.rollout.group_size == cfg.episodes_per_step


def test_env_default_recipe_is_used_for_bare_env():
    cfg = load_config(env="sokoban")
    assert cfg.rollout.format_penalty == -1.0  # from configs/sokoban.yaml, not the class default
    assert cfg.env.name == "sokoban"


def test_overrides_are_typed():
    cfg = load_config(
        env="countdown", overrides=["algo.kl.coef=1e-3", "rollout.think=false", "train.steps=7"]
    )
    assert cfg.algo.kl.coef == 0.001 and cfg.rollout.think is False and cfg.train.steps == 7
    cfg = load_config(env="sokoban", overrides=["env.kwargs={dim_room: [7, 7], num_boxes: 2}"])
    assert cfg.env.kwargs == {"dim_room": [7, 7], "num_boxes": 2}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.kl.coeff=1", "Did you mean algo.kl.coef?"),
        ("train.n_group=2", "Did you mean train.n_groups?"),
        ("train.n_groups=abc", "train.n_groups must be a number"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("rollout.think=maybe", "rollout.think must be true or false"),
        ("algo.advantage.estimator=grop", "Did you mean 'grpo'?"),
        ("algo.mini_batches=3", "must divide the 64 episodes per step"),
        (("engine.name=hf", "train.zero_stage=3"), "use train.zero_stage=2"),
        ("engine.name=vlm", "Did you mean 'vllm'?"),
        ("rollout.group_size=1", "group_size must be at least 2"),
        ("eval.episodes=20000", "overlap the training seeds"),
        ("rollout.max_new_tokens=5000", "exceeds rollout.max_context_tokens"),
        (
            "rollout.max_new_tokens=1536",
            "equals rollout.max_context_tokens=1536, leaving no room for the prompt",
        ),
        ("algo.shaping.cosine_max_tokens=0", "cosine_max_tokens (L_max) must be a positive number"),
        ("algo.min_return_spread=-1", "algo.min_return_spread must be >= 0"),
        (
            ("algo.mixed_success_only=false", "algo.min_return_spread=1"),
            "widens algo.mixed_success_only's filter, which is off",
        ),
        ("algo.unfaithful_turn_advantage=1", "a positive value would reward those replies"),
        ("algo.unfaithful_turn_advantage=nan", "must be a finite number <= 0"),
        (
            ("rollout.think=false", "algo.faithful_only=true"),
            "algo.faithful_only judge each reply's moves against its <think> thought",
        ),
        ("nonsense", "must look like key=value"),
    ],
)
def test_mistakes_name_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(env="sokoban", overrides=[override] if isinstance(override, str) else list(override))
    assert message in str(info.value)


def test_unknown_env_and_missing_file():
    with pytest.raises(ConfigError, match="Did you mean 'sokoban'"):
        load_config(env="sokobn")
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_file=str(Path("nope.yaml")))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(env="knights_knaves", overrides=["train.lr=3e-6"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(config_file=str(path))
    assert again.to_dict() == cfg.to_dict()


def _ds_json(tmp_path: Path, stage: int) -> str:
    path = tmp_path / f"z{stage}.json"
    path.write_text(f'{{"zero_optimization": {{"stage": {stage}}}}}')
    return str(path)


def test_deepspeed_json_sets_the_zero_stage_and_its_checks_apply(tmp_path):
    cfg = load_config(env="countdown", overrides=[f"train.deepspeed_config={_ds_json(tmp_path, 2)}"])
    assert cfg.train.zero_stage == 2
    # ZeRO-3 in a user's JSON is refused with the hf engine like train.zero_stage=3 is.
    with pytest.raises(ConfigError, match="zero_stage=3"):
        load_config(
            env="countdown",
            overrides=["engine.name=hf", f"train.deepspeed_config={_ds_json(tmp_path, 3)}"],
        )
    with pytest.raises(ConfigError, match="sets ZeRO stage 2"):
        load_config(
            env="countdown",
            overrides=["train.zero_stage=1", f"train.deepspeed_config={_ds_json(tmp_path, 2)}"],
        )
    with pytest.raises(ConfigError, match="no such file"):
        load_config(env="countdown", overrides=[f"train.deepspeed_config={tmp_path / 'missing.json'}"])


def test_accelerate_launch_deepspeed_settings_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    assert load_config(env="countdown").train.zero_stage == 1
    assert load_config(env="countdown", overrides=["train.zero_stage=2"]).train.zero_stage == 2  # ours wins
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", _ds_json(tmp_path, 2))
    cfg = load_config(env="countdown")
    assert (cfg.train.zero_stage, cfg.train.deepspeed_config) == (2, str(tmp_path / "z2.json"))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    assert load_config(env="countdown").train.zero_stage == 0


def test_overrides_inside_free_form_mappings_are_read_as_yaml():
    cfg = load_config(
        env="sokoban",
        overrides=[
            "env.kwargs.describe_positions=false",
            "env.kwargs.dim_room=[7, 7]",
            "engine.vllm.gpu_memory_utilization=0.4",
            "run.name=123",  # a typed str field stays a string
        ],
    )
    assert cfg.env.kwargs["describe_positions"] is False  # not the truthy string "false"
    assert cfg.env.kwargs["dim_room"] == [7, 7] and cfg.env.kwargs["num_boxes"] == 1  # merged
    assert cfg.engine.vllm == {"gpu_memory_utilization": 0.4}
    assert cfg.run.name == "123"
    with pytest.raises(ConfigError, match="not a valid YAML value"):
        load_config(env="sokoban", overrides=["env.kwargs.dim_room=[7, 7"])


def test_optimizer_moments_are_carried_only_from_a_checkpoint_at_zero_stage_0():
    from agentrl.training.policy import carries_optimizer_state

    cfg = load_config(env="sokoban", overrides=["run.init=runs/x"])
    assert cfg.train.init_optimizer_state and carries_optimizer_state(cfg)  # the recipe's RL
    # RL alone (no warm start, no --init): nothing to carry, AdamW from zero; not an error.
    alone = load_config(env="sokoban", overrides=["sft.warm_start=false"])
    assert not carries_optimizer_state(alone)
    # ZeRO-2 shards the optimizer: it still loads, and AdamW starts from zero.
    sharded = load_config(env="sokoban", overrides=["train.zero_stage=2", "run.init=runs/x"])
    assert not carries_optimizer_state(sharded)
