"""Print a table of eval figures (success, format-valid, reward) from runs' metrics.jsonl.

python scripts/eval_table.py runs/demo-rl runs/demo-sft runs/demo-sft-rl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def eval_rows(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "eval/success_rate" in row:
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | step | eval success | eval format-valid | eval reward | episodes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        for row in eval_rows(run):
            path = run / "eval" / f"step_{row['step']:06d}.jsonl"
            episodes = sum(1 for _ in open(path)) if path.is_file() else 0
            print(
                f"| {run.name} | {row['step']} | {row['eval/success_rate']:.3f} | "
                f"{row['eval/format_valid_rate']:.3f} | {row['eval/reward']:+.2f} | "
                f"{episodes} |"
            )


if __name__ == "__main__":
    main()
