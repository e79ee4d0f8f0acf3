"""End to end on the real vLLM: ``agentrl train`` with the default model, 2 Sokoban steps.

The step-2 rollout was sampled after the first update's weight push; its stored log-probs must be
those of the step-1 checkpoint (recomputed here with transformers), not the base model's: the
push really happened, into the engine that sampled.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from envs_for_tests import run_agentrl, subprocess_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]


def _gaps(model_dir: Path, trajectories: list[dict], temperature: float) -> torch.Tensor:
    """|stored - recomputed| log-prob of every sampled token, under the model in ``model_dir``."""
    from agentrl.models import load_model
    from agentrl.rollout.logprobs import token_logprobs

    model = load_model(str(model_dir)).eval()
    gaps = []
    for traj in trajectories:
        for sample in traj["samples"]:
            ids = torch.tensor([sample["token_ids"]])
            mask = torch.tensor(sample["loss_mask"][1:], dtype=torch.bool)
            with torch.no_grad():
                logp = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:], temperature)[0]
            stored = torch.tensor(sample["logprobs"][1:])
            gaps.append((logp - stored).abs()[mask])
    return torch.cat(gaps)


def test_two_sokoban_steps_on_vllm_push_the_weights_that_sample_step_two(tmp_path):
    sets = [
        "engine.name=vllm",
        "train.steps=2",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_turns=2",
        "rollout.max_new_tokens=24",
        "rollout.max_context_tokens=1024",
        "train.micro_batch_tokens=2048",
        "train.lr=1e-4",
        # An entropy term gives every step a gradient, even when all rewards of a group are equal.
        "algo.entropy_coef=0.01",
        # The default Sokoban recipe's warm start and its 4 optimizer steps per batch are not what
        # this test is about: RL alone, one optimizer step a batch, as before they existed.
        "sft.warm_start=false",
        "algo.mini_batches=1",
        # The recipe trains only on groups with both outcomes; the base model solves no room, so
        # that filter would leave nothing to update (and no weights to push).
        "algo.mixed_success_only=false",
        # float32 trainer: the engine-vs-trainer log-prob checks below are float32 ones.
        "train.autocast=off",
        "eval.every=0",
        "run.save_every=1",
        "run.progress=false",
        f"run.root={tmp_path}",
    ]
    done = run_agentrl(["train", "--env", "sokoban", "--name", "v"], sets, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "engine vllm (engine.name=vllm" in done.stderr + done.stdout

    run = tmp_path / "v"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["engine/sync_logprob_gap"] < 1e-4 for r in rows)
    assert all(r["train/logprob_mismatch_max"] < 1e-2 for r in rows)
    assert all(0.5 < r["train/is_weight_mean"] <= 2.0 for r in rows)  # TIS is on for vLLM (auto)

    step2 = [json.loads(x) for x in (run / "trajectories" / "step_000002.jsonl").read_text().splitlines()]
    after_step1 = _gaps(run / "checkpoints" / "step_000001" / "hf", step2, temperature=1.0)
    from agentrl.models import default_model_dir

    base = _gaps(default_model_dir(), step2, temperature=1.0)
    assert after_step1.numel() > 20
    assert float(after_step1.mean()) < 1e-4, float(after_step1.mean())
    # The base model scores those tokens differently: the engine had really moved on from it.
    assert float(base.mean()) > 5 * float(after_step1.mean()), (float(base.mean()), float(after_step1.mean()))


def test_agentrl_eval_runs_on_vllm_and_matches_the_hf_engine(tmp_path):
    """``agentrl eval`` goes through the same engine registry: under ``auto`` it picks vLLM, and
    its greedy replies equal the HF engine's on the same held-out rooms."""
    replies = {}
    for name in ("auto", "hf"):
        out = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "agentrl",
            "eval",
            "--env",
            "sokoban",
            "--episodes",
            "4",
            "--out",
            str(out),
        ]
        cmd += [
            "--set",
            f"engine.name={name}",
            "--set",
            "rollout.max_turns=1",
            "--set",
            "rollout.max_new_tokens=24",
            # Both engines in float32, so greedy replies can match token for token (auto would
            # sample vLLM in bf16 on a CPU with bf16 instructions).
            "--set",
            "engine.dtype=float32",
            "--set",
            "train.autocast=off",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=subprocess_env())
        assert done.returncode == 0, done.stderr[-3000:]
        expected = "engine vllm (engine.name=auto" if name == "auto" else "engine hf (engine.name=hf)"
        assert expected in done.stderr
        rows = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
        replies[name] = [(r["seed"], [t["reply"] for t in r["turns"]]) for r in rows]
    assert len(replies["auto"]) == 4
    assert replies["auto"] == replies["hf"]


def test_a_vllm_that_cannot_start_ends_with_the_cause_and_leaves_no_run_folder(tmp_path):
    """A KV cache larger than the machine: vLLM refuses at start-up; the run ends with one line that
    names the setting to change, and the run name stays free."""
    cmd = [
        sys.executable,
        "-m",
        "agentrl",
        "train",
        "--env",
        "sokoban",
        "--name",
        "big",
        "--set",
        f"run.root={tmp_path}",
    ]
    cmd += ["--set", "engine.name=vllm", "--set", "engine.vllm.kv_cache_memory_bytes=100000000000000"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=subprocess_env())
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("agentrl: error: vLLM could not start") and "kv_cache_memory_bytes" in last
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "big").exists()
