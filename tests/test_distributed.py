"""Data parallel on CPU (gloo): 2 ranks give the same update as 1 rank over the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agentrl  # noqa: F401  isort: skip
from envs_for_tests import subprocess_env, tiny_run_args  # also registers test_letters

from agentrl.models import load_model, load_tokenizer
from agentrl.rollout.engines.hf import HFEngine
from agentrl.rollout.manager import RolloutConfig, RolloutManager


def test_an_episode_samples_the_same_whatever_else_is_in_the_batch(tiny_model_path):
    """Per-episode sampling seeds: the basis of rank-count-independent runs."""
    tok = load_tokenizer(tiny_model_path)
    model = load_model(tiny_model_path)
    cfg = RolloutConfig(group_size=2, max_turns=1, max_new_tokens=12, answer_format="raw", env_workers=1)
    manager = RolloutManager(HFEngine(model, tok.pad_token_id), tok, "test_letters", cfg)
    together = manager.rollout([11, 12, 13], sampling_seed=5)
    alone = manager.rollout([12], sampling_seed=5)
    assert [s.token_ids for s in together[2].samples] == [s.token_ids for s in alone[0].samples]
    assert [s.token_ids for s in together[3].samples] == [s.token_ids for s in alone[1].samples]
    assert together[2].samples[0].token_ids != together[3].samples[0].token_ids  # a group still varies


def test_a_cpu_run_keeps_its_model_on_the_cpu_where_deepspeed_picked_the_gpu():
    """Where a GPU is visible DeepSpeed takes CUDA as its accelerator, and deepspeed.initialize moves
    the model onto it: a run asked onto the CPU (train.device=cpu) must keep its weights there (found
    on an H200: the weights on cuda:0, the batches on the CPU)."""
    from deepspeed.accelerator import get_accelerator, set_accelerator
    from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

    from agentrl.config import load_config
    from agentrl.training.distributed import init_distributed
    from agentrl.training.policy import build_policy

    before = get_accelerator()
    set_accelerator(CUDA_Accelerator())  # what DeepSpeed picks on a GPU machine
    try:
        init_distributed("cpu")
        assert get_accelerator().device_name() == "cpu"
        cfg = load_config(env="sokoban", model="tiny-random", overrides=["engine.name=hf"])
        policy = build_policy(cfg, torch.device("cpu"))
        assert {p.device.type for p in policy.model.parameters()} == {"cpu"}
    finally:
        set_accelerator(before)


def test_a_finished_command_destroys_its_process_group(tmp_path):
    """Left to the interpreter's exit, gloo's threads can abort a finished rank (SIGABRT): the
    command destroys the group itself once it has finished."""
    from agentrl.cli import main

    assert main(["train", *tiny_run_args("test_letters", "done", tmp_path, "train.steps=1")]) == 0
    assert (tmp_path / "done" / "metrics.jsonl").is_file()
    assert not torch.distributed.is_initialized()


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"],
    # DeepSpeed's launcher passes --local_rank=N to the module.
    "deepspeed": [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "{port}"],
    # accelerate with a DeepSpeed config file: agentrl takes the ZeRO stage from it.
    "accelerate": [
        sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--num_processes", "2",
        "--num_machines", "1", "--main_process_port", "{port}", "--dynamo_backend", "no",
        "--deepspeed_config_file", str(Path(__file__).parents[1] / "configs" / "deepspeed" / "zero2.json"),
    ],
}  # fmt: skip


def _train(
    tmp_path: Path,
    name: str,
    nproc: int,
    env_name: str = "test_letters",
    extra_env=None,
    launcher: str = "torchrun",
    extra_sets: tuple[str, ...] = (),
):
    """Run `agentrl train` in fresh processes (a launcher for nproc > 1); return the finished process."""
    sets = ("train.steps=2", "train.lr=1e-3", "run.save_every=1", *extra_sets)
    args = ["train", *tiny_run_args(f"envs_for_tests:{env_name}", name, tmp_path, *sets)]
    env = subprocess_env(**(extra_env or {}))
    if nproc == 1:
        cmd = [sys.executable, "-m", "agentrl", *args]
    else:
        assert nproc == 2, "LAUNCHERS start 2 ranks"
        port = str(_free_port())
        prefix = [part.replace("{port}", port) for part in LAUNCHERS[launcher]]
        cmd = [*prefix, *(["--module"] if launcher == "deepspeed" else ["-m"]), "agentrl", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_rank")
    result = _train(root, "one", 1)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "one"


@pytest.mark.slow  # launches two ranks
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed", "accelerate"])
def test_two_ranks_match_one_rank(tmp_path, one_rank_run, launcher):
    result = _train(tmp_path, "two", 2, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = one_rank_run, tmp_path / "two"
    if launcher == "accelerate":  # the launcher's DeepSpeed file was used, with its ZeRO stage
        assert "zero_stage: 2" in (two / "config.yaml").read_text()
    rows_one = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [1, 2]  # written once, by rank 0
    for a, b in zip(rows_one, rows_two):
        # Global aggregates over both ranks' episodes, not an average of averages.
        assert a["train/reward"] == pytest.approx(b["train/reward"], abs=1e-6)
        assert a["train/policy_loss"] == pytest.approx(b["train/policy_loss"], abs=1e-5)
        # Adam hides a mis-scaled gradient in the weights; the norm before clipping does not.
        assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4)
    assert rows_one[0]["train/trained_tokens"] > 0
    # One trajectory file per step holds all 4 episodes.
    assert len((two / "trajectories" / "step_000001.jsonl").read_text().splitlines()) == 4

    from safetensors.torch import load_file

    w1 = load_file(one / "checkpoints" / "step_000002" / "hf" / "model.safetensors")
    w2 = load_file(two / "checkpoints" / "step_000002" / "hf" / "model.safetensors")
    for key in w1:
        # Two AdamW steps at lr 1e-3 move weights by ~2e-3; summation order leaves ~1e-5 of noise.
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=1e-4)


@pytest.mark.slow  # launches two ranks
def test_a_dead_rank_fails_the_job_quickly_and_resume_continues(tmp_path):
    import time

    start = time.monotonic()
    result = _train(tmp_path, "crash", 2, "test_dies_on_rank1", {"AGENTRL_TEST_DIE": "1"})
    run = tmp_path / "crash"
    assert result.returncode != 0
    assert time.monotonic() - start < 300  # failed, not hung
    assert "rank: 1" in result.stderr or "rank 1" in result.stderr, result.stderr[-2000:]
    assert (run / "checkpoints" / "step_000001" / "trainer_state.json").is_file(), result.stderr[-4000:]

    env = subprocess_env()
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    resume = [
        sys.executable,
        *launcher,
        "-m",
        "agentrl",
        "train",
        "--resume",
        "--name",
        "crash",
        "--set",
        f"run.root={tmp_path}",
    ]
    done = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.slow  # launches two ranks
def test_a_hung_rank_fails_the_job_within_the_timeout_naming_it(tmp_path):
    import time

    start = time.monotonic()
    result = _train(
        tmp_path,
        "hang",
        2,
        "test_dies_on_rank1",
        {"AGENTRL_TEST_HANG": "1"},
        extra_sets=("train.dist_timeout_s=15",),
    )
    assert result.returncode != 0
    assert time.monotonic() - start < 240  # 15 s of waiting, then the launcher tears the job down
    assert "did not all reach 'the end of step 2's rollout'" in result.stderr, result.stderr[-3000:]
    assert "Rank 1 failed to pass monitoredBarrier" in result.stderr, result.stderr[-3000:]
    assert (tmp_path / "hang" / "checkpoints" / "step_000001" / "trainer_state.json").is_file()


@pytest.mark.slow  # launches two ranks
def test_sft_on_two_ranks_matches_one_rank(tmp_path):
    """Each rank trains on its share of every SFT batch (one rank's share may be empty)."""
    from safetensors.torch import load_file

    sets = [
        f"run.root={tmp_path}", "sft.episodes=5", "sft.batch_episodes=3", "sft.epochs=1",
        "rollout.max_new_tokens=8", "train.lr=1e-3", "eval.every=0",
        "run.progress=false", "train.micro_batch_tokens=2048", "train.autocast=off",
    ]  # fmt: skip
    for name, launcher in (("one", []), ("two", LAUNCHERS["torchrun"][1:])):
        args = ["sft", "--env", "sokoban", "--model", "tiny-random", "--name", name]
        args += [a for s in sets for a in ("--set", s)]
        cmd = [sys.executable, *launcher, "-m", "agentrl", *args]
        result = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
        for n in ("one", "two")
    }
    steps = [r["step"] for r in rows["one"]]
    assert len(steps) >= 2 and [r["step"] for r in rows["two"]] == steps  # batches of 3: shares of 2 and 1
    for a, b in zip(rows["one"], rows["two"]):
        assert a["sft/nll"] == pytest.approx(b["sft/nll"], rel=1e-4)
    last = f"step_{steps[-1]:06d}"
    w1 = load_file(tmp_path / "one" / "checkpoints" / last / "hf" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "checkpoints" / last / "hf" / "model.safetensors")
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=0, atol=1e-4)


@pytest.mark.slow  # launches two ranks
def test_zero3_with_the_vllm_stand_in_on_two_ranks(tmp_path):
    """ZeRO-3 shards the parameters over 2 ranks; each rank gathers them to push into its own engine
    (the stand-in in tests/fake_vllm, backed by the real tiny model) and checks the log-probs."""
    tests = Path(__file__).parent
    result = _train(
        tmp_path,
        "z3",
        2,
        extra_env={"PYTHONPATH": f"{tests}:{tests / 'fake_vllm'}"},
        extra_sets=("engine.name=vllm", "train.zero_stage=3"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "z3" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["engine/sync_logprob_gap"] < 1e-4 for r in rows)
    assert "zero_stage: 3" in (tmp_path / "z3" / "config.yaml").read_text()


def test_a_build_lock_left_by_a_killed_build_is_removed_and_a_live_one_kept(tmp_path):
    """torch waits forever on <op>/lock: one older than any real build is a dead build's."""
    import os
    import time

    from agentrl.training.distributed import clear_stale_build_locks

    dead, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (dead, live):
        lock.parent.mkdir()
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(dead, (hour_ago, hour_ago))
    assert clear_stale_build_locks(tmp_path, max_age_s=600) == [dead]
    assert not dead.exists() and live.exists()
    assert clear_stale_build_locks(tmp_path / "no such folder") == []


def test_each_deepspeed_install_builds_its_ops_in_its_own_folder(tmp_path):
    from agentrl.training.distributed import extensions_dir

    one, other = tmp_path / "venv1" / "deepspeed", tmp_path / "venv2" / "deepspeed"
    assert extensions_dir(one) == extensions_dir(one)
    assert extensions_dir(one) != extensions_dir(other)
    assert extensions_dir(one).parent.parent.name == "torch_extensions"


def test_build_ops_builds_deepspeeds_cpu_op_into_the_installs_own_folder(monkeypatch):
    """Set-up's one-time build (scripts/setup.sh): the op lands where init_distributed looks."""
    import deepspeed

    from agentrl.training.distributed import build_ops, extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = build_ops()
    assert folder == extensions_dir(os.path.dirname(deepspeed.__file__)) / "deepspeed_shm_comm"
    assert (folder / "deepspeed_shm_comm.so").is_file() and not (folder / "lock").exists()


def test_a_world_of_one_picks_another_port_when_its_port_is_taken_first(tmp_path):
    """The port found free can be taken by another process before the process group's store binds
    it (EADDRINUSE). A world of one that agentrl set up itself then picks another port instead of
    failing the run."""
    script = tmp_path / "taken.py"
    script.write_text(
        "import os, socket\n"
        "import agentrl.training.distributed as d\n"
        "taken = socket.socket(); taken.bind(('127.0.0.1', 0)); taken.listen()\n"
        "port = taken.getsockname()[1]\n"
        "real, calls = d._free_port, []\n"
        "def first_the_taken_one():\n"
        "    calls.append(1)\n"
        "    return port if len(calls) == 1 else real()\n"
        "d._free_port = first_the_taken_one\n"
        "world = d.init_distributed('cpu', timeout_s=60)\n"
        "assert world.size == 1 and int(os.environ['MASTER_PORT']) != port and len(calls) == 2, calls\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in subprocess_env().items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
