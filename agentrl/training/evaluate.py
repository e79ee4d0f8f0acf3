"""``agentrl eval``: play held-out seeds with any model (a folder, a run, the default) and report."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentrl.config import Config
from agentrl.rollout.manager import RolloutManager
from agentrl.rollout.trajectory import Trajectory, write_jsonl
from agentrl.training.distributed import World
from agentrl.training.metrics import eval_metrics


def eval_seeds(cfg: Config) -> list[int]:
    return [cfg.env.eval_seed_start + i for i in range(cfg.eval.episodes)]


def run_eval(
    cfg: Config,
    rollout: RolloutManager,
    step: int,
    world: World | None = None,
    reset_options: dict[str, Any] | None = None,
) -> list[Trajectory]:
    """Play the held-out seeds (this rank's share) greedily or sampled, as configured.

    ``reset_options`` go to every env reset; by default, with a curriculum, the last stage's options
    (``agentrl eval`` then measures the curriculum's target task)."""
    if reset_options is None and cfg.curriculum.stages:
        reset_options = cfg.curriculum.stages[-1].env_options or None
    seeds = eval_seeds(cfg)
    if world is not None and world.size > 1:
        seeds = seeds[world.rank :: world.size]
    trajectories = rollout.rollout(
        seeds,
        step=step,
        split="eval",
        sampling_seed=cfg.train.seed + 17,
        group_size=cfg.eval.samples_per_seed,
        temperature=0.0 if cfg.eval.greedy else cfg.eval.temperature,
        reset_options=reset_options,
    )
    return trajectories


def start_eval_config(cfg: Config) -> Config:
    """The config of a run's step-0 evaluation: a base model (no ``run.init``) plays the first
    ``eval.base_episodes`` held-out seeds; a run that starts from another is evaluated on all."""
    if cfg.run.init or cfg.eval.base_episodes is None:
        return cfg
    return replace(cfg, eval=replace(cfg.eval, episodes=min(cfg.eval.base_episodes, cfg.eval.episodes)))


def evaluate(cfg: Config) -> tuple[list[Trajectory], dict[str, float]]:
    """Load the configured model, play ``cfg.eval.episodes`` held-out seeds, return trajectories and metrics."""
    from agentrl.models import load_tokenizer, resolve_model_path
    from agentrl.rollout.engines import start_engine
    from agentrl.training.policy import device_for, engine_options, engine_setup

    path = resolve_model_path(cfg.model.path)
    device = device_for(cfg)
    tokenizer = load_tokenizer(path)
    engine, note = start_engine(
        cfg.engine.name, engine_setup(cfg, path, tokenizer.pad_token_id, device), engine_options(cfg)
    )
    print(f"agentrl eval: {note}", file=sys.stderr)
    rollout = RolloutManager(engine, tokenizer, cfg.env.name, cfg.rollout, cfg.env.kwargs)
    try:
        trajectories = run_eval(cfg, rollout, step=-1)
    finally:
        rollout.close()
        engine.close()
    return trajectories, eval_metrics(trajectories, "eval")


def evaluate_cli(cfg: Config, episodes: int | None = None, out: str | None = None) -> int:
    if episodes is not None:
        cfg.eval.episodes = episodes
    trajectories, metrics = evaluate(cfg)
    print(json.dumps({k: round(v, 4) for k, v in sorted(metrics.items())}, indent=2))
    if out:
        path = write_jsonl(Path(out) / "eval.jsonl", trajectories)
        (Path(out) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"wrote {path}")
    return 0
