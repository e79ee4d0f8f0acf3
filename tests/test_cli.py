"""The command line, run as a user runs it: ``python -m agentrl ...`` in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from envs_for_tests import subprocess_env

import agentrl

BUILTINS = {
    "sokoban": "agentrl/Sokoban-v0",
    "countdown": "agentrl/Countdown-v0",
    "knights_knaves": "agentrl/KnightsKnaves-v0",
    "math": "agentrl/Math-v0",
}


def agentrl_cli(*args: str, stdin: str = "", cwd=None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "agentrl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        # Without the process-group variables an earlier in-process run left here, which would
        # point the child at a port this process holds (EADDRINUSE).
        env=subprocess_env(),
    )


# --------------------------------------------------------------------------------------------
# agentrl envs list
# --------------------------------------------------------------------------------------------


def test_envs_list_shows_every_builtin_with_description_and_gym_id():
    proc = agentrl_cli("envs", "list")
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for name, gym_id in BUILTINS.items():
        assert name in lines, proc.stdout
        description = agentrl.spec(name).description
        assert description and description in lines[name]
        assert f"[{gym_id}]" in lines[name]
    assert agentrl_cli("envs").stdout == proc.stdout  # "list" is the default action


# --------------------------------------------------------------------------------------------
# agentrl play
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sokoban_seed3():
    env = agentrl.make("sokoban")
    obs, info = env.reset(seed=3)
    plan = env.oracle_actions()
    assert plan
    return obs, plan


def test_play_sokoban_with_the_oracle_plan_wins(sokoban_seed3):
    obs, plan = sokoban_seed3
    proc = agentrl_cli("play", "--env", "sokoban", "--seed", "3", stdin="".join(a + "\n" for a in plan))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert agentrl.make("sokoban").instructions in out
    assert f"--- turn 0\n{obs}\n" in out  # the first observation, exactly
    assert out.count("reward ") == len(plan)
    assert "(invalid action)" not in out
    last = out.strip().splitlines()
    end = next(i for i, line in enumerate(last) if line.startswith("--- end:"))
    assert last[end].startswith("--- end: success, return +")
    assert "√" in "\n".join(last[end + 1 :])  # the final grid, box on its target
    assert "Traceback" not in proc.stderr


def test_play_reports_invalid_actions_and_quit_exits_cleanly():
    proc = agentrl_cli("play", "--env", "sokoban", "--seed", "3", stdin="jump\nquit\n")
    assert proc.returncode == 0, proc.stderr
    assert "(invalid action)" in proc.stdout and "--- turn 1" in proc.stdout
    assert proc.stdout.rstrip().endswith("bye")
    assert "--- end" not in proc.stdout


def test_play_ends_at_end_of_input():
    proc = agentrl_cli("play", "--env", "countdown", "--seed", "0", stdin="")
    assert proc.returncode == 0, proc.stderr
    assert "Target:" in proc.stdout and proc.stdout.rstrip().endswith("bye")


def test_play_single_step_env_to_its_end():
    env = agentrl.make("countdown")
    env.reset(seed=0)
    answer = env.oracle_actions()[0]
    proc = agentrl_cli("play", "--env", "countdown", "--seed", "0", stdin=answer + "\n")
    assert proc.returncode == 0, proc.stderr
    assert "reward +1.00" in proc.stdout and "--- end: success" in proc.stdout


def test_play_accepts_several_actions_joined_like_the_model_does(sokoban_seed3):
    _, plan = sokoban_seed3
    proc = agentrl_cli("play", "--env", "sokoban", "--seed", "3", stdin=" || ".join(plan) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert "--- end: success" in proc.stdout


# --------------------------------------------------------------------------------------------
# errors: a clear message, exit code 2, no traceback, no work done
# --------------------------------------------------------------------------------------------

#: Run as subprocesses, as a user would (each starts a Python that imports torch for the config).
ERROR_CASES = {
    "play_unknown": (["play", "--env", "sokobn"], ["no env named 'sokobn'", "Did you mean 'sokoban'?"]),
    "train_unknown": (["train", "--env", "nosuchenv"], ["no env named 'nosuchenv'", "Registered envs:"]),
    "missing_config": (
        ["train", "--env", "sokoban", "--config", "missing.yaml"],
        ["missing.yaml", "not found"],
    ),
}
#: Run in-process through agentrl.cli.main: the same code path, without a fresh interpreter each.
INPROCESS_ERROR_CASES = {
    "train_typo": (["train", "--env", "countdwn"], ["Did you mean 'countdown'?"]),
    "eval_unknown": (["eval", "--env", "nosuchenv"], ["no env named 'nosuchenv'"]),
    "bad_key": (
        ["train", "--env", "sokoban", "--set", "algo.kl.coeff=1"],
        ["algo.kl.coeff", "Did you mean algo.kl.coef?"],
    ),
    "bad_type": (
        ["train", "--env", "sokoban", "--set", "train.n_groups=abc"],
        ["train.n_groups", "int", "abc"],
    ),
    "bad_override": (["train", "--env", "sokoban", "--set", "train.n_groups"], ["key=value"]),
    "bad_value": (["train", "--env", "sokoban", "--set", "algo.kl.coef=-1"], ["kl.coef", ">= 0"]),
}


@pytest.fixture(scope="module")
def error_runs(tmp_path_factory):
    """Run the subprocess error cases, two at a time: {case: (proc, cwd)}."""

    # mktemp is not thread-safe: make every folder first, then run the cases in threads.
    folders = {case: tmp_path_factory.mktemp(case) for case in ERROR_CASES}

    def run(case):
        cwd = folders[case]
        return case, (agentrl_cli(*ERROR_CASES[case][0], cwd=cwd, timeout=60), cwd)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, ERROR_CASES))


def _check_error(rc: int, out: str, err: str, fragments: list[str], cwd) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, (rc, err)
    assert err.startswith("agentrl: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert out == ""
    assert not (cwd / "runs").exists(), "the command started work before failing"


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_clear_and_early(case, error_runs):
    proc, cwd = error_runs[case]
    _check_error(proc.returncode, proc.stdout, proc.stderr, ERROR_CASES[case][1], cwd)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``agentrl.cli.main(argv)``; an exception escaping it fails the test as an AssertionError."""
    from agentrl.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:  # noqa: BLE001 - the user would see a traceback
        raise AssertionError(f"agentrl {' '.join(argv)} raised {type(exc).__name__}: {exc}") from exc
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("case", sorted(INPROCESS_ERROR_CASES))
def test_config_errors_are_clear_and_early(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, fragments = INPROCESS_ERROR_CASES[case]
    rc, out, err = run_main(argv, capsys)
    _check_error(rc, out, err, fragments, tmp_path)


#: A start whose model cannot be found: one line, exit 2, before anything is written (no runs/).
FAILED_STARTS = {
    "path_missing": (["train", "--model", "./no/such/model"], ["model path ./no/such/model does not exist"]),
    "builtin_typo": (["train", "--model", "tiny-randm"], ["'tiny-randm'", "did you mean 'tiny-random'?"]),
    "init_typo": (["train", "--init", "random-qwen2.5-05b"], ["did you mean 'random-qwen2.5-0.5b'?"]),
    "hub_offline": (
        ["train", "--model", "some-org/no-such-model"],
        ["'some-org/no-such-model'", "no network", "--model PATH"],
    ),
    "sft_path_missing": (["sft", "--model", "/no/such/model"], ["model path /no/such/model does not exist"]),
}


@pytest.mark.parametrize("case", sorted(FAILED_STARTS))
def test_a_failed_start_leaves_no_run_folder(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test reaches for the network
    argv, fragments = FAILED_STARTS[case]
    rc, out, err = run_main([*argv, "--env", "sokoban", "--name", "x"], capsys)
    _check_error(rc, out, err, fragments, tmp_path)
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("warm_start", [True, False])
def test_a_disk_too_small_for_the_checkpoints_stops_the_main_job_before_any_work(
    warm_start, capsys, tmp_path, monkeypatch
):
    import shutil
    from types import SimpleNamespace

    from agentrl.config import load_config
    from agentrl.training.run import DISK_MARGIN, checkpoint_gb

    monkeypatch.chdir(tmp_path)
    size = checkpoint_gb(load_config(env="sokoban"))  # the default model's, about 2.15 GB
    best = checkpoint_gb(load_config(env="sokoban"), export_only=True)  # its weights alone
    assert 0.1 * size < best < 0.3 * size
    # The main job writes the warm start's checkpoint and RL's one; RL alone only its one. Both keep
    # RL's best model besides.
    count, what = (2, "the warm start's 1 and RL's 1") if warm_start else (1, "RL's, run.save_every=4")
    free = (count - 0.5) * size
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free * 1e9))
    argv = [] if warm_start else ["--set", "sft.warm_start=false"]
    rc, out, err = run_main(["train", "--env", "sokoban", *argv], capsys)
    need = (count * size + best) * DISK_MARGIN
    fragments = [
        f"about {need:.1f} GB for its checkpoints ({count} x {size:.1f} GB: {what}",
        f"; its best model's folder, {best:.1f} GB: eval.keep_best; with 10% for its logs)",
        f"{free:.1f} GB are free",
    ]
    _check_error(rc, out, err, [*fragments, "--set run.root=DIR"], tmp_path)


def test_a_hub_that_cannot_be_reached_is_one_line(capsys, tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    rc, out, err = run_main(["train", "--env", "sokoban", "--model", "some-org/not-cached"], capsys)
    _check_error(rc, out, err, ["no network access to the hub (OSError)", "--model PATH"], tmp_path)


def test_a_start_that_fails_after_writing_its_folder_removes_it(tmp_path, tiny_model_path):
    """The model is found, the run folder written, then the model turns out unusable: folder gone."""
    import shutil

    nochat = tmp_path / "nochat"
    nochat.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # no chat_template.jinja
        shutil.copy(Path(tiny_model_path) / name, nochat / name)
    proc = agentrl_cli(
        "train", "--env", "sokoban", "--model", str(nochat), "--name", "x", cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("agentrl: error: ") and "no chat template" in last and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "runs" / "x").exists()


def test_only_a_folder_the_failed_start_wrote_is_removed(tmp_path, capsys, monkeypatch):
    import agentrl.training.trainer
    from agentrl.config import ConfigError

    def failing_train(cfg, resume=False, started=None):
        run = Path(cfg.run.root) / cfg.run.name
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text("x: 1\n")
        raise ConfigError("failed after writing the folder")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(agentrl.training.trainer, "train", failing_train)
    plain = ["--set", "sft.warm_start=false"]  # the recipe's warm start would run before train
    assert run_main(["train", "--env", "sokoban", "--name", "new", *plain], capsys)[0] == 2
    assert not (tmp_path / "runs" / "new").exists()
    (tmp_path / "runs" / "mine").mkdir(parents=True)  # made by the user before the start: kept
    assert run_main(["train", "--env", "sokoban", "--name", "mine", *plain], capsys)[0] == 2
    assert (tmp_path / "runs" / "mine" / "config.yaml").is_file()


def test_a_run_with_results_is_never_discarded(tmp_path):
    from agentrl.training.run import discard_failed_start

    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    (run / "trajectories").mkdir()
    (run / "trajectories" / "step_000001.jsonl").write_text("{}\n")
    assert not discard_failed_start(run) and run.is_dir()
    (run / "trajectories" / "step_000001.jsonl").unlink()
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    assert not discard_failed_start(run) and run.is_dir()
    (run / "metrics.jsonl").write_text("")
    (run / "notes.txt").write_text("the user's own file\n")
    assert not discard_failed_start(run) and run.is_dir()
    (run / "notes.txt").unlink()
    assert discard_failed_start(run) and not run.exists()


def test_argument_errors_use_argparse():
    proc = agentrl_cli("play", "--env", "sokoban", "--seed", "abc")
    assert proc.returncode == 2 and "invalid int value: 'abc'" in proc.stderr
    proc = agentrl_cli("play")
    assert proc.returncode == 2 and "--env" in proc.stderr


def test_malformed_config_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("train: [\n")
    rc, out, err = run_main(["train", "--env", "sokoban", "--config", "bad.yaml"], capsys)
    _check_error(rc, out, err, ["bad.yaml"], tmp_path)


def test_play_says_when_a_move_is_blocked(monkeypatch, capsys):
    import io

    from agentrl.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("Down\nDown\nquit\n"))
    main(["play", "--env", "sokoban", "--seed", "3"])
    assert "Down: reward -0.10 (blocked: nothing moved)" in capsys.readouterr().out


def test_export_size_budget_flag(tmp_path, capsys):
    from agentrl.cli import main

    run = tmp_path / "run"
    (run / "trajectories").mkdir(parents=True)
    assert main(["replay", str(run), "--export", str(tmp_path / "x.html"), "--max-mb", "0.5"]) == 0
    assert (tmp_path / "x.html").is_file()
