"""Warm start: supervised fine-tuning on oracle demonstrations or on a run's successful episodes.

Demonstrations are played through the rollout manager itself with scripted replies (the env's
oracle), so every SFT token sequence is templated exactly as the policy's own RL episodes are:
multi-turn episodes keep env observations in the context with loss mask 0, and only the reply
tokens are trained. The loss is the negative log-likelihood of those tokens, which is the REINFORCE
loss with advantage 1; so SFT runs on the trainer's own update, DeepSpeed and checkpoints.

May import: :mod:`agentrl.training.update`, :mod:`agentrl.training.evaluate`,
:mod:`agentrl.training.run` and what they stand on; never :mod:`agentrl.training.trainer` (SFT and
RL share building blocks, not each other).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import gymnasium

from agentrl import seeds
from agentrl.config import Config, ConfigError
from agentrl.rollout.manager import RolloutManager
from agentrl.rollout.trajectory import Trajectory, read_jsonl, step_filename, write_jsonl

if TYPE_CHECKING:
    from agentrl.training.distributed import World
    from agentrl.training.logger import RunLogger
    from agentrl.training.policy import Policy


def oracle_reply(think: bool, max_actions: int) -> Callable[[gymnasium.Env], str]:
    """A scripted reply from the env's oracle: a short true thought and the next actions."""

    def reply(env: gymnasium.Env) -> str:
        base = env.unwrapped
        actions = base.oracle_actions() if hasattr(base, "oracle_actions") else None
        if not actions:
            return ""  # no known solution from here: an unusable reply, and the episode is dropped
        if not think:
            return f"<answer>{' || '.join(actions[:max_actions])}</answer>"
        if hasattr(base, "oracle_turn_actions"):  # the moves the thought explains, not the plan's next ones
            actions = base.oracle_turn_actions() or actions
        answer = " || ".join(actions[:max_actions])
        thought = base.oracle_thought() if hasattr(base, "oracle_thought") else "I work out the answer."
        return f"<think>{thought}</think><answer>{answer}</answer>"

    return reply


def oracle_demonstrations(cfg: Config, rollout: RolloutManager, episodes: int) -> list[Trajectory]:
    """Successful oracle episodes on training seeds (disjoint from eval seeds), one per seed."""
    env_seeds = seeds.demonstration_env_seeds(cfg.env.train_seed_start, episodes)
    reply = oracle_reply(cfg.rollout.think, rollout.max_actions)
    demos: list[Trajectory] = []
    for start in range(0, len(env_seeds), 64):
        batch = rollout.rollout(
            env_seeds[start : start + 64],
            step=0,
            group_size=1,
            scripted=reply,
            reset_options=cfg.sft.reset_options or None,
        )
        demos += [t for t in batch if t.success]
    return demos


def successful_episodes(run_dirs: Sequence[str], skipped: list[str] | None = None) -> list[Trajectory]:
    """Successful episodes of earlier runs (training and eval files), without duplicates.

    Files are read with ``read_jsonl``: malformed records are left out, and their warnings
    (``DIR/step_000001.jsonl:LINE: skipped a malformed record: FIELD: REASON``) appended to ``skipped``.
    """
    seen: set[tuple] = set()
    out: list[Trajectory] = []
    for run in run_dirs:
        files = sorted(Path(run).glob("trajectories/*.jsonl")) + sorted(Path(run).glob("eval/*.jsonl"))
        if not files:
            raise ConfigError(f"--from {run}: no trajectory files (trajectories/*.jsonl, eval/*.jsonl) found")
        for path in files:
            trajectories, warnings = read_jsonl(path)
            if skipped is not None:
                skipped += [f"{path.parent}/{w}" for w in warnings]
            for traj in trajectories:
                key = tuple(tuple(s.token_ids) for s in traj.samples)
                if traj.success and key not in seen:
                    seen.add(key)
                    out.append(traj)
    return out


def _as_targets(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """Advantage 1 on every sampled token: the REINFORCE loss becomes the token NLL."""
    for i, traj in enumerate(trajectories):
        traj.group = i  # every episode its own group: nothing is group-normalised in SFT
        for sample in traj.samples:
            sample.advantages = [float(m) for m in sample.loss_mask]
    return list(trajectories)


def sft(cfg: Config, sources: Sequence[str] | None = None, eval_last: bool = True) -> Path:
    """Fine-tune on demonstrations; log, evaluate and checkpoint like ``train``. Returns the run dir.

    Evaluates the starting model (step 0), then every ``sft.eval_every`` updates (``eval.every``
    when unset) and after the last; ``eval.every: 0`` evaluates nothing.
    ``eval_last=False`` skips the last (a warm start: the RL run evaluates the fine-tuned model at
    its own step 0)."""
    from agentrl.rollout.weight_sync import policy_weights
    from agentrl.training import checkpoint as ckpt
    from agentrl.training.evaluate import evaluate_and_log, start_eval_config
    from agentrl.training.logger import RunLogger
    from agentrl.training.policy import build_engine, build_policy, seed_everything
    from agentrl.training.run import (
        check_disk_space,
        check_model,
        check_reset_options,
        prepare_run_dir,
        save,
        set_up_process,
    )

    cfg = sft_config(cfg)
    check_model(cfg)
    check_reset_options(cfg)
    check_disk_space(cfg, 1, "SFT saves once, at the end")
    device, world = set_up_process(cfg)
    run_dir = Path(cfg.run.root) / cfg.run.name
    prepare_run_dir(run_dir, cfg, resume=False, world=world)
    seed_everything(cfg.train.seed)
    policy = build_policy(cfg, device)
    engine, engine_note = build_engine(cfg, policy)
    rollout = RolloutManager(engine, policy.tokenizer, cfg.env.name, cfg.rollout, cfg.env.kwargs)

    t0 = time.perf_counter()
    skipped: list[str] = []
    data = _as_targets(demonstrations(cfg, rollout, sources, skipped))
    if world.is_main:
        write_jsonl(run_dir / "sft_data.jsonl", data)
    total = cfg.sft.epochs * -(-len(data) // cfg.sft.batch_episodes)
    # The LR schedule and the progress bar count SFT updates as steps.
    cfg = replace(cfg, train=replace(cfg.train, steps=total))
    log = RunLogger(run_dir, total, 1, enabled=world.is_main, progress=cfg.run.progress)
    log.info(
        f"agentrl sft: {len(data)} demonstrations ({time.perf_counter() - t0:.0f} s to build), {total} updates"
    )
    log.info(f"agentrl sft: evaluation on {engine_note}")
    _log_skipped(log, skipped)
    try:
        if cfg.eval.every and cfg.eval.at_start:
            log.log(0, evaluate_and_log(start_eval_config(cfg), rollout, run_dir, 0, log, world))
        step = 0
        for step, batch in enumerate(_batches(cfg, data), 1):
            metrics = sft_update(cfg, policy, batch, step, world)
            if world.is_main and step == 1:
                write_jsonl(run_dir / "trajectories" / step_filename(step), batch)
            if evaluation_due(cfg, step, total, eval_last):
                if engine.capabilities.own_weights:  # the engine evaluates the weights just trained
                    engine.update_weights(policy_weights(policy.model, cfg.train.zero_stage))
                metrics.update(
                    evaluate_and_log(eval_config(cfg, step, total), rollout, run_dir, step, log, world)
                )
            log.log(step, metrics)
            log.advance(step)
        save(cfg, run_dir, ckpt.TrainerState(step=step), policy, world)
    finally:
        rollout.close()
        engine.close()
        log.close()
    return run_dir


def evaluation_due(cfg: Config, step: int, total: int, eval_last: bool) -> bool:
    """Whether SFT update ``step`` (of ``total``) is followed by a held-out evaluation: RL's schedule
    at ``sft.eval_every`` (``eval.every`` when unset)."""
    from agentrl.training.evaluate import evaluation_due as due

    every = cfg.eval.every if cfg.sft.eval_every is None else cfg.sft.eval_every
    return bool(cfg.eval.every) and due(step, total, every, at_last=eval_last)


def eval_config(cfg: Config, step: int, total: int) -> Config:
    """The config of the evaluation after SFT update ``step`` of ``total``: between updates, the
    first ``sft.eval_episodes`` held-out seeds; after the last, all ``eval.episodes``."""
    from agentrl.training.evaluate import first_seeds

    return cfg if step >= total else first_seeds(cfg, cfg.sft.eval_episodes)


def sft_config(cfg: Config) -> Config:
    """The run's config for SFT: the trainer's update with the NLL loss (REINFORCE, advantage 1, no
    KL, no entropy bonus, every token counts, one pass), at temperature 1 and ``sft.lr``."""
    algo = replace(
        cfg.algo,
        policy_loss=replace(cfg.algo.policy_loss, loss="reinforce", aggregation="token_mean"),
        kl=replace(cfg.algo.kl, coef=0.0),
        entropy_coef=0.0,
        ppo_epochs=1,
        mini_batches=1,
    )
    train_cfg = cfg.train if cfg.sft.lr is None else replace(cfg.train, lr=cfg.sft.lr)
    return replace(cfg, algo=algo, rollout=replace(cfg.rollout, temperature=1.0), train=train_cfg)


def demonstrations(
    cfg: Config, rollout: RolloutManager, sources: Sequence[str] | None, skipped: list[str]
) -> list[Trajectory]:
    """The successful episodes of ``sources`` (runs), else ``sft.episodes`` oracle demonstrations;
    the malformed records of ``sources`` are appended to ``skipped``."""
    data = (
        successful_episodes(sources, skipped)
        if sources
        else oracle_demonstrations(cfg, rollout, cfg.sft.episodes)
    )
    if not data:
        raise ConfigError("no successful episodes to learn from: check --from, or the env's oracle")
    return data


def _batches(cfg: Config, data: list[Trajectory]) -> Iterator[list[Trajectory]]:
    """``sft.batch_episodes`` demonstrations at a time, ``sft.epochs`` times over, in a fresh seeded
    order each epoch (so epochs do not repeat the same batches)."""
    order = random.Random(seeds.sft_order_seed(cfg.train.seed))
    for _epoch in range(cfg.sft.epochs):
        shuffled = order.sample(data, len(data))
        for start in range(0, len(shuffled), cfg.sft.batch_episodes):
            yield shuffled[start : start + cfg.sft.batch_episodes]


def sft_update(
    cfg: Config, policy: Policy, batch: list[Trajectory], step: int, world: World
) -> dict[str, float]:
    """One SFT optimizer step on ``batch`` (each rank its share; the update normalises by global
    totals); its metrics, the NLL as ``sft/nll``."""
    from agentrl.training.update import update

    t0 = time.perf_counter()
    metrics = update(cfg, policy, batch[world.rank :: world.size], step, world, temperature=1.0)
    metrics["timing/update_s"] = time.perf_counter() - t0
    metrics["sft/nll"] = metrics.pop("train/policy_loss", 0.0)
    metrics.pop("train/loss", None)  # the same number: SFT has no KL or entropy term
    for key in ("train/logprob_mismatch_mean", "train/logprob_mismatch_max"):
        metrics.pop(key, None)  # demonstrations have no rollout log-probs
    return metrics


def _log_skipped(log: RunLogger, skipped: list[str]) -> None:
    for warning in skipped[:20]:
        log.info(f"agentrl sft: --from: {warning}")
    if len(skipped) > 20:
        log.info(f"agentrl sft: --from: ... and {len(skipped) - 20} more malformed records skipped")
