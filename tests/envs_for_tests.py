"""Envs for tests, importable by subprocesses as ``envs_for_tests:NAME`` (tests/ on PYTHONPATH)."""

from __future__ import annotations

import agentrl
from agentrl.env import TextEnv


class LetterShareEnv(TextEnv):
    """Single step: reward = share of ASCII letters in the reply (varies across random replies)."""

    instructions = "Write some English words."
    example_answer = "hello world"

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return "Write words.", {"success": False, "action_is_valid": True}

    def step(self, action):
        text = action[:4096]
        share = sum(c.isascii() and c.isalpha() for c in text) / max(1, len(text))
        return "", float(share), True, False, {"success": share > 0.5, "action_is_valid": True}


agentrl.register("test_letters", LetterShareEnv, override=True)
