"""Compare two evaluations of the same held-out puzzles, room by room, greedy or sampled.

python scripts/paired_eval.py runs/R/warm_start/eval-t1/eval.jsonl runs/R/eval-t1/eval.jsonl

Each file is an eval trajectory file (``agentrl eval --out``, or a run's ``eval/step_N.jsonl``).
For each puzzle (env seed) in both files it takes the share of that puzzle's episodes that were
solved (1 or 0 under greedy decoding; k tries a puzzle under ``eval.greedy=false
eval.samples_per_seed=k``) and prints each file's success, the puzzles whose share rose and fell,
the mean difference with its 95% bootstrap interval over puzzles, and the two-sided p-value of a
paired sign-flip permutation test (under "no difference" each puzzle's difference is as likely
negative as positive): exact up to 16 changed puzzles, Monte Carlo beyond. With one greedy episode
a puzzle (every difference +-1) the p is McNemar's exact test, however many changed. Both files
should hold the same number of tries a puzzle; the script warns where they do not.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

from agentrl.rollout.trajectory import read_jsonl
from agentrl.training.metrics import paired_p_value

#: Permutations of the Monte Carlo test when exact enumeration is too big; bootstrap resamples.
DRAWS = 20_000


def solved_share(path: Path) -> dict[int, float]:
    """Seed -> share of its episodes solved, from an eval trajectory file."""
    episodes, warnings = read_jsonl(path)
    for warning in warnings:
        print(f"paired_eval: {path}: {warning}", file=sys.stderr)
    by_seed: dict[int, list[bool]] = defaultdict(list)
    for episode in episodes:
        by_seed[episode.seed].append(bool(episode.success))
    tries = sorted({len(s) for s in by_seed.values()})
    if len(tries) > 1:
        print(f"paired_eval: {path}: puzzles have {tries} tries each, not one number", file=sys.stderr)
    return {seed: sum(s) / len(s) for seed, s in by_seed.items()}


def sign_flip_p(diffs: list[float], rng: random.Random) -> float:
    """Two-sided p of the paired sign-flip test of ``mean(diffs) == 0``: exact for up to 16 nonzero
    differences or when all are +-1 (McNemar), else over ``DRAWS`` random flips (with the observed
    one counted)."""
    nonzero = [d for d in diffs if d != 0]
    if not nonzero:
        return 1.0
    if all(abs(d) == 1 for d in nonzero):  # one try a puzzle: McNemar's exact binomial test
        return paired_p_value(sum(d > 0 for d in nonzero), sum(d < 0 for d in nonzero))
    observed = abs(sum(nonzero)) - 1e-12
    if len(nonzero) <= 16:
        hits = sum(
            abs(sum(d if (mask >> i) & 1 else -d for i, d in enumerate(nonzero))) >= observed
            for mask in range(2 ** len(nonzero))
        )
        return hits / 2 ** len(nonzero)
    hits = sum(abs(sum(d if rng.random() < 0.5 else -d for d in nonzero)) >= observed for _ in range(DRAWS))
    return (hits + 1) / (DRAWS + 1)


def bootstrap_interval(diffs: list[float], rng: random.Random) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean difference, resampling puzzles."""
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(DRAWS))
    return means[int(0.025 * DRAWS)], means[math.ceil(0.975 * DRAWS) - 1]


def compare(before: dict[int, float], after: dict[int, float], seed: int = 0) -> dict[str, float]:
    """The paired comparison over the puzzles both evaluations played."""
    common = sorted(set(before) & set(after))
    if not common:
        raise SystemExit(
            "paired_eval: the two files share no puzzle (env seed); compare evaluations of the same seeds"
        )
    diffs = [after[s] - before[s] for s in common]
    rng = random.Random(seed)
    low, high = bootstrap_interval(diffs, rng)
    return {
        "puzzles": len(common),
        "before": sum(before[s] for s in common) / len(common),
        "after": sum(after[s] for s in common) / len(common),
        "rose": sum(d > 0 for d in diffs),
        "fell": sum(d < 0 for d in diffs),
        "mean_diff": sum(diffs) / len(diffs),
        "ci_low": low,
        "ci_high": high,
        "p": sign_flip_p(diffs, rng),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="eval trajectory file of the first model")
    parser.add_argument("after", type=Path, help="eval trajectory file of the second model, same seeds")
    args = parser.parse_args()
    for path in (args.before, args.after):
        if not path.is_file():
            parser.error(
                f"{path} is not a file: give an eval trajectory file, e.g. runs/NAME/eval/step_000004.jsonl "
                "or the eval.jsonl that `agentrl eval --out DIR` writes"
            )
    r = compare(solved_share(args.before), solved_share(args.after))
    print(
        f"{r['puzzles']} puzzles: success {r['before']:.3f} -> {r['after']:.3f} "
        f"({r['mean_diff']:+.3f}, 95% CI {r['ci_low']:+.3f} to {r['ci_high']:+.3f}); "
        f"{r['rose']} puzzles rose, {r['fell']} fell; sign-flip p = {r['p']:.3g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
