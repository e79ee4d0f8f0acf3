"""``Turn`` and ``Trajectory``: the one record shared by the rollout manager, the trainer and the viewer.

A trajectory holds one or more *samples*. A sample is a token sequence exactly as the model saw and
produced it: prompt tokens (loss mask 0), sampled tokens (loss mask 1, with the engine's
log-probs), and the templated observation tokens of later turns (mask 0). In the default
``full`` context mode an episode is one sample that grows turn by turn; in the windowed modes
(``last_k``, ``single``) each turn is its own sample, because its prompt is rebuilt.

On disk: one JSON object per line (``Trajectory.to_dict``), one file per training step
(``trajectories/step_000123.jsonl``), readable with nothing but ``json``. See docs/trajectories.md.

Reading goes through one validating path, :func:`parse_record` (``read_jsonl`` and
``Trajectory.from_dict`` use it): msgspec decodes a line straight into these dataclasses, checking
the type of every field, then :func:`check_trajectory` checks what types cannot say (spans inside
their sample, one mask value and one log-prob per token). Whoever reads a run (the viewer, the
export, ``agentrl sft --from``, scripts) gets records it can use without further checks, and a line
that is not one is skipped with a warning naming the file, the line and the field.

May import: envs, models, suggest, seeds (the stages below agentrl.rollout; lint-imports checks).
"""

from __future__ import annotations

import codecs
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

FORMAT_VERSION = 1
#: How deep the free-form values (``info``, ``reset_info``) of a record may nest. Env infos are a few
#: levels deep; the cap keeps every later consumer (the viewer's JSON encoder, a browser) far from
#: any recursion limit.
MAX_DEPTH = 100


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
    follows_thought: bool | None = None
    """Whether the actions are the ones the reply's thought names, as the env judged before they
    were sent (its optional ``actions_follow_thought``); ``None``: not judged."""
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
    def from_dict(cls, d: Any) -> Trajectory:
        """Build a trajectory from one record as ``to_dict`` writes it, checked like a file's line.

        Raises :class:`RecordError` (a ``ValueError``) naming the field when ``d`` does not follow
        docs/trajectories.md; ``format_version``, ``reward`` and unknown keys are ignored.
        """
        traj = _convert(d)
        check_trajectory(traj)
        return traj


class RecordError(ValueError):
    """A record that does not follow the schema; ``field`` says where (``None``: the line as a whole)."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason, field)
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


_MSGSPEC_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MSGSPEC_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


def _record_error(exc: msgspec.ValidationError) -> RecordError:
    """msgspec's "Expected `float`, got `str` - at `$.turns[0].reward`" as field and reason."""
    m = _MSGSPEC_AT.match(str(exc))
    msg, path = (m.group("msg"), (m.group("path") or "").lstrip(".")) if m else (str(exc), "")
    missing = _MSGSPEC_MISSING.match(msg)
    if missing:
        name = missing.group("name")
        return RecordError("missing (required)", f"{path}.{name}" if path else name)
    return RecordError(_sentence_case(msg.replace("`", "")), path or None)


def _sentence_case(text: str) -> str:
    """``"Expected int"`` -> ``"expected int"``, leaving ``"JSON is..."`` alone (for mid-sentence use)."""
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion to exhaust)."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if depth >= limit:
            return True
        stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
    return False


def check_trajectory(traj: Trajectory) -> None:
    """Check what the field types cannot: raise :class:`RecordError` naming the first bad field.

    Every sample has exactly one ``loss_mask`` value (0 or 1) and one ``logprobs`` value per token,
    and as many ``advantages`` and ``token_text`` entries when those are present; every turn points
    at an existing sample and its spans lie inside that sample's tokens; ``info`` and ``reset_info``
    nest at most ``MAX_DEPTH`` deep. Types are msgspec's job (see :func:`parse_record`).
    """
    for k, s in enumerate(traj.samples):
        n = len(s.token_ids)
        for name in ("loss_mask", "logprobs", "advantages", "token_text"):
            values = getattr(s, name)
            if values is not None and len(values) != n:
                raise RecordError(f"{len(values)} values for {n} token_ids", f"samples[{k}].{name}")
        # list.count runs in C: a Python loop over every token would double the reading time.
        if s.loss_mask.count(0) + s.loss_mask.count(1) != n:
            raise RecordError("holds values other than 0 and 1", f"samples[{k}].loss_mask")
    for k, t in enumerate(traj.turns):
        if not 0 <= t.sample < len(traj.samples):
            raise RecordError(
                f"no sample {t.sample} (the record has {len(traj.samples)})", f"turns[{k}].sample"
            )
        n = len(traj.samples[t.sample].token_ids)
        for name in ("prompt_span", "response_span"):
            a, b = getattr(t, name)
            if not 0 <= a <= b <= n:
                raise RecordError(f"[{a}, {b}) is not inside the sample's {n} tokens", f"turns[{k}].{name}")
        if _too_deep(t.info, MAX_DEPTH):
            raise RecordError(f"nested deeper than {MAX_DEPTH} levels", f"turns[{k}].info")
    if _too_deep(traj.reset_info, MAX_DEPTH):
        raise RecordError(f"nested deeper than {MAX_DEPTH} levels", "reset_info")


_DECODER = msgspec.json.Decoder(Trajectory)


def _convert(obj: Any) -> Trajectory:
    """Python values (``json.loads`` output) to a ``Trajectory``, types checked, nothing else."""
    try:
        return msgspec.convert(obj, Trajectory)
    except msgspec.ValidationError as exc:
        raise _record_error(exc) from None
    except RecursionError:
        raise RecordError("JSON nested too deep to read") from None


def parse_record(line: bytes | str) -> Trajectory:
    """One line of a trajectory file as a checked ``Trajectory``; :class:`RecordError` if it is not one.

    Accepts exactly what ``json.loads`` accepts as JSON (including the ``NaN`` and ``Infinity`` that
    Python's ``json`` writes for non-finite floats), then requires an object following the schema of
    docs/trajectories.md: the type of every field, required ``env``, ``seed`` and ``group`` (the
    others default as in ``Trajectory``), and :func:`check_trajectory`. Never raises anything else
    for any input, whatever its bytes, length or nesting.
    """
    try:
        traj = _DECODER.decode(line)
    except msgspec.ValidationError as exc:
        raise _record_error(exc) from None
    except msgspec.DecodeError as exc:
        traj = _parse_lenient(line, exc)
    except RecursionError:
        raise RecordError("JSON nested too deep to read") from None
    check_trajectory(traj)
    return traj


def _parse_lenient(line: bytes | str, exc: msgspec.DecodeError) -> Trajectory:
    """The slow path for lines msgspec's strict JSON refuses: ``json.loads`` then the same checks."""
    # msgspec refuses NaN/Infinity and \ud800-style escapes, which json.loads (and so the old reader)
    # accepted; everything else it refuses is not JSON at all.
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RecordError(f"not valid UTF-8 (byte {err.start})") from None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        raise RecordError(f"not JSON ({_sentence_case(str(exc))})") from None
    return _convert(obj)


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

    Every line goes through :func:`parse_record`. A line that is not a valid record (cut by a run
    killed mid-write, hand-edited, not JSON, not UTF-8) is skipped, and ``warnings`` gets one
    ``"FILE:LINE: skipped a malformed record: FIELD: REASON"`` for it; the valid records of the
    same file are all returned, in order. Blank lines are ignored. Only ``OSError`` (the file cannot
    be opened or read) is raised.
    """
    trajectories: list[Trajectory] = []
    problems: list[str] = []
    name = Path(path).name
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if lineno == 1 and line.startswith(codecs.BOM_UTF8):  # saved by an editor that adds one
                line = line[len(codecs.BOM_UTF8) :]
            if not line.strip():
                continue
            try:
                trajectories.append(parse_record(line))
            except RecordError as exc:
                problems.append(f"{name}:{lineno}: skipped a malformed record: {exc}")
    return trajectories, problems


def step_filename(step: int) -> str:
    return f"step_{step:06d}.jsonl"
