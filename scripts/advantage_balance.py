"""How much of a step's update pushes the sampled text down on balance, per loss aggregation.

For the episodes a step trains on (after the group filter), each trained token carries its
episode's advantage A. Under ``token_mean`` every token weighs the same, so an episode of n tokens
weighs n; under ``seq_mean`` every episode weighs the same. The balance

    sum_i w_i A_i / sum_i w_i |A_i|

is 0 when the pushes up and down cancel (GRPO's advantages sum to 0 within a group), and -1 when
the update only pushes down. Where failed episodes are longer than solved ones (a failed Sokoban
room plays every turn), ``token_mean`` leans negative: the text that solved and failed episodes
share (the thought's copying) is pushed down on balance.

    python scripts/advantage_balance.py runs/NAME 1 2 3 4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agentrl.algorithms.advantages import AdvantageParams
from agentrl.algorithms.credit import EpisodeFilter, assign_credit
from agentrl.algorithms.rewards import ShapingParams
from agentrl.rollout.trajectory import read_jsonl

FILTERS = {
    "StarPO-S top half": EpisodeFilter(keep_group_fraction=0.5),
    "mixed success only": EpisodeFilter(mixed_success_only=True),
}


def balance(run: Path, step: int, filters: EpisodeFilter) -> tuple[int, float, float]:
    """(episodes trained, token_mean balance, seq_mean balance) of one step's trajectories."""
    trajectories, _ = read_jsonl(run / "trajectories" / f"step_{step:06d}.jsonl")
    credit = assign_credit(trajectories, AdvantageParams(), ShapingParams(), filters)
    tok_net = tok_abs = seq_net = seq_abs = 0.0
    for traj in credit.selected:
        adv = [a for s in traj.samples for a, m in zip(s.advantages, s.loss_mask) if m]
        tok_net += sum(adv)
        tok_abs += sum(abs(a) for a in adv)
        mean = sum(adv) / max(1, len(adv))
        seq_net += mean
        seq_abs += abs(mean)
    return len(credit.selected), tok_net / max(tok_abs, 1e-12), seq_net / max(seq_abs, 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder with trajectories/")
    parser.add_argument("steps", type=int, nargs="+", help="training steps to read")
    args = parser.parse_args()
    print(f"{'step':>4}  {'filter':<20} {'episodes':>8}  {'token_mean':>10}  {'seq_mean':>8}")
    for step in args.steps:
        for name, filters in FILTERS.items():
            n, tok, seq = balance(args.run, step, filters)
            print(f"{step:>4}  {name:<20} {n:>8}  {tok:>+10.2f}  {seq:>+8.2f}")


if __name__ == "__main__":
    main()
