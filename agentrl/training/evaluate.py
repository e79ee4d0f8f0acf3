"""``agentrl eval``: play held-out seeds with any model (a folder, a run, the default) and report.

May import: policy, checkpoint, metrics, logger, curriculum, distributed (in agentrl.training), and
config, algorithms, replay, rollout, envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentrl import seeds
from agentrl.config import Config
from agentrl.rollout.manager import RolloutManager
from agentrl.rollout.trajectory import Trajectory, step_filename, write_jsonl
from agentrl.training.distributed import World, gather_objects
from agentrl.training.logger import RunLogger, render_sample
from agentrl.training.metrics import eval_metrics


def eval_seeds(cfg: Config) -> list[int]:
    return seeds.eval_env_seeds(cfg.env.eval_seed_start, cfg.eval.episodes)


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
    env_seeds = eval_seeds(cfg)
    if world is not None and world.size > 1:
        env_seeds = env_seeds[world.rank :: world.size]
    trajectories = rollout.rollout(
        env_seeds,
        step=step,
        split="eval",
        sampling_seed=seeds.eval_sampling_seed(cfg.train.seed),
        group_size=cfg.eval.samples_per_seed,
        temperature=0.0 if cfg.eval.greedy else cfg.eval.temperature,
        reset_options=reset_options,
    )
    return trajectories


def start_eval_config(cfg: Config) -> Config:
    """The config of a run's step-0 evaluation: a base model (no ``run.init``) plays the first
    ``eval.base_episodes`` held-out seeds; a run that starts from another is evaluated on all."""
    return cfg if cfg.run.init else first_seeds(cfg, cfg.eval.base_episodes)


def first_seeds(cfg: Config, n: int | None) -> Config:
    """``cfg`` evaluating only the first ``n`` of its held-out seeds (``None``: all of them)."""
    if n is None or n >= cfg.eval.episodes:
        return cfg
    return replace(cfg, eval=replace(cfg.eval, episodes=n))


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


def evaluate_and_log(
    cfg: Config,
    rollout: RolloutManager,
    run_dir: Path,
    step: int,
    log: RunLogger,
    world: World,
    reset_options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Evaluate on the held-out seeds; write ``eval/step_N.jsonl`` and a console line; return metrics."""
    t0 = time.perf_counter()
    mine = run_eval(cfg, rollout, step, world, reset_options)
    trajectories = [t for part in gather_objects(mine, world) for t in part]
    metrics = eval_metrics(trajectories, "eval")
    metrics["timing/eval_s"] = time.perf_counter() - t0
    if world.is_main:
        write_jsonl(run_dir / "eval" / step_filename(step), trajectories)
        log.text(step, "samples/eval", render_sample(trajectories[0]))
        log.info(
            f"eval step {step}: success {success_text(metrics)}, "
            f"format-valid {metrics['eval/format_valid_rate']:.3f}, reward {metrics['eval/reward']:.3f}"
        )
    return metrics


def evaluation_due(step: int, last_step: int, every: int, at_last: bool = True) -> bool:
    """The held-out evaluation schedule of RL steps and SFT updates alike: every ``every`` (0:
    none on the way) and, with ``at_last``, after ``last_step``. Callers check ``eval.every`` (0:
    no evaluation at all) first."""
    if step == last_step:
        return at_last
    return every > 0 and step % every == 0


def success_text(metrics: dict[str, float]) -> str:
    """``0.312 (5/16, 95% CI 0.14-0.56)`` from an evaluation's metrics."""
    n = int(metrics["eval/episodes"])
    rate = metrics["eval/success_rate"]
    low, high = metrics["eval/success_ci_low"], metrics["eval/success_ci_high"]
    return f"{rate:.3f} ({round(rate * n)}/{n}, 95% CI {low:.2f}-{high:.2f})"
