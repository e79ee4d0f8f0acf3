"""Print a table of eval figures (success, format-valid, reward) from runs' metrics.jsonl.

Eval episodes are read with agentrl's validating reader: malformed records are skipped and named
on stderr, and the table counts only the valid ones.

python scripts/eval_table.py runs/demo-rl runs/demo-sft runs/demo-sft-rl
python scripts/eval_table.py runs/sokoban-DATE runs/sokoban-DATE/warm_start   # the main job's arms,
                                                                              # vs the warm start

The 95% interval is Wilson's, over the episodes of the eval file. "vs first" compares each
evaluation with the first one listed on the same puzzles: puzzles gained and lost, and the exact
McNemar p-value of the difference (the paired test: two overlapping intervals can still differ
for real, and a small net gain can be many puzzles won and lost).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agentrl.rollout.trajectory import Trajectory, read_jsonl, step_filename
from agentrl.training.metrics import paired_change, wilson_interval


def eval_rows(run: Path) -> list[dict]:
    """The run's eval rows, each with ``minutes``: the run's rollout, update and eval time up to it."""
    rows, seconds = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # a line cut by a killed run, or not JSON at all
            continue
        if not isinstance(row, dict):
            continue
        seconds += sum(
            v
            for k, v in row.items()
            if k.startswith("timing/") and k.endswith("_s") and isinstance(v, (int, float))
        )
        if "eval/success_rate" in row:
            rows.append({**row, "minutes": seconds / 60})
    return rows


def read_eval(path: Path) -> list[Trajectory]:
    """An eval file's valid episodes; each skipped (malformed) record is named on stderr."""
    if not path.is_file():
        return []
    episodes, warnings = read_jsonl(path)
    for warning in warnings:
        print(f"eval_table: {path.parent}/{warning}", file=sys.stderr)
    return episodes


def distinct_across(episodes: list[Trajectory]) -> str:
    """Distinct first replies / puzzles of an eval file (1/N: one reply for every puzzle)."""
    first: dict[int, str] = {}
    for episode in episodes:
        first.setdefault(episode.seed, episode.turns[0].reply if episode.turns else "")
    return f"{len(set(first.values())) / len(first):.2f}" if first else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| run | step | eval success | 95% interval | eval format-valid | distinct replies across puzzles "
        "| eval reward | episodes | minutes | vs first |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    first: list[Trajectory] | None = None
    for run in args.runs:
        for row in eval_rows(run):
            episodes = read_eval(run / "eval" / step_filename(int(row["step"])))
            paired = "-" if first is None else str(paired_change(first, episodes))
            first = episodes if first is None else first
            wins = sum(bool(e.success) for e in episodes)
            low, high = wilson_interval(wins, len(episodes))
            print(
                f"| {run.name} | {row['step']} | {row['eval/success_rate']:.3f} | {low:.2f}-{high:.2f} | "
                f"{row['eval/format_valid_rate']:.3f} | {distinct_across(episodes)} | {row['eval/reward']:+.2f} | "
                f"{len(episodes)} | {row['minutes']:.0f} | {paired} |"
            )


if __name__ == "__main__":
    main()
