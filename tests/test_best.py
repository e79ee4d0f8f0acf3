"""The run's best evaluation (agentrl/training/best.py): which one it is, a significant drop from it,
its exported model, and what the console and the summary line say; against hand-counted puzzles."""

from __future__ import annotations

import json
from pathlib import Path

import envs_for_tests  # noqa: F401  (registers test_letters)
import pytest

from agentrl.rollout.trajectory import Trajectory, step_filename, write_jsonl
from agentrl.training import best
from agentrl.training.metrics import wilson_interval


def _episodes(solved: set[int], seeds: range = range(10)) -> list[Trajectory]:
    return [Trajectory(env="t", seed=s, group=s, success=s in solved) for s in seeds]


def _evaluation(step: int, solved: set[int], seeds: range = range(10)) -> best.Evaluation:
    return best.Evaluation(step, _episodes(solved, seeds))


def test_the_best_is_the_earlier_evaluation_that_solved_most_of_the_same_puzzles():
    glance = _evaluation(0, set(range(4)), range(4))  # the base model's glance: 4 of 4, on 4 puzzles
    start = _evaluation(0, {0, 1, 2, 3, 4})
    peak = _evaluation(2, {0, 1, 2, 3, 4, 5, 6, 7})
    also_peak = _evaluation(3, {2, 3, 4, 5, 6, 7, 8, 9})
    # 2 solved: lost seeds 3-7 of the peak's eight, gained none: p = 2 / 2^5 = 0.0625.
    latest = _evaluation(4, {0, 1, 2})
    got = best.standing([glance, start, peak, also_peak], latest, drop_p=0.05)
    assert got.best is peak  # the earliest of the two with 8, not the glance's 4 of 4
    assert (got.change.gained, got.change.lost, got.change.puzzles) == (0, 5, 10)
    assert not got.new_best and not got.dropped  # p = 0.0625 is not below 0.05
    assert best.standing([start, peak], latest, drop_p=0.1).dropped
    # One more lost (seed 2): p = 2 / 2^6 = 0.031 < 0.05.
    assert best.standing([start, peak], _evaluation(4, {0, 1}), drop_p=0.05).dropped
    assert not best.standing([start, peak], _evaluation(4, {0, 1}), drop_p=0).dropped  # 0: never warn


def test_a_new_best_must_solve_more_and_the_first_evaluation_is_one():
    start = _evaluation(0, {0, 1, 2})
    assert best.standing([], start, drop_p=0.05).new_best
    assert best.standing([start], _evaluation(1, {0, 1, 2, 3}), 0.05).new_best
    same = best.standing([start], _evaluation(1, {3, 4, 5}), 0.05)  # as many, other puzzles: +3 -3
    assert not same.new_best and not same.dropped and same.best is start
    # An evaluation that did not play all the latest's puzzles is no candidate: 4 of 4 on seeds
    # 0-3 says nothing about seeds 4-9.
    assert best.standing([_evaluation(0, set(range(4)), range(4))], start, 0.05).best is None


def _write_run(run_dir: Path, evaluations: dict[int, set[int]]) -> None:
    """A run folder's evaluation rows and files, as the trainer writes them."""
    rows = []
    for step, solved in evaluations.items():
        write_jsonl(run_dir / "eval" / step_filename(step), _episodes(solved))
        n = len(solved)
        low, high = wilson_interval(n, 10)
        rows.append(
            {"step": step, "eval/success_rate": n / 10, "eval/episodes": 10.0}
            | {"eval/success_ci_low": low, "eval/success_ci_high": high}
        )
        rows.append({"step": step, "train/reward": 0.0})  # a training row: not an evaluation
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_logged_evaluations_are_those_of_the_metrics_rows_with_their_files(tmp_path):
    _write_run(tmp_path, {0: {0}, 2: {0, 1}, 4: {1}})
    (tmp_path / "eval" / step_filename(4)).unlink()  # a row whose file is gone is left out
    write_jsonl(tmp_path / "eval" / step_filename(6), _episodes({1}))  # a file without a row too
    got = best.logged_evaluations(tmp_path)
    assert [(e.step, e.solved()) for e in got] == [(0, 1), (2, 2)]
    assert best.logged_evaluations(tmp_path / "no run") == []


def test_the_drop_warning_and_the_summary_name_the_best_step_and_its_model(tmp_path):
    from agentrl.config import load_config
    from agentrl.training.trainer import drop_warning, summary_line

    cfg = load_config(env="sokoban")
    _write_run(tmp_path, {0: {0, 1, 2}, 2: set(range(9)), 4: {0, 1}})
    evaluations = best.logged_evaluations(tmp_path)
    latest = evaluations[-1]
    standing = best.standing(evaluations[:-1], latest, drop_p=0.05)
    assert standing.dropped  # 9 -> 2: +0 -7, p = 2 / 2^7 = 0.016
    text = drop_warning(cfg, tmp_path, standing, latest)
    assert "held-out success fell from 9/10 at step 2 to 2/10 at step 4" in text
    assert "on the same puzzles, +0 -7 (p = 0.02, 10 puzzles): RL is giving back" in text
    assert "set eval.keep_best=true" in text  # no best/ folder: nothing kept
    (tmp_path / best.BEST_DIR).mkdir()
    (tmp_path / best.BEST_DIR / best.BEST_FILE).write_text(json.dumps(best.best_record(evaluations[1])))
    assert best.read_best(tmp_path) == {"step": 2, "solved": 9, "puzzles": 10, "success_rate": 0.9}
    assert f"its model is in {tmp_path / 'best'}" in drop_warning(cfg, tmp_path, standing, latest)
    # The summary line names the best step where it was not the last.
    assert summary_line(cfg, tmp_path).endswith(
        f"+0 -1 (p = 1.00, 10 puzzles); the best was step 2 (9/10), its model in {tmp_path / 'best'}. "
        f"Replay: agentrl replay {tmp_path}"
    )
    # A drop from the starting model points at it.
    start_best = best.standing(evaluations[:1], _evaluation(4, set()), drop_p=0.5)
    assert start_best.dropped and "the starting model (" in drop_warning(cfg, tmp_path, start_best, latest)


@pytest.mark.parametrize("keep_best", [True, False])
def test_a_run_keeps_the_model_of_its_best_evaluation(tmp_path, keep_best):
    """Three RL steps evaluated each: ``best/`` holds the model of the first that solved the most
    (an HF folder that loads), and matches that step's checkpoint; without ``eval.keep_best``, none."""
    from safetensors.torch import load_file

    from agentrl.cli import main

    sets = (
        f"run.root={tmp_path}",
        "train.steps=3",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "rollout.max_turns=1",
        "rollout.answer_format=raw",
        "train.micro_batch_tokens=2048",
        "eval.every=1",
        "eval.episodes=4",
        "eval.at_start=false",
        "run.progress=false",
        "run.save_every=1",
        "run.keep_checkpoints=0",
        f"eval.keep_best={str(keep_best).lower()}",
    )
    args = ["--model", "tiny-random", "--name", "run"] + [a for s in sets for a in ("--set", s)]
    assert main(["train", "--env", "test_letters", *args]) == 0
    run = tmp_path / "run"
    solved = {e.step: e.solved() for e in best.logged_evaluations(run)}
    assert sorted(solved) == [1, 2, 3]  # eval.at_start=false: step 1 is the first, so a best
    if not keep_best:
        assert not (run / best.BEST_DIR).exists()
        return
    top = min(s for s in solved if solved[s] == max(solved.values()))
    assert best.read_best(run)["step"] == top and best.read_best(run)["solved"] == solved[top]
    kept = load_file(run / best.BEST_DIR / "model.safetensors")
    saved = load_file(run / "checkpoints" / f"step_{top:06d}" / "hf" / "model.safetensors")
    assert kept.keys() == saved.keys()
    assert all(bool((kept[k] == saved[k]).all()) for k in kept)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Each evaluation's best so far: the earliest of the most solved up to its step.
    for row in (r for r in rows if "eval/best_step" in r):
        upto = {s: n for s, n in solved.items() if s <= row["step"]}
        assert row["eval/best_step"] == min(s for s in upto if upto[s] == max(upto.values()))
    assert {r["step"] for r in rows if "eval/best_step" in r} == {2, 3}  # step 1 had none before it
