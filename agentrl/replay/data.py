"""Read a run directory for the viewer: step index, metrics, config, step summaries, full episodes.

Every public method returns a JSON-ready dict, the exact body of one API route; the HTML export
embeds the same dicts, so the page reads both through one code path.

Only files under the run directory are ever opened: paths are built from validated parameters
(a split name from a fixed table, an integer step) and checked again after resolving symlinks.
A run may still be training, so nothing is cached without its (mtime, size) key.

No file content can make a method raise: step files are read by ``agentrl.rollout.trajectory.read_jsonl``,
which returns only records that follow the schema (so every field has the type the page expects)
and a warning for each line it skipped; metrics and config are read as leniently. What cannot be
read becomes a warning in the response, shown in the page's warning bar.

May import: agentrl.rollout.trajectory only; light (no torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path
from typing import Any

from agentrl.rollout.trajectory import Trajectory, read_jsonl, step_filename

#: Split name -> folder in the run directory. The only folders the viewer reads trajectories from.
SPLITS: dict[str, str] = {"train": "trajectories", "eval": "eval"}
_STEP_FILE = re.compile(r"^step_(\d{1,9})\.jsonl$")
#: Caps on what one request reads, so a huge or hostile file cannot stall the server.
_MAX_CONFIG_BYTES = 1_000_000
_GROUP_OBS_CHARS = 2_000
#: Skipped lines named per file; a file of garbage would otherwise fill the page with warnings.
MAX_WARNINGS_PER_FILE = 20


class RunNotFoundError(FileNotFoundError):
    """The run directory does not exist (the CLI prints the message, no traceback)."""


class NotFound(LookupError):
    """The requested step, episode or file does not exist (HTTP 404)."""


class BadRequest(ValueError):
    """A parameter is malformed (HTTP 400)."""


def jsonable(obj: Any) -> Any:
    """Replace NaN and infinities with ``None``: browsers' ``JSON.parse`` rejects them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if hasattr(obj, "tolist"):  # numpy values in env infos
        return jsonable(obj.tolist())
    return str(obj)


def dumps(obj: Any) -> str:
    """Strict JSON; the fast path skips the recursive clean-up unless a non-finite float is present."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError):
        return json.dumps(jsonable(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def episode_dict(traj: Trajectory, index: int) -> dict[str, Any]:
    """A trajectory as the page wants it: its fields, plus ``i`` (its index in the step file)."""
    d: dict[str, Any] = {f.name: getattr(traj, f.name) for f in fields(traj)}
    d["turns"] = [{f.name: getattr(t, f.name) for f in fields(t)} for t in traj.turns]
    d["samples"] = [{f.name: getattr(s, f.name) for f in fields(s)} for s in traj.samples]
    d["reward"] = traj.reward
    d["i"] = index
    return d


def episode_summary(traj: Trajectory, index: int) -> dict[str, Any]:
    """What the step browser lists for one episode: enough to filter, sort and group."""
    return {
        "i": index,
        "episode_id": traj.episode_id,
        "env": traj.env,
        "seed": traj.seed,
        "group": traj.group,
        "reward": traj.reward,
        "success": bool(traj.success),
        "end_reason": traj.end_reason,
        "turns": len(traj.turns),
        "length": traj.num_sampled_tokens,
        "format_valid": traj.format_valid,
        "truncated_reply": any(t.finish_reason == "length" for t in traj.turns),
    }


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def capped(warnings: list[str], limit: int = MAX_WARNINGS_PER_FILE) -> list[str]:
    """The first ``limit`` warnings and, if there were more, one line counting the rest."""
    if len(warnings) <= limit:
        return warnings
    return [*warnings[:limit], f"... and {len(warnings) - limit} more"]


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class RunData:
    """A run directory, read on demand. Thread-safe (the server answers requests in threads)."""

    def __init__(self, run_dir: str | os.PathLike, cache_steps: int = 3) -> None:
        path = Path(run_dir).expanduser()
        if not path.is_dir():
            raise RunNotFoundError(f"no run directory at {path}")
        self.root = path.resolve()
        self.name = self.root.name
        # Parsed step files, most recently used last; a 256-episode step can be ~100 MB of objects.
        self._cache: OrderedDict[tuple[str, int], tuple[tuple[int, int], list[Trajectory], list[str]]] = (
            OrderedDict()
        )
        self._cache_steps = cache_steps
        self._lock = threading.Lock()

    # -- paths ---------------------------------------------------------------------------------

    def _inside(self, path: Path) -> Path | None:
        """``path`` resolved, if it is a regular file inside the run directory (symlinks followed)."""
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_relative_to(self.root) or not real.is_file():
            return None
        return real

    def _step_path(self, split: str, step: int) -> Path:
        folder = SPLITS.get(split)
        if folder is None:
            raise BadRequest(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        if not 0 <= step < 10**9:
            raise BadRequest(f"step out of range: {step}")
        real = self._inside(self.root / folder / step_filename(step))
        if real is None:
            raise NotFound(f"no {split} trajectories for step {step}")
        return real

    def file_size(self, split: str, step: int) -> int:
        return self._step_path(split, step).stat().st_size

    def steps(self, split: str) -> list[int]:
        """Steps with a trajectory file in ``split``, ascending. Files that leave the run dir are skipped."""
        folder = self.root / SPLITS[split]
        if not folder.is_dir():
            return []
        found = []
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    m = _STEP_FILE.match(entry.name)
                    if m and self._inside(Path(entry.path)) is not None:
                        found.append(int(m.group(1)))
        except OSError:  # an unreadable folder lists nothing
            return []
        return sorted(found)

    # -- routes ----------------------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        """The steps of each split and a ``version`` that changes when the run writes anything new."""
        splits = {split: self.steps(split) for split in SPLITS}
        stamp = [(s, splits[s]) for s in SPLITS]
        for name in ("metrics.jsonl", "config.yaml"):
            try:
                st = (self.root / name).stat()
                stamp.append((name, [st.st_mtime_ns, st.st_size]))
            except OSError:
                pass
        version = hashlib.sha1(repr(stamp).encode()).hexdigest()[:12]
        warnings = []
        if not any(splits.values()):
            warnings.append("no trajectory files yet (trajectories/step_*.jsonl, eval/step_*.jsonl)")
        return {"run": self.name, "splits": splits, "version": version, "warnings": warnings}

    def metrics(self) -> dict[str, Any]:
        """Rows of metrics.jsonl (one dict per logged step); malformed lines are skipped with a warning."""
        rows: list[dict[str, Any]] = []
        warnings: list[str] = []
        real = self._inside(self.root / "metrics.jsonl")
        if real is None:
            return {"rows": rows, "keys": [], "warnings": ["no metrics.jsonl in the run directory"]}
        try:
            with open(real, encoding="utf-8", errors="replace") as f:
                lines = list(f)
        except OSError as exc:
            return {"rows": rows, "keys": [], "warnings": [f"metrics.jsonl cannot be read: {exc.strerror}"]}
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, a 5000-digit number, deep nesting
                warnings.append(f"metrics.jsonl:{lineno}: skipped a malformed line")
                continue
            if not isinstance(row, dict) or not _is_number(row.get("step")):
                warnings.append(f"metrics.jsonl:{lineno}: skipped a line without a numeric 'step'")
                continue
            # The logger writes flat rows of numbers; anything nested is not a metric the page draws.
            flat = {k: v for k, v in row.items() if v is None or isinstance(v, (str, int, float))}
            if len(flat) < len(row):
                warnings.append(f"metrics.jsonl:{lineno}: ignored values that are not numbers or text")
            rows.append(jsonable(flat))
        warnings = capped(warnings)
        keys = sorted({k for row in rows for k in row if k != "step"})
        return {"rows": rows, "keys": keys, "warnings": warnings}

    def config(self) -> dict[str, Any]:
        """The resolved config as text (shown verbatim; the page never interprets it)."""
        real = self._inside(self.root / "config.yaml")
        if real is None:
            return {"text": None, "warnings": ["no config.yaml in the run directory"]}
        try:
            with open(real, encoding="utf-8", errors="replace") as f:
                text = f.read(_MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            return {"text": None, "warnings": [f"config.yaml cannot be read: {exc.strerror}"]}
        warnings = []
        if len(text) > _MAX_CONFIG_BYTES:
            text = text[:_MAX_CONFIG_BYTES]
            warnings.append("config.yaml is larger than 1 MB; showing the start")
        return {"text": text, "warnings": warnings}

    def load(self, split: str, step: int) -> tuple[list[Trajectory], list[str]]:
        """The valid trajectories of one step file and the reader's warnings (cached by mtime and size).

        Never raises for the file's content; a file that vanished is ``NotFound``, one that cannot
        be read gives no trajectories and a warning.
        """
        path = self._step_path(split, step)
        try:
            st = path.stat()
        except OSError:
            raise NotFound(f"no {split} trajectories for step {step}") from None
        stamp = (st.st_mtime_ns, st.st_size)
        key = (split, step)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(key)
                return hit[1], hit[2]
        try:
            trajectories, warnings = read_jsonl(path)
        except OSError as exc:  # unreadable (permissions, I/O error): say so, do not cache
            return [], [f"{split} step {step}: {path.name} cannot be read: {exc.strerror or exc}"]
        warnings = [f"{split} step {step}: {w}" for w in capped(warnings)]
        with self._lock:
            self._cache[key] = (stamp, trajectories, warnings)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_steps:
                self._cache.popitem(last=False)
        return trajectories, warnings

    def step(self, split: str, step: int) -> dict[str, Any]:
        """Summaries of a step's episodes and of its groups; no tokens (those come per episode)."""
        trajectories, warnings = self.load(split, step)
        episodes = [episode_summary(t, i) for i, t in enumerate(trajectories)]
        groups: dict[int, dict[str, Any]] = {}
        for t, e in zip(trajectories, episodes):
            g = groups.get(t.group)
            if g is None:
                obs = t.turns[0].observation if t.turns else ""
                g = groups[t.group] = {
                    "group": t.group,
                    "env": t.env,
                    "seed": t.seed,
                    "observation": obs[:_GROUP_OBS_CHARS],
                    "episodes": [],
                }
            g["episodes"].append(e["i"])
        for g in groups.values():
            eps = [episodes[i] for i in g["episodes"]]
            g["mean_reward"] = _mean([e["reward"] for e in eps])
            g["success_rate"] = _mean([float(e["success"]) for e in eps])
        return jsonable(
            {
                "split": split,
                "step": step,
                "episodes": episodes,
                "groups": list(groups.values()),
                "warnings": warnings,
            }
        )

    def episodes(self, split: str, step: int) -> list[dict[str, Any]]:
        """Every episode of a step in full (the export embeds these)."""
        trajectories, _ = self.load(split, step)
        return [episode_dict(t, i) for i, t in enumerate(trajectories)]

    def episode(self, split: str, step: int, i: int) -> dict[str, Any]:
        """One episode in full: turns, samples with token ids, mask, log-probs, advantages, token text."""
        trajectories, _ = self.load(split, step)
        if not 0 <= i < len(trajectories):
            raise NotFound(f"{split} step {step} has no episode {i} ({len(trajectories)} episodes)")
        return episode_dict(trajectories[i], i)
