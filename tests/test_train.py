"""End to end: `agentrl train` on CPU with the tiny model, through the CLI; TensorBoard, export, resume."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import envs_for_tests  # registers test_letters
import pytest
import torch

from agentrl.cli import main

REQUIRED_SCALARS = [
    "train/reward",
    "train/success_rate",
    "train/format_valid_rate",
    "train/response_length",
    "train/num_turns",
    "train/kl",
    "train/entropy",
    "train/clip_fraction",
    "train/grad_norm",
    "train/reward_std_in_group",
    "train/zero_adv_group_fraction",
    "eval/success_rate",
    "timing/rollout_s",
    "timing/update_s",
    "perf/rollout_tokens_per_s",
    "perf/train_tokens_per_s",
    "perf/peak_rss_gb",
    "perf/rss_gb",
]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _tiny_args(root: Path, name: str, *extra: str) -> list[str]:
    sets = [
        f"run.root={root}",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=8",
        "rollout.max_turns=2",
        "rollout.max_context_tokens=1024",
        "train.micro_batch_tokens=2048",
        "eval.episodes=2",
        "eval.at_start=false",
        "run.save_every=1",
        "run.progress=false",
        # The default Sokoban recipe's warm start: off here (it has its own tests in test_sft.py).
        "sft.warm_start=false",
        *extra,
    ]
    return ["--model", "tiny-random", "--name", name] + [a for s in sets for a in ("--set", s)]


def _scalar_tags(tb_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.slow  # several whole runs
@pytest.mark.parametrize("env", ["sokoban", "countdown", "knights_knaves", "math"])
def test_train_two_steps_eval_export_and_resume(tmp_path, env):
    args = _tiny_args(tmp_path, "run", "train.steps=2", "eval.every=2")
    assert main(["train", "--env", env, *args]) == 0
    run = tmp_path / "run"

    rows = _metrics(run)
    assert [r["step"] for r in rows] == [1, 2]
    assert "eval/success_rate" in rows[1]
    assert (run / "trajectories" / "step_000001.jsonl").is_file()
    assert (run / "eval" / "step_000002.jsonl").is_file()
    assert set(REQUIRED_SCALARS) <= _scalar_tags(run / "tb")

    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step_000002" / "hf")
    assert exported.num_parameters() > 0

    # --resume continues at step 3 with the run's saved config (steps raised on the command line).
    assert main(["train", "--env", env, "--resume", *args, "--set", "train.steps=3"]) == 0
    assert [r["step"] for r in _metrics(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "step_000003" / "trainer_state.json").is_file()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


LEARNING = (
    "rollout.answer_format=raw",
    "rollout.max_turns=1",
    "algo.kl.coef=0.01",
    "algo.entropy_coef=0.001",
)


@pytest.mark.slow  # several whole runs
def test_resume_gives_the_same_steps_3_and_4(tmp_path):
    straight = _tiny_args(tmp_path, "straight", "train.steps=4", "eval.every=0", *LEARNING)
    assert main(["train", "--env", "test_letters", *straight]) == 0

    halves = _tiny_args(tmp_path, "halves", "train.steps=2", "eval.every=0", *LEARNING)
    assert main(["train", "--env", "test_letters", *halves]) == 0
    assert main(["train", "--env", "test_letters", "--resume", *halves, "--set", "train.steps=4"]) == 0

    a, b = _metrics(tmp_path / "straight"), _metrics(tmp_path / "halves")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a[2:], b[2:]):
        for key in ("train/reward", "train/kl", "train/policy_loss", "train/grad_norm", "train/entropy"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), key
    assert a[2]["train/trained_tokens"] > 0, "the test needs real updates to mean anything"
    wa = _weights(tmp_path / "straight" / "checkpoints" / "step_000004" / "hf")
    wb = _weights(tmp_path / "halves" / "checkpoints" / "step_000004" / "hf")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6)


def test_update_moves_the_weights_and_logs_sane_numbers(tmp_path, tiny_model_path):
    # float32 throughout (no bf16 autocast on CPUs that have it): the log-probs compare to 1e-4.
    args = _tiny_args(
        tmp_path, "learn", "train.steps=1", "eval.every=0", "train.lr=1e-3", "train.autocast=off", *LEARNING
    )
    assert main(["train", "--env", "test_letters", *args]) == 0
    row = _metrics(tmp_path / "learn")[0]
    assert row["train/trained_tokens"] > 0
    assert 0.0 <= row["train/clip_fraction"] <= 1.0
    # Rollout log-probs equal the trainer's recomputation before the update (fp32, same weights).
    assert row["train/logprob_mismatch_mean"] < 1e-4
    assert row["train/logprob_mismatch_max"] < 1e-3
    assert "train/is_weight_mean" not in row  # the hf engine shares the trainer's numerics: no correction
    assert row["train/grad_norm"] > 0
    # This process's resident high-water mark: at least the torch it imported, far below the machine's RAM.
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert 0.1 < row["perf/peak_rss_gb"] <= ram_gb
    assert 0.1 < row["perf/rss_gb"] <= row["perf/peak_rss_gb"]  # now, after the step, is below the peak
    after = _weights(tmp_path / "learn" / "checkpoints" / "step_000001" / "hf")
    before = _weights(Path(tiny_model_path))
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_a_second_run_with_the_same_name_is_refused(tmp_path):
    args = _tiny_args(tmp_path, "taken", "train.steps=1", "eval.every=0", *LEARNING)
    assert main(["train", "--env", "test_letters", *args]) == 0
    assert main(["train", "--env", "test_letters", *args]) == 2  # clear error, nothing overwritten
    assert (tmp_path / "taken" / "checkpoints" / "step_000001").is_dir()


def test_a_resume_without_room_for_its_next_checkpoint_stops_before_any_step(tmp_path, capsys, monkeypatch):
    import shutil
    from types import SimpleNamespace

    args = _tiny_args(tmp_path, "full", "train.steps=1", "eval.every=0", *LEARNING)
    assert main(["train", "--env", "test_letters", *args]) == 0
    capsys.readouterr()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=1e6))  # 1 MB left
    assert main(["train", "--env", "test_letters", "--resume", *args, "--set", "train.steps=2"]) == 2
    assert "(1 x 0.1 GB: RL's next one, on resume;" in capsys.readouterr().err
    assert [r["step"] for r in _metrics(tmp_path / "full")] == [1]  # no step 2 was run
    assert not (tmp_path / "full" / "checkpoints" / "step_000002").exists()


def test_the_time_budget_ends_rl_at_a_step_evaluated_and_saved_and_resume_plays_the_rest(tmp_path, capsys):
    """run.time_budget_min: a budget spent before step 2 could start makes step 1 the last (eval.every=2
    would not evaluate it otherwise); --resume without the budget plays steps 2 and 3."""
    args = _tiny_args(tmp_path, "budget", "train.steps=3", "eval.every=2", "run.save_every=0", *LEARNING)
    assert main(["train", "--env", "test_letters", *args, "--set", "run.time_budget_min=0.0001"]) == 0
    out = capsys.readouterr().out
    assert "agentrl: RL ends at step 1 of 3: another step (up to " in out
    assert "run.time_budget_min=0.0001" in out and "--resume continues" in out
    rows = _metrics(tmp_path / "budget")
    assert [r["step"] for r in rows] == [1] and "eval/success_rate" in rows[0]
    assert sorted(p.name for p in (tmp_path / "budget" / "checkpoints").iterdir()) == ["step_000001"]
    # The run's saved config keeps the budget: a resume counts it afresh, or drops it.
    assert (
        main(["train", "--env", "test_letters", "--resume", *args, "--set", "run.time_budget_min=null"]) == 0
    )
    rows = _metrics(tmp_path / "budget")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert ["eval/success_rate" in r for r in rows] == [True, True, True]  # step 2 by eval.every, 3 the last


def test_a_run_folder_without_checkpoints_is_not_reused(tmp_path, capsys):
    """A run still going (or dead before its first checkpoint) keeps its folder: a second run with
    the same name would interleave their metrics."""
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("env: {name: test_letters}\n")
    (started / "metrics.jsonl").write_text('{"step": 0}\n')
    args = _tiny_args(tmp_path, "started", "train.steps=1", "eval.every=0")
    assert main(["train", "--env", "test_letters", *args]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (started / "metrics.jsonl").read_text() == '{"step": 0}\n'  # untouched


def test_the_documented_custom_env_trains(tmp_path, monkeypatch):
    """docs/custom_env.md's example, registered as its entry point would, trains through the CLI."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "guess_number"))
    import guess_number

    guess_number.register_envs()
    args = _tiny_args(tmp_path, "guess", "train.steps=1", "eval.every=1", "rollout.max_turns=3")
    assert main(["train", "--env", "guess_number", *args]) == 0
    row = _metrics(tmp_path / "guess")[0]
    assert row["train/num_turns"] >= 1 and "eval/success_rate" in row


@pytest.mark.parametrize(
    "extra",
    [
        ("model.lora.r=4", "algo.kl.coef=0.05"),  # LoRA; the reference is the base with adapters off
        ("train.zero_stage=2",),
        ("train.zero_stage=2", "model.dtype=bfloat16"),  # the GPU's layout: bf16 weights, float32 master
        (
            "algo.advantage.estimator=gigpo",
            "algo.keep_group_fraction=0.5",
            "algo.mini_batches=2",
            "algo.ppo_epochs=2",
        ),
    ],
    ids=["lora-kl", "zero2", "zero2-bf16", "gigpo-starpo_s-minibatches"],
)
def test_training_options_run_and_update(tmp_path, extra):
    args = _tiny_args(
        tmp_path, "opt", "train.steps=1", "eval.every=0", "train.lr=1e-3", *LEARNING[:2], *extra
    )
    assert main(["train", "--env", "test_letters", *args]) == 0
    row = _metrics(tmp_path / "opt")[0]
    assert row["train/trained_tokens"] > 0 and row["train/grad_norm"] > 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "opt" / "checkpoints" / "step_000001" / "hf")
    assert not any("lora" in name for name, _ in model.named_parameters())  # adapters merged on export
    # The disk check's estimate of a checkpoint (agentrl.training.run) against the one just saved.
    from agentrl.config import load_config
    from agentrl.training.run import DISK_MARGIN, checkpoint_gb

    saved = sum(
        f.stat().st_size for f in (tmp_path / "opt" / "checkpoints" / "step_000001").rglob("*") if f.is_file()
    )
    estimate = checkpoint_gb(load_config(env="test_letters", model="tiny-random", overrides=list(extra)))
    assert 0.95 * estimate * 1e9 < saved < estimate * 1e9 * DISK_MARGIN, (saved, estimate)


@pytest.mark.slow  # several whole runs
def test_eval_reads_a_runs_checkpoint(tmp_path, capsys):
    args = _tiny_args(tmp_path, "src", "train.steps=1", "eval.every=0", *LEARNING[:2])
    assert main(["train", "--env", "test_letters", *args]) == 0
    capsys.readouterr()
    out = tmp_path / "eval-out"
    code = main(
        [
            "eval",
            "--env",
            "test_letters",
            "--model",
            str(tmp_path / "src"),
            "--episodes",
            "3",
            "--out",
            str(out),
            "--set",
            "rollout.answer_format=raw",
            "--set",
            "rollout.max_new_tokens=8",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert printed["eval/pass@1"] == pytest.approx(printed["eval/success_rate"])
    assert len((out / "eval.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow  # several whole runs
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    """The first SIGINT finishes the current step, saves and exits 0; --resume continues after it."""
    import signal
    import subprocess
    import sys
    import time

    args = _tiny_args(
        tmp_path, "interrupted", "train.steps=200", "eval.every=0", "run.save_every=0", *LEARNING[:2]
    )
    env = envs_for_tests.subprocess_env()
    cmd = [sys.executable, "-m", "agentrl", "train", "--env", "envs_for_tests:test_letters", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "interrupted" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped after step" in out
    saved = sorted(p.name for p in (tmp_path / "interrupted" / "checkpoints").iterdir())
    last = int(saved[-1].split("_")[1])
    assert last == len(_metrics(tmp_path / "interrupted")) and last < 200


RECIPES = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def yaml_load(path: str) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


@pytest.mark.slow  # several whole runs
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_a_step(tmp_path, recipe):
    """Smoke test of each recipe: its own settings, sizes cut down, the tiny model."""
    config = str(Path(__file__).resolve().parents[1] / "configs" / recipe)
    shrink = ["train.n_groups=2", "rollout.group_size=2", "rollout.max_new_tokens=8", "eval.episodes=2"]
    # A recipe with a warm start plays it too, on 4 demonstrations.
    warm = bool((yaml_load(config).get("sft") or {}).get("warm_start", False))
    shrink += [f"sft.warm_start={str(warm).lower()}", "sft.episodes=4", "sft.batch_episodes=2"]
    args = _tiny_args(tmp_path, "recipe", "eval.every=1", *shrink)
    import yaml

    stages = (yaml.safe_load(Path(config).read_text()).get("curriculum") or {}).get("stages") or []
    steps = [a for i in range(len(stages)) for a in ("--set", f"curriculum.stages.{i}.steps=1")]
    # A stage's own rollout limits may not exceed the (cut-down) run's: give such stages a smaller
    # reply budget instead, which still plays the stage's limits.
    shrink_stages = [
        f"curriculum.stages.{i}.rollout={{max_new_tokens: 4}}"
        for i, s in enumerate(stages)
        if s.get("rollout")
    ]
    steps += [a for s in shrink_stages for a in ("--set", s)]
    steps = steps or ["--set", "train.steps=1"]
    # One turn per episode keeps it quick; a warm start keeps the recipe's turns, which its
    # demonstrations need to finish (a Sokoban demonstration makes one push per turn).
    turns = [] if warm else ["--set", "rollout.max_turns=1"]
    assert main(["train", "--config", config, *args, *steps, *turns]) == 0


@pytest.mark.slow  # a whole run
def test_train_options_shape_training_rooms_only(tmp_path):
    """env.train_options reach the training episodes' resets; evaluation plays the env as configured."""
    args = _tiny_args(
        tmp_path, "long", "train.steps=1", "eval.every=1", "env.train_options.min_plan_length=6", *LEARNING
    )
    assert main(["train", "--env", "sokoban", *args]) == 0
    train_eps = [
        json.loads(x) for x in (tmp_path / "long/trajectories/step_000001.jsonl").read_text().splitlines()
    ]
    eval_eps = [json.loads(x) for x in (tmp_path / "long/eval/step_000001.jsonl").read_text().splitlines()]
    assert train_eps and all(e["reset_info"]["optimal_plan_length"] >= 6 for e in train_eps)
    assert eval_eps and not any("room_seed" in e["reset_info"] for e in eval_eps)
    from agentrl_envs.sokoban import SokobanEnv

    plain = SokobanEnv(describe_positions=True)
    for e in eval_eps:
        assert e["reset_info"]["optimal_plan_length"] == plain.reset(seed=e["seed"])[1]["optimal_plan_length"]


def test_reset_options_the_env_rejects_fail_before_the_run_starts(tmp_path, capsys):
    args = _tiny_args(tmp_path, "typo", "train.steps=1", "env.train_options.min_plan_lenght=4")
    assert main(["train", "--env", "sokoban", *args]) == 2
    assert "unknown reset options ['min_plan_lenght']" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_carrying_optimizer_moments_from_a_plain_model_folder_fails_before_the_run_starts(tmp_path, capsys):
    from agentrl.models import tiny_model_dir

    args = _tiny_args(tmp_path, "nomoments", "train.steps=1", "train.init_optimizer_state=true")
    assert main(["train", "--env", "sokoban", "--init", str(tiny_model_dir()), *args]) == 2
    assert "has no single-process optimizer state" in capsys.readouterr().err
    assert not (tmp_path / "nomoments").exists()


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_to_the_os():
    from agentrl.training.policy import release_memory

    # 3000 tensors of 100 KB (below glibc's mmap threshold: they live in the heap); free every
    # other one, so the holes cannot be trimmed off the heap's top by free() itself.
    blocks = [torch.ones(25_000) for _ in range(3000)]
    del blocks[::2]
    held = _rss_mb()
    release_memory()
    assert held - _rss_mb() > 100  # of the ~143 MB of holes
    assert all(float(b[0]) == 1.0 for b in blocks)  # what is still in use is untouched
