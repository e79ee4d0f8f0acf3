"""Benchmark: agentrl's Sokoban env against gym-sokoban's own env, random moves, one process.

Both play N random moves in 6x6 rooms with one box and a 100-step limit, resetting whenever an
episode ends, so room generation (the same gym-sokoban generator in both) is included. gym-sokoban's
env is constructed directly (not through gym.make) and renders an RGB frame every step, which is
what its ``step`` returns; ours returns the grid as text. A second figure times steps alone.

    python3 scripts/bench_sokoban_env.py --steps 5000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import time
import warnings
from collections.abc import Callable

import numpy as np


def bench_ours(steps: int, seed: int, resets: bool) -> float:
    """Steps per second of agentrl's env."""
    import agentrl

    env = agentrl.make("sokoban", dim_room=(6, 6), num_boxes=1, max_steps=100)
    rng = random.Random(seed)
    moves = ("Up", "Down", "Left", "Right")
    env.reset(seed=seed)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(moves[rng.randrange(4)])
        if resets and (terminated or truncated):
            env.reset()
    return steps / (time.perf_counter() - start)


def gym_sokoban_env_class() -> Callable[..., object]:
    """gym-sokoban's SokobanEnv, imported with its deprecation noise (old gym, pkg_resources) silenced."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        from gym_sokoban.envs.sokoban_env import SokobanEnv

    return SokobanEnv


def bench_gym_sokoban(steps: int, seed: int, resets: bool) -> float:
    """Steps per second of gym-sokoban's env, push actions 1-4 (its Up/Down/Left/Right)."""
    env_class = gym_sokoban_env_class()
    # Its generator and env draw from the global RNGs; it prints a line on each generation retry.
    random.seed(seed)
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = env_class(dim_room=(6, 6), max_steps=100, num_boxes=1)
        rng = random.Random(seed)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, done, _ = env.step(1 + rng.randrange(4))
            if resets and done:
                env.reset()
        return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5_000, help="random moves per env (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    for label, resets in (
        ("with resets (episode ends -> new room)", True),
        ("steps only (no resets)", False),
    ):
        ours = bench_ours(args.steps, args.seed, resets)
        theirs = bench_gym_sokoban(args.steps, args.seed, resets)
        print(f"{label}, {args.steps} random moves, 6x6, 1 box:")
        print(f"  agentrl SokobanEnv      {ours:12,.0f} steps/s")
        print(f"  gym-sokoban SokobanEnv  {theirs:12,.0f} steps/s")
        print(f"  ratio                   {ours / theirs:12.1f}x")


if __name__ == "__main__":
    main()
