"""Warm start: oracle demonstrations templated as RL sees them, SFT through the CLI, --from runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

import agentrl  # noqa: F401  isort: skip
from agentrl.cli import main
from agentrl.config import ConfigError, load_config
from agentrl.models import load_model
from agentrl.rollout.engines.hf import HFEngine
from agentrl.rollout.manager import RolloutConfig, RolloutManager
from agentrl.rollout.trajectory import write_jsonl
from agentrl.training.checkpoint import saved_optimizer_state
from agentrl.training.sft import oracle_demonstrations, oracle_reply, successful_episodes


@pytest.fixture()
def manager(tiny_model_path, tokenizer):
    model = load_model(tiny_model_path)
    cfg = RolloutConfig(group_size=1, max_turns=3, max_new_tokens=48, env_workers=1)
    yield RolloutManager(HFEngine(model, tokenizer.pad_token_id), tokenizer, "sokoban", cfg)


@pytest.mark.parametrize("env", ["sokoban", "countdown", "knights_knaves", "math"])
def test_oracle_demonstrations_win(tiny_model_path, tokenizer, env):
    model = load_model(tiny_model_path)
    cfg = RolloutConfig(group_size=1, max_turns=3, max_new_tokens=48, env_workers=1)
    rm = RolloutManager(HFEngine(model, tokenizer.pad_token_id), tokenizer, env, cfg)
    trajs = rm.rollout(
        [10_000, 10_001, 10_002], scripted=oracle_reply(think=True, max_actions=rm.max_actions)
    )
    assert sum(t.success for t in trajs) >= 2  # Sokoban rooms needing > 9 moves may not fit 3 turns
    for traj in trajs:
        assert all(t.format_ok for t in traj.turns)
        reply = traj.turns[0].reply
        assert reply.startswith("<think>") and "</think><answer>" in reply
        assert "[" not in reply.split("</think>")[0]  # a true thought, never a placeholder


def test_sft_reset_options_pick_the_demonstrated_rooms(tiny_model_path, tokenizer):
    """sft.reset_options reach the demonstrations' resets: with min_plan_length 4 no room of 1-2
    moves is demonstrated (8 plain seeds from 10000 include some); RL's env.train_options do not."""
    model = load_model(tiny_model_path)
    rm = RolloutManager(
        HFEngine(model, tokenizer.pad_token_id),
        tokenizer,
        "sokoban",
        RolloutConfig(group_size=1, max_turns=6, max_new_tokens=48, env_workers=1),
    )
    lengths = {}
    for sets in ([], ["sft.reset_options.min_plan_length=4"]):
        cfg = load_config(env="sokoban", overrides=["env.train_options.min_plan_length=7", *sets])
        demos = oracle_demonstrations(cfg, rm, episodes=8)
        assert len(demos) >= 6
        lengths[bool(sets)] = [d.reset_info["optimal_plan_length"] for d in demos]
    assert min(lengths[False]) < 4 <= min(lengths[True])
    assert min(lengths[True]) < 7  # env.train_options shape RL's rooms, not the demonstrations'


def test_demonstrations_are_templated_exactly_as_rl_episodes(manager, tokenizer):
    demo = manager.rollout([10_003], scripted=oracle_reply(think=True, max_actions=manager.max_actions))[0]
    played = manager.rollout([10_003], sampling_seed=1)[0]
    demo_turn, played_turn = demo.turns[0], played.turns[0]
    start, end = demo_turn.prompt_span
    # The same prompt tokens the policy sees in RL, then the demonstration's tokens as the "reply".
    assert (
        demo.samples[0].token_ids[start:end] == played.samples[0].token_ids[slice(*played_turn.prompt_span)]
    )
    sample = demo.samples[0]
    # The first turn's reply: from the end of its prompt to the next turn's prompt (or the end).
    reply_end = demo.turns[1].prompt_span[0] if len(demo.turns) > 1 else len(sample.token_ids)
    trained = [t for t, m in zip(sample.token_ids[end:reply_end], sample.loss_mask[end:reply_end]) if m]
    assert tokenizer.decode(trained[:-1]) == demo_turn.reply  # reply tokens (+ end of turn) only
    assert trained[-1] in manager.chat.eot_ids
    if len(demo.turns) > 1:  # observations of later turns are in the context with mask 0
        later = demo.turns[1].prompt_span
        assert not any(sample.loss_mask[later[0] : later[1]])


@pytest.mark.slow  # SFT then RL, end to end
def test_sft_learns_and_rl_starts_from_it(tmp_path):
    sets = [
        f"run.root={tmp_path}",
        "sft.episodes=8",
        "sft.batch_episodes=8",
        "sft.epochs=3",
        "train.lr=1e-3",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=8",
        "eval.episodes=2",
        "eval.every=3",
        "run.progress=false",
    ]
    args = ["sft", "--env", "sokoban", "--model", "tiny-random", "--name", "warm"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    rows = [json.loads(x) for x in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["sft/nll"] for r in rows if "sft/nll" in r]
    assert len(nll) == 3 and nll[0] > nll[1] > nll[2]  # the same 8 demonstrations three times
    assert "eval/success_rate" in rows[-1]
    assert (tmp_path / "warm" / "checkpoints" / "step_000003" / "hf" / "config.json").is_file()

    rl = ["train", "--env", "sokoban", "--init", str(tmp_path / "warm"), "--name", "rl"]
    rl_sets = [
        f"run.root={tmp_path}",
        "train.steps=1",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "rollout.max_turns=1",
        "eval.every=0",
        "run.progress=false",
        "sft.warm_start=false",  # RL from the SFT run given by --init (the recipe's own warm start off)
    ]
    assert main([*rl, *[a for s in rl_sets for a in ("--set", s)]]) == 0


def test_from_runs_keeps_successes_once(manager, tmp_path):
    demos = manager.rollout(
        [10_004, 10_005], scripted=oracle_reply(think=True, max_actions=manager.max_actions)
    )
    failed = manager.rollout([10_006], scripted=lambda env: "no answer here")
    assert all(t.success for t in demos) and not failed[0].success
    path = write_jsonl(tmp_path / "run" / "trajectories" / "step_000001.jsonl", [*demos, *failed])
    write_jsonl(tmp_path / "run" / "eval" / "step_000001.jsonl", demos)  # the same episodes again
    # A hand-edited copy: a successful episode with a reward that is text, and a line that is no record.
    bad = demos[0].to_dict()
    bad["turns"][0]["reward"], bad["seed"] = "10", 10_007
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(bad) + "\n42\n")
    skipped: list[str] = []
    kept = successful_episodes([str(tmp_path / "run")], skipped)
    assert sorted(t.seed for t in kept) == [10_004, 10_005]
    assert skipped == [
        f"{path.parent}/step_000001.jsonl:4: skipped a malformed record: turns[0].reward: expected float, got str",
        f"{path.parent}/step_000001.jsonl:5: skipped a malformed record: expected object, got int",
    ]
    with pytest.raises(ValueError, match="no trajectory files"):
        successful_episodes([str(Path(tmp_path) / "empty")])


def test_sft_evaluates_every_sft_eval_every_updates_and_the_last_unless_a_warm_start():
    from agentrl.training.sft import evaluation_due

    def due(total: int, eval_last: bool = True, **sets) -> list[int]:
        cfg = load_config(env="sokoban", overrides=[f"{k.replace('__', '.')}={v}" for k, v in sets.items()])
        return [s for s in range(1, total + 1) if evaluation_due(cfg, s, total, eval_last)]

    assert due(30, eval__every=4, sft__eval_every=10) == [10, 20, 30]
    assert due(30, False, eval__every=4, sft__eval_every=10) == [10, 20]  # RL's step 0 does 30
    assert due(9, eval__every=4, sft__eval_every="null") == [4, 8, 9]  # unset: eval.every's
    assert due(9, eval__every=4, sft__eval_every=0) == [9]  # 0: none during SFT, the end still
    assert due(9, False, eval__every=4, sft__eval_every=0) == []
    assert due(9, eval__every=0, sft__eval_every=3) == []  # eval.every=0 turns evaluation off
    with pytest.raises(ConfigError, match="sft.eval_every must be >= 0"):
        load_config(env="sokoban", overrides=["sft.eval_every=-1"])


def test_sft_evaluates_the_first_sft_eval_episodes_between_updates_and_all_after_the_last():
    from agentrl.training.sft import eval_config

    cfg = load_config(env="sokoban", overrides=["eval.episodes=128", "sft.eval_episodes=32"])
    assert [eval_config(cfg, step, 30).eval.episodes for step in (10, 20, 30)] == [32, 32, 128]
    assert eval_config(replace(cfg, eval=replace(cfg.eval, episodes=16)), 10, 30).eval.episodes == 16
    unset = load_config(env="sokoban", overrides=["eval.episodes=128", "sft.eval_episodes=null"])
    assert eval_config(unset, 10, 30).eval.episodes == 128
    with pytest.raises(ConfigError, match="sft.eval_episodes"):
        load_config(env="sokoban", overrides=["sft.eval_episodes=0"])


def _warm_start_args(root: Path, name: str, steps: int) -> list[str]:
    sets = [
        f"run.root={root}",
        "engine.name=hf",
        "sft.warm_start=true",
        "sft.episodes=6",
        "sft.batch_episodes=3",
        "sft.lr=1e-3",
        "train.init_optimizer_state=true",
        f"train.steps={steps}",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=8",
        "eval.episodes=2",
        "eval.base_episodes=1",
        "eval.every=1",
        "sft.eval_every=1",
        "sft.eval_episodes=1",
        "run.progress=false",
    ]
    return ["train", "--env", "sokoban", "--model", "tiny-random", "--name", name] + [
        a for s in sets for a in ("--set", s)
    ]


@pytest.mark.slow  # SFT then RL, end to end
def test_train_with_a_warm_start_is_one_command_and_resumes_without_redoing_it(tmp_path, capsys):
    """sft.warm_start: the SFT run in RUN/warm_start (base evaluated at its step 0, then every
    sft.eval_every update but the last),
    then RL from its checkpoint in RUN; the last line reads base -> warm start -> final; --resume
    continues RL and leaves the warm start alone."""
    assert main(_warm_start_args(tmp_path, "ws", steps=1)) == 0
    run, warm = tmp_path / "ws", tmp_path / "ws" / "warm_start"
    warm_rows = [json.loads(x) for x in (warm / "metrics.jsonl").read_text().splitlines()]
    # The base model, then update 1 of 2 (sft.eval_every=1); update 2's weights are RL's step 0.
    assert [r["step"] for r in warm_rows if "eval/success_rate" in r] == [0, 1]
    # eval.base_episodes, then sft.eval_episodes between updates
    assert [r["eval/episodes"] for r in warm_rows if "eval/episodes" in r] == [1, 1]
    assert [r["step"] for r in warm_rows if "sft/nll" in r] == [1, 2]  # 6 demonstrations, 3 per update
    assert (warm / "checkpoints" / "step_000002" / "hf" / "config.json").is_file()
    rl_rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rl_rows if "eval/success_rate" in r] == [0, 1]
    assert rl_rows[0]["eval/episodes"] == 2  # the warm start: every held-out seed
    assert "init: " + str(warm) in (run / "config.yaml").read_text()
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("agentrl: held-out success base 0.") and " -> warm start (step 0) " in last
    assert f"agentrl replay {warm}" in last
    # RL's AdamW went on from the warm start's 2 steps (a fresh one would count RL's only: at most
    # 1; the tiny model's step may have had no advantage to step on).
    moments = saved_optimizer_state(run / "checkpoints" / "step_000001" / "hf")
    assert moments is not None and min(float(m["step"]) for m in moments["state"].values()) >= 2.0

    data = (warm / "sft_data.jsonl").stat().st_mtime_ns
    args = _warm_start_args(tmp_path, "ws", steps=2)
    assert main([*args[:-2], "--resume", *args[-2:]]) == 0
    assert (warm / "sft_data.jsonl").stat().st_mtime_ns == data  # not rebuilt, not retrained
    assert (run / "checkpoints" / "step_000002").is_dir()


def test_sft_reset_options_the_env_rejects_fail_before_the_run_starts(tmp_path, capsys):
    args = ["sft", "--env", "sokoban", "--model", "tiny-random", "--name", "typo"]
    sets = [f"run.root={tmp_path}", "sft.reset_options.min_plan_lenght=4"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert "unknown reset options ['min_plan_lenght']" in err and "sft.reset_options" in err
    assert not (tmp_path / "typo").exists()


def test_a_warm_start_into_a_taken_run_name_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.yaml").write_text("x: 1\n")
    assert main(_warm_start_args(tmp_path, "taken", steps=1)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not (tmp_path / "taken" / "warm_start").exists()
