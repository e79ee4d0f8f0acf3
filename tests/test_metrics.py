"""Success intervals, the console's progress text and the learning table's scripts, against
hand-computed numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from agentrl.training.logger import progress_text
from agentrl.training.metrics import paired_change, paired_p_value, wilson_interval


def test_wilson_interval_by_hand():
    # 5/16: p = 0.3125, z^2/n = 0.2401; centre (0.3125 + 0.12005) / 1.2401 = 0.34881,
    # half 1.96 * sqrt(0.3125 * 0.6875 / 16 + 3.8416 / 1024) / 1.2401 = 0.20716
    assert wilson_interval(5, 16) == pytest.approx((0.14165, 0.55597), abs=1e-4)
    # 0/16: the upper end is 2 * centre = 2 * (3.8416 / 32) / 1.2401 = 0.19361, not 0
    assert wilson_interval(0, 16) == pytest.approx((0.0, 0.19361), abs=1e-4)
    low, high = wilson_interval(16, 16)
    assert high == 1.0 and low == pytest.approx(1 - 0.19361, abs=1e-4)  # symmetric to 0/16
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no evidence: anything


def test_progress_text_shows_eval_interval_and_phase_times():
    last = {"train/reward": 1.234, "train/success_rate": 0.25, "eval/success_rate": 0.3125}
    last.update({"eval/success_ci_low": 0.1416, "eval/success_ci_high": 0.5560})
    phases = {"timing/rollout_s": 31.2, "timing/update_s": 40.6, "timing/sync_s": 0.4}
    assert (
        progress_text(last, phases)
        == "reward=1.23 success=0.25 eval=0.31[0.14,0.56] | roll 31s upd 41s sync 0s"
    )
    assert progress_text({}, {}) == ""


def test_summary_line_from_a_runs_metrics(tmp_path):
    import json

    from agentrl.config import load_config
    from agentrl.training.trainer import summary_line

    cfg = load_config(env="sokoban")
    rows = [
        {"step": 0, "eval/success_rate": 0.0, "eval/episodes": 16, "eval/success_ci_low": 0.0, "eval/success_ci_high": 0.19},
        {"step": 1, "train/reward": 1.0},
        {"step": 2, "eval/success_rate": 0.3125, "eval/episodes": 16, "eval/success_ci_low": 0.14, "eval/success_ci_high": 0.56},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert summary_line(cfg, tmp_path) == (
        "agentrl: held-out success base (step 0) 0.000 (0/16, 95% CI 0.00-0.19) -> "
        f"step 2 0.312 (5/16, 95% CI 0.14-0.56). Replay: agentrl replay {tmp_path}"
    )
    cfg.run.init = "runs/warm"
    assert "held-out success warm start (step 0)" in summary_line(cfg, tmp_path)
    # With both evaluations' episodes on disk it also counts the puzzles gained and lost:
    # step 0 solved seeds 0-1 of 0-3, step 2 seeds 1-3: +2 (seeds 2, 3) -1 (seed 0), p = 1.
    from agentrl.rollout.trajectory import Trajectory, step_filename, write_jsonl

    for step, solved in ((0, {0, 1}), (2, {1, 2, 3})):
        episodes = [Trajectory(env="sokoban", seed=s, group=s, success=s in solved) for s in range(4)]
        write_jsonl(tmp_path / "eval" / step_filename(step), episodes)
    assert summary_line(cfg, tmp_path) == (
        "agentrl: held-out success warm start (step 0) 0.000 (0/16, 95% CI 0.00-0.19) -> "
        "step 2 0.312 (5/16, 95% CI 0.14-0.56); step 2 against step 0 on the same puzzles: "
        f"+2 -1 (p = 1.00, 4 puzzles). Replay: agentrl replay {tmp_path}"
    )
    # eval.at_start=false: the first evaluation is not the warm start's, and is not called so.
    later = [{**rows[2], "step": 4}, {**rows[2], "step": 8, "eval/success_rate": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in later))
    assert summary_line(cfg, tmp_path).startswith(
        "agentrl: held-out success step 4 0.312 (5/16, 95% CI 0.14-0.56) -> step 8 0.500 (8/16"
    )
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n")
    assert summary_line(cfg, tmp_path) is None  # one evaluation: nothing to compare


def test_paired_p_value_by_hand():
    # 0 gained, 5 lost: 2 * (1/2)^5 = 0.0625
    assert paired_p_value(0, 5) == pytest.approx(0.0625)
    # 2 gained, 8 lost: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024
    assert paired_p_value(2, 8) == pytest.approx(0.109375)
    assert paired_p_value(8, 2) == paired_p_value(2, 8)  # two-sided
    assert paired_p_value(3, 3) == 1.0 and paired_p_value(0, 0) == 1.0  # capped; nothing changed
    assert paired_p_value(0, 10) == pytest.approx(2 / 1024)


def test_paired_change_counts_puzzles_gained_and_lost_on_the_common_seeds():
    from agentrl.rollout.trajectory import Trajectory

    def evals(outcomes: dict[int, bool]) -> list[Trajectory]:
        return [Trajectory(env="t", seed=s, group=s, success=ok) for s, ok in outcomes.items()]

    first = evals({0: True, 1: True, 2: False, 3: False, 4: True})
    later = evals({0: False, 1: True, 2: True, 3: True, 9: True})  # seed 4 unplayed, 9 new
    # common seeds 0-3: gained seeds 2 and 3, lost seed 0: p = 2 * (C(3,0) + C(3,1)) / 2^3 = 1 (capped)
    change = paired_change(first, later)
    assert (change.gained, change.lost, change.puzzles) == (2, 1, 4)
    assert str(change) == "+2 -1 (p = 1.00, 4 puzzles)"
    # 16 gained, 3 lost: p = 2 * (1 + 19 + 171 + 969) / 2^19 = 0.004425
    many = evals({s: s < 3 for s in range(19)}), evals({s: s >= 3 for s in range(19)})
    assert str(paired_change(*many)) == "+16 -3 (p = 4.4e-03, 19 puzzles)"
    # A seed played twice counts by its first episode.
    assert paired_change(evals({0: False}), evals({0: True}) + evals({0: False})).gained == 1


def test_eval_table_prints_each_evaluation_against_the_first(load_script, tmp_path, monkeypatch, capsys):
    import json

    from agentrl.rollout.trajectory import Trajectory, step_filename, write_jsonl

    script = load_script("eval_table")
    # Two runs, one evaluation each, on seeds 0-3: the warm start solves 0 and 1, RL 1, 2 and 3.
    for name, solved in (("warm", {0, 1}), ("rl", {1, 2, 3})):
        run = tmp_path / name
        episodes = [Trajectory(env="t", seed=s, group=s, success=s in solved) for s in range(4)]
        write_jsonl(run / "eval" / step_filename(0), episodes)
        row = {"step": 0, "eval/success_rate": len(solved) / 4, "eval/format_valid_rate": 1.0}
        row.update({"eval/reward": 0.5, "timing/eval_s": 120.0})
        (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr(sys, "argv", ["eval_table.py", str(tmp_path / "warm"), str(tmp_path / "rl")])
    script.main()
    warm, rl = capsys.readouterr().out.splitlines()[2:]
    # 2/4: Wilson 0.15-0.85; 3/4: 0.30-0.95; 2 minutes of eval each; RL +2 (seeds 2, 3) -1 (seed 0).
    assert warm == "| warm | 0 | 0.500 | 0.15-0.85 | 1.000 | 0.25 | +0.50 | 4 | 2 | - |"
    assert rl == "| rl | 0 | 0.750 | 0.30-0.95 | 1.000 | 0.25 | +0.50 | 4 | 2 | +2 -1 (p = 1.00, 4 puzzles) |"


def test_paired_eval_compares_sampled_success_puzzle_by_puzzle(load_script, tmp_path):
    import random

    from agentrl.rollout.trajectory import Trajectory, write_jsonl

    script = load_script("paired_eval")
    rng = random.Random(0)
    # Three same-sign differences: 2 of the 8 sign patterns reach |sum| = 3, p = 2/8.
    assert script.sign_flip_p([1.0, 1.0, 1.0], rng) == pytest.approx(0.25)
    # +0.5 and -0.25: every pattern's |sum| (0.75 or 0.25) reaches the observed 0.25: p = 1.
    assert script.sign_flip_p([0.5, -0.25, 0.0], rng) == 1.0
    # With +-1 differences (one greedy episode a puzzle) it is McNemar's exact test.
    assert script.sign_flip_p([1.0] * 2 + [-1.0] * 8, rng) == pytest.approx(paired_p_value(2, 8))
    # however many changed (27 rose, 25 fell: beyond exact enumeration)
    assert script.sign_flip_p([1.0] * 27 + [-1.0] * 25, rng) == pytest.approx(paired_p_value(27, 25))
    # 20 differences of +-0.5 (beyond enumeration, not McNemar): the Monte Carlo p of 14 up, 6 down
    # is near the exact binomial's 2 * P(X <= 6 | 20, 1/2) = 0.1153
    assert script.sign_flip_p([0.5] * 14 + [-0.5] * 6, rng) == pytest.approx(0.1153, abs=0.01)

    # Four tries a puzzle: seed 0 solved 2/4 -> 4/4, seed 1 4/4 -> 3/4, seed 2 only in the first.
    def evals(path: Path, solved: dict[int, list[bool]]) -> Path:
        episodes = [
            Trajectory(env="t", seed=s, group=s, success=ok) for s, oks in solved.items() for ok in oks
        ]
        return write_jsonl(path, episodes)

    before = evals(tmp_path / "a.jsonl", {0: [True, True, False, False], 1: [True] * 4, 2: [False] * 4})
    after = evals(tmp_path / "b.jsonl", {0: [True] * 4, 1: [True, True, True, False]})
    r = script.compare(script.solved_share(before), script.solved_share(after))
    assert (r["puzzles"], r["rose"], r["fell"]) == (2, 1, 1)
    assert (r["before"], r["after"], r["mean_diff"]) == pytest.approx((0.75, 0.875, 0.125))
    assert r["p"] == 1.0 and r["ci_low"] <= 0.125 <= r["ci_high"]


LEARNING_DEMO = Path(__file__).resolve().parents[1] / "scripts" / "learning_demo.sh"


def _learning_demo_args(tmp_path, env: str, arm: str) -> tuple[int, list[str], str]:
    """Run scripts/learning_demo.sh with a stand-in ``agentrl`` on PATH that records its arguments
    (one per line): the script's exit code, the recorded arguments and its stderr."""
    fake = tmp_path / "bin" / "agentrl"
    fake.parent.mkdir(exist_ok=True)
    record = tmp_path / f"args-{env}-{arm}"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    env_vars = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ENV": env}
    done = subprocess.run(["bash", str(LEARNING_DEMO), arm], env=env_vars, capture_output=True, text=True)
    args = record.read_text().splitlines() if record.is_file() else []
    return done.returncode, args, done.stderr


@pytest.mark.parametrize("env", ["countdown", "knights_knaves", "math"])
def test_learning_demo_arms_are_valid_runs_on_128_common_puzzles(tmp_path, env):
    """Each arm's command parses with agentrl's own CLI and config checks, and both arms of an env
    evaluate the same 128 held-out puzzles after the same number of RL steps."""
    from agentrl.cli import build_parser
    from agentrl.config import load_config

    configs = {}
    for arm in ("rl", "sft-rl"):
        code, argv, stderr = _learning_demo_args(tmp_path, env, arm)
        assert code == 0, stderr
        args = build_parser().parse_args(argv)
        assert args.command == "train" and args.env == env
        configs[arm] = load_config(env=args.env, overrides=args.overrides, name=args.name)
    rl, sft_rl = configs["rl"], configs["sft-rl"]
    assert rl.eval.episodes == sft_rl.eval.episodes == 128
    assert rl.train.steps == sft_rl.train.steps == rl.eval.every == sft_rl.eval.every
    assert not rl.sft.warm_start and sft_rl.sft.warm_start
    assert sft_rl.sft.eval_every == 0  # the warm start is evaluated once, at RL's step 0
    assert rl.run.name == f"table-{env}-rl" and sft_rl.run.name == f"table-{env}-sft-rl"
    assert rl.rollout.reply_prefix == sft_rl.rollout.reply_prefix == "<think>"
    # Both arms run the same RL: the same tries per step and the same update.
    assert rl.rollout.group_size == sft_rl.rollout.group_size
    assert rl.train.n_groups == sft_rl.train.n_groups
    assert rl.algo == sft_rl.algo
    if env in ("countdown", "math"):  # the Sokoban recipe's RL (README, learning table)
        temperature = 1.0 if env == "countdown" else 0.7
        assert (sft_rl.rollout.group_size, sft_rl.train.n_groups, sft_rl.rollout.temperature) == (
            8,
            8,
            temperature,
        )
        assert sft_rl.algo.mixed_success_only and sft_rl.train.init_optimizer_state
    else:  # the env's own recipe: 4 groups x 4 tries
        assert (sft_rl.rollout.group_size, sft_rl.train.n_groups) == (4, 4)
        assert not sft_rl.algo.mixed_success_only


def test_learning_demo_refuses_an_env_or_arm_it_has_no_runs_for(tmp_path):
    code, args, stderr = _learning_demo_args(tmp_path, "frozen_lake", "rl")
    assert code == 2 and args == []
    assert "countdown, knights_knaves, math or sokoban, got 'frozen_lake'" in stderr
    code, args, stderr = _learning_demo_args(tmp_path, "sokoban", "sft-rl")
    assert code == 2 and args == [] and "main job" in stderr


def test_learning_demo_runs_sokoban_rl_alone_as_the_main_jobs_rl_from_the_base_model(tmp_path):
    from agentrl.cli import build_parser
    from agentrl.config import load_config

    code, argv, stderr = _learning_demo_args(tmp_path, "sokoban", "rl")
    assert code == 0, stderr
    args = build_parser().parse_args(argv)
    rl = load_config(env=args.env, overrides=args.overrides, name=args.name)
    main_job = load_config(env="sokoban")
    assert rl.run.name == "table-sokoban-rl" and not rl.sft.warm_start and rl.run.init is None
    assert rl.eval.episodes == main_job.eval.episodes == rl.eval.base_episodes == 128 and rl.eval.at_start
    # The main job's RL in everything but the optimizer state the base model does not have.
    assert rl.rollout == main_job.rollout and rl.algo == main_job.algo and rl.env == main_job.env
    assert rl.train == replace(main_job.train, init_optimizer_state=False)
    # Evaluated at steps 0 and 4 only: a step-2 evaluation of the base model would add minutes.
    assert rl.eval == replace(main_job.eval, base_episodes=128, every=4)


def test_paired_eval_names_a_missing_file_and_what_to_give_instead(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "paired_eval.py"
    missing = tmp_path / "runs" / "x" / "eval" / "step_000004.jsonl"
    done = subprocess.run(
        [sys.executable, str(script), str(missing), str(missing)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{missing} is not a file" in done.stderr and "agentrl eval --out DIR" in done.stderr


def test_rl_headroom_splits_greedy_failures_by_whether_a_sampled_try_solved_them(load_script, tmp_path):
    from agentrl.rollout.trajectory import Trajectory, write_jsonl

    script = load_script("rl_headroom")

    def evals(name: str, solved: dict[int, list[bool]]) -> Path:
        episodes = [
            Trajectory(env="t", seed=s, group=s, success=ok) for s, oks in solved.items() for ok in oks
        ]
        return write_jsonl(tmp_path / name, episodes)

    # Four tries a puzzle: seed 0 4/4, 1 2/4, 2 1/4, 3 0/4, 4 3/4; greedy solves seeds 0 and 1 only.
    tries = {0: [True] * 4, 1: [True, False, True, False], 2: [False, False, True, False]}
    tries |= {3: [False] * 4, 4: [True, True, False, True]}
    sampled = script.solved_tries(evals("sampled.jsonl", tries))
    greedy = script.greedy_solved(evals("greedy.jsonl", {s: [s < 2] for s in range(5)}))
    room = script.headroom(sampled, greedy)
    assert (room.puzzles, room.tries, room.greedy) == (5, 4, 2)
    assert (room.reachable, room.unreached, room.ceiling) == ([2, 4], [3], 4)
    # pass@1: mean share (4+2+1+0+3)/16 = 0.5; pass@2 per seed 1, 1-1/6, 1-3/6, 0, 1 -> 3.333/5;
    # pass@4: 4 of 5 seeds solved at least once.
    assert room.pass_at == pytest.approx({1: 0.5, 2: 10 / 15, 4: 0.8})
    # +10 points of 5 puzzles needs 2.5 solved: within the ceiling of 4; +50 needs 4.5: 0.5 beyond.
    assert script.report(room, sampled, 10.0)[2].endswith("+10 points needs 2.5/5: within reach")
    lines = script.report(room, sampled, 50.0)
    assert lines[2].endswith("+50 points needs 4.5/5: 0.5 puzzles that no try solves")
    assert lines[3] == "reachable failures (tries solved): 4 (3/4), 2 (1/4)"
    # After RL greedy solves 0, 2 and 3: seed 2 gained within reach, seed 3 beyond it, seed 1 lost.
    after = script.greedy_solved(evals("after.jsonl", {s: [s in (0, 2, 3)] for s in range(5)}))
    assert script.gains(sampled, greedy, after) == ([2], [3], [1])
