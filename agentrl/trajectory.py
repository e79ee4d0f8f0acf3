"""``Turn`` and ``Trajectory``: the one record shared by the rollout manager, the trainer and the viewer.

A trajectory holds one or more *samples*. A sample is a token sequence exactly as the model saw and
produced it: prompt tokens (loss mask 0), sampled tokens (loss mask 1, with the engine's
log-probs), and the templated observation tokens of later turns (mask 0). In the default
``full`` context mode an episode is one sample that grows turn by turn; in the windowed modes
(``last_k``, ``single``) each turn is its own sample, because its prompt is rebuilt.

On disk: one JSON object per line (``Trajectory.to_dict``), one file per training step
(``trajectories/step_000123.jsonl``), readable with nothing but ``json``. See docs/trajectories.md.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1


@dataclass
class Sample:
    """A token sequence as the model saw and sampled it."""

    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    """1 exactly on tokens the model sampled, 0 elsewhere."""
    logprobs: list[float] = field(default_factory=list)
    """The rollout engine's log-prob of each token where ``loss_mask`` is 1, else 0."""
    advantages: list[float] | None = None
    """Per-token advantage used by the update (filled in by the trainer; ``None`` before)."""
    token_text: list[str] | None = None
    """Each token decoded on its own, for the viewer (display only; never re-encoded)."""

    def extend(self, ids: list[int], sampled: bool, logprobs: list[float] | None = None) -> tuple[int, int]:
        """Append tokens; return their ``[start, end)`` span."""
        start = len(self.token_ids)
        self.token_ids.extend(ids)
        self.loss_mask.extend([1 if sampled else 0] * len(ids))
        if sampled:
            if logprobs is None or len(logprobs) != len(ids):
                raise ValueError("sampled tokens need one log-prob each")
            self.logprobs.extend(float(x) for x in logprobs)
        else:
            self.logprobs.extend([0.0] * len(ids))
        return start, len(self.token_ids)


@dataclass
class Turn:
    """One model reply and what the env made of it."""

    observation: str
    """The env's observation shown to the model before this reply."""
    reply: str = ""
    """The model's reply, decoded from the sampled tokens (for reading only; never re-encoded)."""
    actions: list[str] = field(default_factory=list)
    """Actions sent to the env, in order (after a format error: what was parsed; none was sent)."""
    reward: float = 0.0
    """Reward of this turn: the env's rewards for its actions plus any format penalty."""
    format_ok: bool = True
    """Whether the reply followed the answer format and gave usable actions."""
    format_error: str | None = None
    """Why the reply was not usable (``no_answer_tag``, ``too_many_actions``...), if not."""
    info: dict[str, Any] = field(default_factory=dict)
    """The env's info after the last action of this turn."""
    sample: int = 0
    """Index into ``Trajectory.samples`` of the sample holding this turn's tokens."""
    prompt_span: tuple[int, int] = (0, 0)
    """``[start, end)`` of the tokens shown to the model before this reply (mask 0)."""
    response_span: tuple[int, int] = (0, 0)
    """``[start, end)`` of the tokens the model sampled for this reply (mask 1)."""
    finish_reason: str = "stop"
    """The engine's reason for ending the reply: ``stop`` (end-of-turn token) or ``length``."""


#: Why an episode ended.
END_REASONS = ("terminated", "truncated", "max_turns", "context_limit", "env_error")


@dataclass
class Trajectory:
    """One episode: what the model saw and did, and what it was trained on."""

    env: str
    seed: int
    group: int
    """Episodes of one group share ``seed`` (the same puzzle); advantages are relative within it."""
    turns: list[Turn] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    reset_info: dict[str, Any] = field(default_factory=dict)
    """The env's info from reset: the ground truth (solution, target...)."""
    end_reason: str = "max_turns"
    success: bool = False
    step: int = 0
    """Training step that produced it (``-1`` before training)."""
    split: str = "train"
    """``train`` or ``eval``."""
    episode_id: int = 0
    """Index of the episode within its batch."""
    error: str | None = None
    """The exception text when ``end_reason == "env_error"``."""

    @property
    def reward(self) -> float:
        """The episode's return: the sum of its turns' rewards."""
        return float(sum(t.reward for t in self.turns))

    @property
    def format_valid(self) -> bool:
        return all(t.format_ok for t in self.turns) and bool(self.turns)

    @property
    def num_sampled_tokens(self) -> int:
        return sum(sum(s.loss_mask) for s in self.samples)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["format_version"] = FORMAT_VERSION
        d["reward"] = self.reward
        for t in d["turns"]:
            t["prompt_span"] = list(t["prompt_span"])
            t["response_span"] = list(t["response_span"])
        for s in d["samples"]:
            s["logprobs"] = [round(x, 5) for x in s["logprobs"]]
            if s["advantages"] is not None:
                s["advantages"] = [round(x, 5) for x in s["advantages"]]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = {k: v for k, v in d.items() if k not in ("format_version", "reward")}
        turns = [
            Turn(**{**t, "prompt_span": tuple(t["prompt_span"]), "response_span": tuple(t["response_span"])})
            for t in d.pop("turns", [])
        ]
        samples = [Sample(**s) for s in d.pop("samples", [])]
        return cls(turns=turns, samples=samples, **d)


def _json_default(obj: Any) -> Any:
    """Make env infos JSON-safe: numpy scalars and arrays, sets, tuples, anything else as text."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    return str(obj)


def dumps(traj: Trajectory) -> str:
    return json.dumps(traj.to_dict(), ensure_ascii=False, default=_json_default)


def write_jsonl(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> Path:
    """Write trajectories as JSON Lines, atomically (a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for traj in trajectories:
                f.write(dumps(traj) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_jsonl(path: str | os.PathLike) -> tuple[list[Trajectory], list[str]]:
    """Read a trajectory file; return ``(trajectories, warnings)``.

    Malformed or truncated lines (a run killed mid-write) are skipped and reported in ``warnings``.
    """
    trajectories: list[Trajectory] = []
    problems: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                trajectories.append(Trajectory.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError, ValueError) as exc:
                problems.append(
                    f"{Path(path).name}:{lineno}: skipped a malformed record ({type(exc).__name__})"
                )
    return trajectories, problems


def step_filename(step: int) -> str:
    return f"step_{step:06d}.jsonl"
