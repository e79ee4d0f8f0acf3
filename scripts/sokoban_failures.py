"""Why a Sokoban evaluation's failed rooms failed: each replayed turn by turn against the BFS oracle.

For every failed episode of an eval (or trajectory) file, the room is rebuilt from its seed (and the
env kwargs of the run that wrote the file, else the default recipe's) and the episode's turns are
replayed; the first turn that goes wrong is classified:

- ``wrong push direction`` / ``wrong push square``: the thought names another push than the
  optimal plan's next one (it may still be solvable, but the episode then failed), ``impossible``
  where the square to push from or the box's next square is a wall, else ``possible``;
- ``no push in thought``: the thought names no push at all;
- ``thought right, moves reach a dead state`` / ``... no progress``: the thought matches the
  oracle's, the reply's moves then make the room unsolvable or do not shorten the plan;
- ``ran out of turns``: every turn was right and the turns ran out.

Apart from that class, it counts the failed rooms where a box went onto a *dead square*, one from
which no pushes bring it to a target (``live_squares``: the pushes ``exclude_dead_pushes`` leaves
out of the observation), and the turn it first did.

Over all episodes, solved or not, it counts those with a turn whose moves ignored its thought
(``SokobanEnv.actions_follow_thought``: not a shortest walk to the named push, or more than that
push); files written before turns recorded ``follows_thought`` are judged on the replay. A solved
room with such a turn is a success the reasoning did not earn, which ``algo.faithful_only`` keeps
out of RL's update.

Last, the push direction every episode's first thought names, beside the optimal plans' first
pushes in the same rooms: a model that favours one direction whatever the room shows there.

    python scripts/sokoban_failures.py runs/NAME/eval/step_000004.jsonl [more files]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from agentrl_envs.sokoban import ACTIONS, DELTAS, WALL, SokobanEnv, parse_layout
from agentrl_envs.sokoban_solver import live_squares

from agentrl.config import load_config
from agentrl.rollout.manager import parse_reply
from agentrl.rollout.trajectory import Trajectory, Turn, read_jsonl

PUSH = re.compile(r"I push the box (\w+) from row (\d+) column (\d+)")


def _blocked(env: SokobanEnv, push: re.Match) -> bool:
    """Whether the push a thought names is impossible: the square to push from, or the square past
    the box, is a wall (or off the grid)."""
    grid = env.render().splitlines()
    dr, dc = DELTAS[ACTIONS.index(push.group(1))]
    row, col = int(push.group(2)) - 1, int(push.group(3)) - 1  # the player's square, from 1 in text
    past = (row + 2 * dr, col + 2 * dc)
    rows, cols = env.dim_room

    def wall(r: int, c: int) -> bool:
        return not (0 <= r < rows and 0 <= c < cols) or grid[r][c] == WALL

    return wall(row, col) or wall(*past)


def _sent(turn: Turn) -> list[str]:
    """The actions the env received in ``turn``: after a format error the recorded ones were parsed
    but never sent."""
    return turn.actions if turn.format_ok else []


def _replay_start(env: SokobanEnv, episode: Trajectory) -> None:
    """Reset ``env`` to ``episode``'s room. A training room drawn with min_plan_length reports the
    seed that builds it on its own, and a turned one its orientation."""
    info = episode.reset_info
    env.reset(
        seed=int(info.get("room_seed", episode.seed)), options={"orientation": info.get("orientation", 0)}
    )


def dead_square_turn(env: SokobanEnv, episode: Trajectory) -> int | None:
    """The turn (from 1) whose moves first put a box on a dead square, ``None`` if none did."""
    _replay_start(env, episode)
    room = parse_layout(env.render())
    live = live_squares(room.walls, room.targets)
    for i, turn in enumerate(episode.turns):
        for action in _sent(turn):
            env.step(action)
            if not live.issuperset(parse_layout(env.render()).boxes):
                return i + 1
    return None


def first_mistake(env: SokobanEnv, episode: Trajectory) -> str:
    """The class of the first turn of ``episode`` that departs from the oracle (see module doc)."""
    _replay_start(env, episode)
    for i, turn in enumerate(episode.turns):
        label = f"turn {min(i + 1, 3)}{'+' if i >= 2 else ''}"
        said, oracle = PUSH.search(turn.reply), PUSH.search(env.oracle_thought())
        if said is None:
            return f"{label}: no push in thought"
        if oracle is not None and said.groups() != oracle.groups():
            kind = "direction" if said.group(1) != oracle.group(1) else "square"
            return f"{label}: wrong push {kind} ({'impossible' if _blocked(env, said) else 'possible'})"
        before = env.oracle_actions() or []
        for action in _sent(turn):
            env.step(action)
        after = env.oracle_actions()
        if after is None:
            return f"{label}: thought right, moves reach a dead state"
        if len(after) >= len(before):
            return f"{label}: thought right, moves no progress"
    return "ran out of turns"


def ignores_its_thought(env: SokobanEnv, episode: Trajectory) -> bool:
    """Whether a turn of ``episode`` made moves its thought did not name: the recorded
    ``follows_thought``, else the env's verdict on the replay."""
    if any(t.follows_thought is not None for t in episode.turns):
        return any(t.follows_thought is False for t in episode.turns)
    _replay_start(env, episode)
    for turn in episode.turns:
        if turn.format_ok:
            # What the rollout judged: the last <think> before the answer and every action parsed
            # (``turn.actions`` stops where the room was solved).
            parsed = parse_reply(turn.reply, think=True, max_actions=sys.maxsize)  # no cap: all parsed
            if env.actions_follow_thought(parsed.thought, parsed.actions) is False:
                return True
        for action in _sent(turn):
            env.step(action)
    return False


def first_pushes(env: SokobanEnv, episodes: list[Trajectory]) -> tuple[Counter, Counter]:
    """The push direction each episode's first thought names (``-`` where it names none), and the
    optimal plan's first push in the same rooms. RL that drifts shows here first: the model comes to
    favour one direction whatever the room (docs/sokoban-recipe.md, "One room in four turns")."""
    named, oracle = Counter(), Counter()
    for episode in episodes:
        said = PUSH.search(episode.turns[0].reply) if episode.turns else None
        named[said.group(1) if said else "-"] += 1
        _replay_start(env, episode)
        plan = PUSH.search(env.oracle_thought())
        oracle[plan.group(1) if plan else "-"] += 1
    return named, oracle


def _directions(counts: Counter) -> str:
    return ", ".join(f"{d} {n}" for d, n in counts.most_common())


def env_for(path: Path) -> SokobanEnv:
    """The env of the run that wrote ``path`` (``RUN/eval/step_*.jsonl``: ``RUN/config.yaml``'s
    ``env.kwargs``), else the default recipe's."""
    config = path.resolve().parent.parent / "config.yaml"
    cfg = load_config(config_file=str(config)) if config.is_file() else load_config(env="sokoban")
    if cfg.env.name != "sokoban":
        raise SystemExit(f"{path}: written by a run of env {cfg.env.name!r} ({config}), not sokoban")
    return SokobanEnv(**cfg.env.kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="eval/step_*.jsonl or trajectories/step_*.jsonl")
    args = parser.parse_args()
    for path in args.files:
        env = env_for(path)
        episodes, _ = read_jsonl(path)
        failed = [e for e in episodes if not e.success]
        counts = Counter(first_mistake(env, e) for e in failed)
        print(f"{path}: {len(failed)} of {len(episodes)} failed")
        for kind, n in counts.most_common():
            print(f"  {n:>4}  {kind}")
        dead = Counter(t for e in failed if (t := dead_square_turn(env, e)) is not None)
        turns = ", ".join(f"turn {t}: {n}" for t, n in sorted(dead.items()))
        print(
            f"  a box pushed onto a dead square in {sum(dead.values())} of the {len(failed)}"
            + (f" ({turns})" if turns else "")
        )
        solved = [e for e in episodes if e.success]
        print(
            "  moves that ignored the thought: in "
            f"{sum(ignores_its_thought(env, e) for e in solved)} of {len(solved)} solved, "
            f"{sum(ignores_its_thought(env, e) for e in failed)} of {len(failed)} failed"
        )
        named, oracle = first_pushes(env, episodes)
        print(f"  first push named: {_directions(named)} (the optimal plans': {_directions(oracle)})")


if __name__ == "__main__":
    main()
