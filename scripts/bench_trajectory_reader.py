"""Time the candidate trajectory readers on one 10,000-episode step file, in one process.

python scripts/bench_trajectory_reader.py                 # builds the file (tests/replay_fixtures.py)
python scripts/bench_trajectory_reader.py --file runs/NAME/trajectories/step_000010.jsonl

Candidates, each reading every line of the same file into ``Trajectory`` objects:

- ``current``: the reader before validation (``json.loads`` + ``Trajectory.from_dict`` building
  the dataclasses without any check), copied here as the baseline;
- ``msgspec``: ``agentrl.rollout.trajectory.read_jsonl`` as shipped: msgspec decodes each line straight into
  the dataclasses, checking every field's type, then ``check_trajectory`` (spans, lengths, depth);
- ``pydantic``: pydantic v2 ``TypeAdapter(Trajectory).validate_json(line, strict=True)`` and the same
  ``check_trajectory``;
- ``json.loads alone``: parsing only, no objects built and nothing checked: a lower bound for any
  hand-written checks on top of ``json.loads``.

Each is run ``--repeat`` times; the best time is printed with its ratio to ``current``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agentrl.rollout.trajectory import Sample, Trajectory, Turn, check_trajectory, read_jsonl, write_jsonl


def current_reader(path: Path) -> list[Trajectory]:
    """The reader as it was before issue 15: no type or span checks at all."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            d = {k: v for k, v in d.items() if k not in ("format_version", "reward")}
            turns = [
                Turn(
                    **{
                        **t,
                        "prompt_span": tuple(t["prompt_span"]),
                        "response_span": tuple(t["response_span"]),
                    }
                )
                for t in d.pop("turns", [])
            ]
            samples = [Sample(**s) for s in d.pop("samples", [])]
            out.append(Trajectory(turns=turns, samples=samples, **d))
    return out


def msgspec_reader(path: Path) -> list[Trajectory]:
    trajectories, warnings = read_jsonl(path)
    assert not warnings, warnings[:3]
    return trajectories


def pydantic_reader() -> Callable[[Path], list[Trajectory]] | None:
    try:
        import pydantic
    except ImportError:
        return None
    adapter = pydantic.TypeAdapter(Trajectory)

    def read(path: Path) -> list[Trajectory]:
        out = []
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    traj = adapter.validate_json(line, strict=True)
                    check_trajectory(traj)
                    out.append(traj)
        return out

    return read


def json_only(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_file(folder: Path, episodes: int) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from replay_fixtures import make_step

    group_size = 16
    trajectories = make_step(5, "train", episodes // group_size, group_size, total_steps=10)
    return write_jsonl(folder / "step_000005.jsonl", trajectories)


def best_of(fn: Callable[[Path], list], path: Path, repeat: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = len(fn(path))
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, help="a step file to read (default: build one)")
    parser.add_argument("--episodes", type=int, default=10_000, help="episodes in the built file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or build_file(Path(tmp), args.episodes)
        print(f"file: {path.name}, {path.stat().st_size / 1e6:.1f} MB, best of {args.repeat}")
        candidates: dict[str, Callable[[Path], list] | None] = {
            "current (json.loads + from_dict, unchecked)": current_reader,
            "msgspec (read_jsonl as shipped)": msgspec_reader,
            "pydantic v2 strict + check_trajectory": pydantic_reader(),
            "json.loads alone (no objects, no checks)": json_only,
        }
        base = None
        for name, fn in candidates.items():
            if fn is None:
                print(f"{name:<46} not installed")
                continue
            seconds, n = best_of(fn, path, args.repeat)
            base = base or seconds
            print(f"{name:<46} {seconds:7.3f} s  {n} records  {seconds / base:5.2f}x current")


if __name__ == "__main__":
    main()
