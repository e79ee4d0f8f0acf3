"""Which push the optimal plan takes at each turn, and whether anything the model reads decides it.

Each demonstrated turn names one push, the BFS plan's next. Along the plan of every room (one box),
each push is classed against what a thought can read off the observation: the directions *toward*
the target (the box's row and column against the target's), the pushes the walls allow (the
observation's pushes line), and the target's *open sides* (the directions a box can be pushed onto
the target in, the square before it and the player's square behind that being floor):

- ``away``: the plan pushes in no direction toward the target;
- ``one toward allowed``: only one push toward the target is allowed, so the pushes line decides;
- ``the target's side decides, rightly`` / ``... wrongly``: two pushes toward the target are allowed
  and the target opens along only one of them, so that push would come last and the other first;
  the plan agrees, or does not;
- ``open``: two pushes toward the target are allowed and the target's sides do not tell which
  first (both open, or neither): walls further away decide.

The counts are split by the room's shortest plan (1-3, 4-6, 7+ moves) and by the plan's first push
against its later ones (the first is where the warm start's failures begin).

    python scripts/sokoban_push_choice.py                  # the 128 held-out rooms, seeds 0-127
    python scripts/sokoban_push_choice.py --first-seed 10000 --rooms 300 --min-plan-length 4
"""

from __future__ import annotations

import argparse
from collections import Counter

from agentrl_envs.sokoban import ACTIONS, DELTAS, SokobanEnv, SokobanRoom, parse_layout

Cell = tuple[int, int]
STEP = dict(zip(ACTIONS, DELTAS))


def toward(box: Cell, target: Cell) -> list[str]:
    """The pushes that bring ``box`` nearer ``target``: a row direction, a column direction, or both."""
    rows = ["Up"] if target[0] < box[0] else ["Down"] if target[0] > box[0] else []
    cols = ["Left"] if target[1] < box[1] else ["Right"] if target[1] > box[1] else []
    return rows + cols


def _floor(room: SokobanRoom, cell: Cell) -> bool:
    rows, cols = room.dim
    return 0 <= cell[0] < rows and 0 <= cell[1] < cols and not room.walls[cell]


def allowed(room: SokobanRoom, box: Cell) -> list[str]:
    """The pushes the walls allow ``box`` (the observation's pushes line, one box)."""
    return [
        move
        for move, (dr, dc) in STEP.items()
        if _floor(room, (box[0] + dr, box[1] + dc)) and _floor(room, (box[0] - dr, box[1] - dc))
    ]


def open_sides(room: SokobanRoom, target: Cell) -> list[str]:
    """The pushes that can put a box onto ``target``: the square before it and the one behind that
    (where the player stands) are floor."""
    return [
        move
        for move, (dr, dc) in STEP.items()
        if _floor(room, (target[0] - dr, target[1] - dc))
        and _floor(room, (target[0] - 2 * dr, target[1] - 2 * dc))
    ]


def classify(room: SokobanRoom, push: str) -> str:
    """The class (module doc) of the plan's ``push`` in ``room`` (one box, off its target)."""
    (box,), (target,) = room.boxes, room.targets
    ways = toward(box, target)
    if push not in ways:
        return "away"
    choices = [m for m in ways if m in allowed(room, box)]
    if len(choices) == 1:
        return "one toward allowed"
    last = [m for m in ways if m in open_sides(room, target)]
    if len(last) != 1:
        return "open"
    first = next(m for m in ways if m != last[0])
    return f"the target's side decides, {'rightly' if push == first else 'wrongly'}"


def plan_pushes(env: SokobanEnv) -> list[tuple[SokobanRoom, str]]:
    """Each push of the env's optimal plan from its current state, with the state it is chosen in;
    plays the plan out."""
    out = []
    for move in env.oracle_actions() or []:
        room = parse_layout(env.render())
        dr, dc = STEP[move]
        if (room.player[0] + dr, room.player[1] + dc) == room.boxes[0]:
            out.append((room, move))
        env.step(move)
    return out


def length_class(moves: int) -> str:
    return "1-3 moves" if moves <= 3 else "4-6 moves" if moves <= 6 else "7+ moves"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--rooms", type=int, default=128)
    parser.add_argument("--min-plan-length", type=int, default=0, help="as RL's rooms: env.train_options")
    args = parser.parse_args()
    env = SokobanEnv(dim_room=(6, 6), num_boxes=1)
    options = {"min_plan_length": args.min_plan_length} if args.min_plan_length else None
    counts: Counter[tuple[str, str, str]] = Counter()
    for seed in range(args.first_seed, args.first_seed + args.rooms):
        _, info = env.reset(seed=seed, options=options)
        length = length_class(info["optimal_plan_length"])
        for i, (room, push) in enumerate(plan_pushes(env)):
            counts[(length, "first push" if i == 0 else "later pushes", classify(room, push))] += 1
    print(f"{args.rooms} rooms from seed {args.first_seed}: the plan's pushes, classed")
    for key in sorted({k[:2] for k in counts}):
        total = sum(n for k, n in counts.items() if k[:2] == key)
        parts = ", ".join(f"{kind} {n}" for (*head, kind), n in sorted(counts.items()) if tuple(head) == key)
        print(f"  {key[0]}, {key[1]} ({total}): {parts}")


if __name__ == "__main__":
    main()
