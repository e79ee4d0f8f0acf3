"""How far can RL lift a model's greedy success? Its own sampled tries say where RL can reach.

python scripts/rl_headroom.py SAMPLED GREEDY [LATER ...]

  SAMPLED  the model's evaluation with k tries a puzzle, sampled at the rollouts' temperature:
           agentrl eval --env sokoban --model runs/R/warm_start --set eval.greedy=false \\
               --set eval.samples_per_seed=8 --episodes 128 --out runs/R/warm_start/eval-t1x8
  GREEDY   the same model's greedy evaluation of the same seeds: runs/R/eval/step_000000.jsonl
  LATER    greedy evaluations after RL, any number: runs/R/eval/step_000004.jsonl

GRPO learns only from a group whose tries differ: on a puzzle that none of the model's k tries
solves, every try fails alike and there is nothing to reinforce. So the puzzles the greedy model
fails split in two: those some sampled try solves, which RL can reach by making that try the
greedy one (sharpening), and those no try solves, where RL would have to teach the model something
it does not yet do. The first count bounds what sharpening alone can add to greedy success (the
pass@k ceiling); the script prints it beside the gain a target asks for (``--target``, in points
of success), and, for each later evaluation, which of its gained puzzles some try had solved.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from agentrl.rollout.trajectory import read_jsonl
from agentrl.training.metrics import pass_at_k


def solved_tries(path: Path) -> dict[int, tuple[int, int]]:
    """Seed -> (episodes solved, episodes played), from an eval trajectory file."""
    episodes, warnings = read_jsonl(path)
    for warning in warnings:
        print(f"rl_headroom: {path}: {warning}", file=sys.stderr)
    counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for episode in episodes:
        counts[episode.seed][0] += bool(episode.success)
        counts[episode.seed][1] += 1
    return {seed: (solved, played) for seed, (solved, played) in counts.items()}


def greedy_solved(path: Path) -> dict[int, bool]:
    """Seed -> whether its greedy episode solved it (greedy evaluation plays each seed once)."""
    return {seed: solved > 0 for seed, (solved, _) in solved_tries(path).items()}


@dataclass(frozen=True)
class Headroom:
    """What the greedy model fails, split by whether any of its k sampled tries solves it."""

    puzzles: int
    tries: int
    """k: the fewest tries any puzzle had (the pass@k figures use it)."""
    greedy: int
    """Puzzles the greedy model solves."""
    reachable: list[int]
    """Seeds the greedy model fails and at least one sampled try solves: sharpening's reach."""
    unreached: list[int]
    """Seeds the greedy model fails and no sampled try solves."""
    pass_at: dict[int, float]
    """j -> mean unbiased pass@j over the puzzles, for j = 1, 2, 4, ... up to k."""

    @property
    def ceiling(self) -> int:
        """Greedy successes if sharpening turned every reachable failure into a success."""
        return self.greedy + len(self.reachable)


def headroom(sampled: dict[int, tuple[int, int]], greedy: dict[int, bool]) -> Headroom:
    """The split, over the seeds both evaluations played."""
    common = sorted(set(sampled) & set(greedy))
    if not common:
        raise SystemExit(
            "rl_headroom: the sampled and greedy evaluations share no seed; evaluate the same seeds"
        )
    k = min(sampled[s][1] for s in common)
    failed = [s for s in common if not greedy[s]]
    js = sorted({j for j in (1, 2, 4, 8, 16, 32, 64) if j <= k} | {k})
    return Headroom(
        puzzles=len(common),
        tries=k,
        greedy=sum(greedy[s] for s in common),
        reachable=[s for s in failed if sampled[s][0] > 0],
        unreached=[s for s in failed if sampled[s][0] == 0],
        pass_at={
            j: sum(pass_at_k(sampled[s][1], sampled[s][0], j) for s in common) / len(common) for j in js
        },
    )


def report(
    room: Headroom, sampled: dict[int, tuple[int, int]], target_points: float, name: str = "the model"
) -> list[str]:
    """The lines printed for the split."""
    n, k = room.puzzles, room.tries
    needed = room.greedy + target_points / 100 * n
    share = {s: sampled[s][0] / sampled[s][1] for s in room.reachable}
    passes = ", ".join(f"pass@{j} {p:.3f}" for j, p in room.pass_at.items())
    lines = [
        f"{name}, {n} puzzles: greedy solves {room.greedy} ({room.greedy / n:.3f}); {k} sampled tries a puzzle: {passes}",
        f"greedy fails {n - room.greedy}: {len(room.reachable)} solved by some try (sharpening's reach), "
        f"{len(room.unreached)} by none",
        f"ceiling of sharpening: greedy {room.ceiling}/{n} ({room.ceiling / n:.3f}, "
        f"{100 * len(room.reachable) / n:+.1f} points); +{target_points:g} points needs {needed:.1f}/{n}"
        + (
            f": {needed - room.ceiling:.1f} puzzles that no try solves"
            if needed > room.ceiling
            else ": within reach"
        ),
    ]
    if room.reachable:
        shown = ", ".join(
            f"{s} ({sampled[s][0]}/{sampled[s][1]})" for s in sorted(room.reachable, key=lambda s: -share[s])
        )
        lines.append(f"reachable failures (tries solved): {shown}")
    return lines


def gains(
    sampled: dict[int, tuple[int, int]], before: dict[int, bool], after: dict[int, bool]
) -> tuple[list[int], list[int], list[int]]:
    """Seeds ``after`` gained over ``before`` that some sampled try had solved, those no try had
    solved, and the seeds it lost (over the seeds all three played)."""
    common = set(sampled) & set(before) & set(after)
    gained = sorted(s for s in common if after[s] and not before[s])
    lost = sorted(s for s in common if before[s] and not after[s])
    return [s for s in gained if sampled[s][0]], [s for s in gained if not sampled[s][0]], lost


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sampled", type=Path, help="eval file of the model with k sampled tries a puzzle")
    parser.add_argument("greedy", type=Path, help="eval file of the same model, greedy, same seeds")
    parser.add_argument("later", type=Path, nargs="*", help="greedy eval files after RL")
    parser.add_argument("--target", type=float, default=10.0, help="points of greedy success to reach (10)")
    args = parser.parse_args()
    for path in (args.sampled, args.greedy, *args.later):
        if not path.is_file():
            parser.error(
                f"{path} is not a file: give eval trajectory files, e.g. runs/NAME/eval/step_000000.jsonl "
                "or the eval.jsonl that `agentrl eval --out DIR` writes"
            )
    sampled, before = solved_tries(args.sampled), greedy_solved(args.greedy)
    for line in report(headroom(sampled, before), sampled, args.target, name=str(args.greedy)):
        print(line)
    for path in args.later:
        some, none, lost = gains(sampled, before, greedy_solved(path))
        print(
            f"{path}: +{len(some) + len(none)} -{len(lost)}; gained {len(some)} that some try solved "
            f"({', '.join(map(str, some)) or '-'}), {len(none)} that none did ({', '.join(map(str, none)) or '-'}); "
            f"lost {', '.join(map(str, lost)) or '-'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
