"""Print a table of eval figures (success, format-valid, reward) from runs' metrics.jsonl.

python scripts/eval_table.py runs/demo-rl runs/demo-sft runs/demo-sft-rl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def eval_rows(run: Path) -> list[dict]:
    """The run's eval rows, each with ``minutes``: the run's rollout, update and eval time up to it."""
    rows, seconds = [], 0.0
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        seconds += sum(v for k, v in row.items() if k.startswith("timing/") and k.endswith("_s"))
        if "eval/success_rate" in row:
            rows.append({**row, "minutes": seconds / 60})
    return rows


def distinct_across(path: Path) -> str:
    """Distinct first replies / puzzles of an eval file (1/N: one reply for every puzzle)."""
    if not path.is_file():
        return "-"
    first: dict[int, str] = {}
    for line in path.read_text().splitlines():
        episode = json.loads(line)
        turns = episode.get("turns") or [{}]
        first.setdefault(episode["seed"], turns[0].get("reply", ""))
    return f"{len(set(first.values())) / len(first):.2f}" if first else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print(
        "| run | step | eval success | eval format-valid | distinct replies across puzzles | eval reward "
        "| episodes | minutes |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        for row in eval_rows(run):
            path = run / "eval" / f"step_{row['step']:06d}.jsonl"
            episodes = sum(1 for _ in open(path)) if path.is_file() else 0
            print(
                f"| {run.name} | {row['step']} | {row['eval/success_rate']:.3f} | "
                f"{row['eval/format_valid_rate']:.3f} | {distinct_across(path)} | {row['eval/reward']:+.2f} | "
                f"{episodes} | {row['minutes']:.0f} |"
            )


if __name__ == "__main__":
    main()
