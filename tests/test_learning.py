"""Learning, end to end: a seeded RL run of the default model must raise held-out success.

The task (``test_red`` in envs_for_tests) rewards replies with the word "red" to "Which colour?";
the model is not told so, and says it in about 1 reply of 5. Nothing but the reward can teach it,
so a change that breaks the policy gradient anywhere (advantages, the loss's sign, the update,
the weight sync) leaves the rate where it was and fails this test. Sampled evaluation (T = 1) on
32 held-out seeds; about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json

import envs_for_tests  # noqa: F401  registers test_red
import pytest

from agentrl.cli import main


@pytest.mark.slow
def test_rl_raises_held_out_success_above_its_start(tmp_path):
    sets = [
        f"run.root={tmp_path}",
        "engine.name=hf",
        "train.n_groups=4",
        "rollout.group_size=4",
        "rollout.max_turns=1",
        "rollout.max_new_tokens=8",
        "rollout.max_context_tokens=512",
        "rollout.answer_format=raw",
        "train.micro_batch_tokens=2048",
        "train.lr=5e-5",
        "train.steps=4",
        "eval.every=4",
        "eval.episodes=32",
        "eval.greedy=false",
        "run.progress=false",
    ]
    args = ["train", "--env", "test_red", "--name", "learn"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    rows = [json.loads(x) for x in (tmp_path / "learn" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in rows if "eval/success_rate" in r}
    start, end = evals[0], evals[4]
    assert start["eval/success_rate"] < 0.5  # the base model rarely says it
    # A real rise: the end's lower 95% bound above the start's upper one.
    assert end["eval/success_ci_low"] > start["eval/success_ci_high"], (start, end)
