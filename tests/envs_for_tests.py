"""Envs for tests, importable by subprocesses as ``envs_for_tests:NAME`` (tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import agentrl
from agentrl.envs.env import TextEnv


class LetterShareEnv(TextEnv):
    """Single step: reward = share of ASCII letters in the reply (varies across random replies);
    success when the share exceeds ``success_at``."""

    instructions = "Write some English words."
    example_answer = "hello world"

    def __init__(self, success_at: float = 0.5):
        super().__init__()
        self.success_at = success_at

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Write words.", {"success": False, "action_is_valid": True}

    def step(self, action):
        text = action[:4096]
        share = sum(c.isascii() and c.isalpha() for c in text) / max(1, len(text))
        return "", float(share), True, False, {"success": share > self.success_at, "action_is_valid": True}


agentrl.register("test_letters", LetterShareEnv, override=True)


class ConstantEnv(LetterShareEnv):
    """Single step, reward 1 whatever the reply: every group has zero reward variance."""

    def step(self, action):
        return "", 1.0, True, False, {"success": True, "action_is_valid": True}


agentrl.register("test_constant", ConstantEnv, override=True)


class DiesOnRank1(LetterShareEnv):
    """As test_letters, but the process of rank 1 dies (AGENTRL_TEST_DIE=1) or hangs
    (AGENTRL_TEST_HANG=1) at its second step's reset."""

    resets = 0

    def reset(self, *, seed=None, options=None):
        DiesOnRank1.resets += 1
        if os.environ.get("RANK") == "1" and seed >= 10_002:
            if os.environ.get("AGENTRL_TEST_DIE") == "1":
                os._exit(17)  # a crash no Python handler sees, like an OOM kill
            if os.environ.get("AGENTRL_TEST_HANG") == "1":
                time.sleep(3600)  # a hang: a stuck env server, a deadlock
        return super().reset(seed=seed, options=options)


agentrl.register("test_dies_on_rank1", DiesOnRank1, override=True)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for an `agentrl` subprocess: tests/ importable, one thread, and none of the
    process-group variables (MASTER_PORT...) that in-process training left in this process, which
    would point the child at a port this process already holds."""
    drop = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": os.path.dirname(os.path.abspath(__file__)), "OMP_NUM_THREADS": "1", **extra}


def run_agentrl(args: list[str], sets: list[str], timeout: int) -> subprocess.CompletedProcess:
    """``python -m agentrl ARGS --set S ...`` in a subprocess (:func:`subprocess_env`), output captured."""
    cmd = [sys.executable, "-m", "agentrl", *args, *[a for s in sets for a in ("--set", s)]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env())


#: A one-turn, raw-answer run of the tiny model, small enough for a test (later --set values win).
TINY_RUN = (
    # The tiny model's 16-wide heads are below what vLLM's CPU kernels take, so engine.name=auto
    # would choose hf after importing vLLM (10 s in every subprocess): name hf directly.
    "engine.name=hf",
    # float32 throughout: tiny runs compare numbers across ranks, resumes and engines to 1e-5, below
    # bf16 autocast's rounding (tests/test_update.py and test_learning.py cover the bf16 path).
    "train.autocast=off",
    "train.n_groups=2",
    "rollout.group_size=2",
    "rollout.max_turns=1",
    "rollout.max_new_tokens=8",
    "rollout.max_context_tokens=1024",
    "rollout.answer_format=raw",
    "train.micro_batch_tokens=2048",
    "eval.every=0",
    "run.progress=false",
)


def tiny_run_args(env: str, name: str, root, *sets: str) -> list[str]:
    """`agentrl train` arguments after the subcommand: ``env`` with the tiny model under
    ``root/name``, :data:`TINY_RUN`, then ``sets`` (which override it)."""
    args = ["--env", env, "--model", "tiny-random", "--name", name]
    return args + [a for s in (f"run.root={root}", *TINY_RUN, *sets) for a in ("--set", s)]


class FavouriteColourEnv(TextEnv):
    """Single step: name a colour; success and reward 1 when the reply has the word "red". The model
    is not told which colour wins, so only reinforcement raises the rate (a learning test's task:
    the default model says it in about 1 reply of 5 at T = 1)."""

    instructions = "Name one colour. Answer with a single word."
    example_answer = "red"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Which colour?", {"success": False, "action_is_valid": True}

    def step(self, action):
        hit = re.search(r"\bred\b", action[:4096].lower()) is not None
        return "", float(hit), True, False, {"success": hit, "action_is_valid": True}


agentrl.register("test_red", FavouriteColourEnv, override=True)
