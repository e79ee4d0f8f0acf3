"""``train(cfg)``: roll out, score, compute advantages, update with DeepSpeed, log, evaluate, save.

The loop in :func:`train` reads top to bottom; each phase is a small function below it. One step:

1. **rollout**: ``n_groups x group_size`` episodes (a group shares one env seed) with the engine;
2. **advantages**: shaped episode rewards -> per-turn advantages (estimator by name) -> onto the
   sampled tokens of each turn; StarPO-S keeps the top groups by in-group reward std;
3. **update**: ``ppo_epochs`` passes, each split into ``mini_batches`` optimizer steps, each a
   sum of micro-batches of at most ``micro_batch_tokens`` tokens (DeepSpeed accumulates);
4. **sync** the engine's weights (a no-op for the ``hf`` engine, which shares the module);
5. **log** metrics, trajectories and samples; evaluate when due;
6. **collapse guard**: warn, stop or switch on StarPO-S filtering when groups stop giving a signal;
7. **curriculum**: pick the next step's stage (env reset options, lr, temperature); checkpoint.

Curriculum stage logic lives in :mod:`agentrl.curriculum`, collapse detection in :mod:`agentrl.collapse`.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agentrl import checkpoint as ckpt
from agentrl.advantages import compute_advantages, select_groups_by_std
from agentrl.batching import MicroBatch, assign_advantages, pack_micro_batches, turn_batch
from agentrl.collapse import ADVICE, FILTER_KEEP_FRACTION, detect, signals
from agentrl.config import Config, ConfigError, configs_dir
from agentrl.curriculum import CurriculumState, advance, stage_at
from agentrl.distributed import World, all_reduce_max, all_reduce_sum, gather_objects, init_distributed
from agentrl.engines.base import Engine
from agentrl.logger import RunLogger, read_metrics
from agentrl.losses import (
    LossTotals,
    entropy_from_logits,
    get_aggregation,
    get_policy_loss,
    kl_coef_at,
    kl_penalty,
    masked_mean,
    token_logprobs,
)
from agentrl.metrics import eval_metrics, rollout_metrics
from agentrl.models import load_model, load_tokenizer, resolve_model_path
from agentrl.rewards import shaping_bonus
from agentrl.rollout import RolloutManager
from agentrl.trajectory import Trajectory, step_filename, write_jsonl


@dataclass
class Policy:
    """Everything the loop holds about the model being trained."""

    model: torch.nn.Module
    """The HF (or peft) module; the DeepSpeed engine wraps it and the hf engine samples from it."""
    ds_engine: Any
    tokenizer: Any
    reference: torch.nn.Module | None
    """Frozen reference for the KL term (``None`` when the KL is off or LoRA provides it)."""
    device: torch.device


@dataclass
class Stage:
    """What the current curriculum stage sets for one step (without a curriculum: the config's own)."""

    index: int
    env_options: dict[str, Any] | None
    """Reset options of every episode (``None``: the env's defaults)."""
    lr: float | None
    """Learning rate to put on the optimizer (``None``: leave the schedule alone)."""
    temperature: float
    """Rollout sampling temperature; the trainer's log-probs use the same one."""


@dataclass
class LoopState:
    """Loop state beyond the step, saved next to each checkpoint (``loop_state.json``) for --resume."""

    curriculum: CurriculumState = field(default_factory=CurriculumState)
    keep_group_fraction: float = 1.0
    """StarPO-S keep fraction in force (``collapse.action=filter`` may lower it during the run)."""
    guard_history: list[dict[str, float]] = field(default_factory=list)
    """The collapse guard's watched metrics of the latest ``collapse.patience`` steps."""
    warning: bool = False
    """Whether the last step raised a collapse warning (a new warning prints one console line)."""


LOOP_STATE_FILE = "loop_state.json"


def train(cfg: Config, resume: bool = False) -> Path:
    """Run (or resume) training as configured; return the run directory."""
    # ---- set-up -------------------------------------------------------------------------------
    _quiet_libraries()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = _device(cfg)
    world = init_distributed(device.type, timeout_s=cfg.train.dist_timeout_s)
    if cfg.train.n_groups % world.size:
        raise ConfigError(
            f"train.n_groups={cfg.train.n_groups} must be divisible by the {world.size} ranks: each rank plays "
            "whole groups (group-relative advantages need every episode of a group on one rank)"
        )
    run_dir = Path(cfg.run.root) / cfg.run.name
    start_step = _prepare_run_dir(run_dir, cfg, resume, world)
    _seed_everything(cfg.train.seed + world.rank)
    policy = _build_policy(cfg, device)
    state = ckpt.TrainerState(step=0, stage=_fixed_stage(cfg, 1))
    loop = LoopState(keep_group_fraction=cfg.algo.keep_group_fraction)
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        state = ckpt.load_checkpoint(latest, policy.ds_engine)
        loop = _load_loop_state(latest, state, cfg)
        start_step = state.step + 1
    engine = _build_engine(cfg, policy)
    rollout = RolloutManager(engine, policy.tokenizer, cfg.env.name, cfg.rollout, cfg.env.kwargs)
    log = RunLogger(run_dir, cfg.train.steps, start_step, enabled=world.is_main, progress=cfg.run.progress)
    log.info(
        f"agentrl: run {run_dir} | env {cfg.env.name} | {cfg.episodes_per_step} episodes/step | device {device}"
    )
    stop = _GracefulStop(log)

    try:
        if cfg.eval.every and cfg.eval.at_start and start_step == 1:
            log.log(0, _evaluate(cfg, rollout, run_dir, 0, log, world, _stage(cfg, loop, 1).env_options))
        for step in range(start_step, cfg.train.steps + 1):
            metrics: dict[str, float] = {}

            # ---- 0. curriculum: this step's stage sets env options, lr and temperature ---------
            stage = _stage(cfg, loop, step)
            if stage.lr is not None:
                _set_lr(policy, stage.lr)

            # ---- 1. rollout: this rank's share of the step's groups ----------------------------
            t0 = time.perf_counter()
            engine.wake()
            trajectories = rollout.rollout(
                _train_seeds(cfg, step, world),
                step=step,
                sampling_seed=_step_seed(cfg, step, world),
                temperature=stage.temperature,
                reset_options=stage.env_options,
            )
            engine.sleep()
            _offset_groups(trajectories, cfg, world)
            metrics["timing/rollout_s"] = time.perf_counter() - t0

            # ---- 2. rewards -> advantages -> tokens ---------------------------------------------
            selected, adv_metrics = _assign_advantages(cfg, trajectories, loop.keep_group_fraction)
            metrics.update(adv_metrics)

            # ---- 3. policy update ---------------------------------------------------------------
            t0 = time.perf_counter()
            metrics.update(_update(cfg, policy, selected, step, world, stage.temperature))
            metrics["timing/update_s"] = time.perf_counter() - t0
            metrics["perf/train_tokens_per_s"] = metrics["train/trained_tokens"] / max(
                metrics["timing/update_s"], 1e-9
            )

            # ---- 4. the engine samples with the new weights -------------------------------------
            engine.update_weights(_named_parameters(policy.model))

            # ---- 5. metrics, trajectories, evaluation ---------------------------------------------
            all_trajs = [t for part in gather_objects(trajectories, world) for t in part]
            metrics.update(rollout_metrics(all_trajs, "train", rollout.system_prompt))
            sampled = sum(t.num_sampled_tokens for t in all_trajs)
            metrics["perf/rollout_tokens_per_s"] = sampled / max(metrics["timing/rollout_s"], 1e-9)
            if world.is_main:
                write_jsonl(run_dir / "trajectories" / step_filename(step), all_trajs)
                log.text(step, "samples/train", _render_sample(all_trajs[0]))
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.train.steps):
                metrics.update(_evaluate(cfg, rollout, run_dir, step, log, world, stage.env_options))
            if cfg.curriculum.stages:
                metrics["curriculum/stage"] = float(stage.index)

            # ---- 6. collapse guard ------------------------------------------------------------
            collapsed = _collapse_guard(cfg, loop, metrics, step, log)
            log.log(step, metrics)

            # ---- 7. curriculum: the next step's stage; checkpoint -------------------------------
            loop.curriculum = _next_curriculum(cfg, loop.curriculum, step, metrics, log)
            state.step, state.stage = step, loop.curriculum.stage
            if (
                (cfg.run.save_every and step % cfg.run.save_every == 0)
                or step == cfg.train.steps
                or stop.requested
                or collapsed
            ):
                _save(cfg, run_dir, state, policy, world, loop)
            log.advance(step)
            if collapsed:
                log.info(
                    f"agentrl: stopped after step {step} (collapse.action=stop), checkpoint saved; "
                    f"resume with --resume --name {cfg.run.name} once the recipe is changed"
                )
                break
            if stop.requested:
                log.info(f"agentrl: stopped after step {step}; resume with --resume --name {cfg.run.name}")
                break
    finally:
        stop.restore()
        rollout.close()
        log.close()
    return run_dir


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------


def _quiet_libraries() -> None:
    """Keep the console for agentrl's progress bar: no per-save progress bars or INFO chatter."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def _device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    return torch.device(cfg.train.device)


def _dtype(cfg: Config, device: torch.device) -> str:
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if device.type == "cuda" else "float32"


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, world: World) -> int:
    """Create (or check, on resume) the run directory; refuse to overwrite a run."""
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None:
            raise ConfigError(
                f"--resume: {run_dir} has no complete checkpoint; check --name (runs: "
                f"{', '.join(sorted(p.name for p in run_dir.parent.glob('*'))) or '-'})"
            )
        if world.is_main:
            step = int(latest.name.split("_")[1])
            _truncate_metrics(run_dir, step)
        return 0
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or --name NEW for a new run"
        )
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return 1


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows newer than the checkpoint we resume from (they will be logged again)."""
    import json

    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _build_policy(cfg: Config, device: torch.device) -> Policy:
    import deepspeed

    path = resolve_model_path(cfg.run.init or cfg.model.path)
    dtype = _dtype(cfg, device)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=dtype, device=str(device))
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = None
    if cfg.model.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        lora = cfg.model.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
            ),
        )
    elif cfg.algo.kl.enabled:
        # The reference is the *initial* model (also on resume), frozen.
        reference = load_model(path, dtype=dtype, device=str(device)).eval().requires_grad_(False)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    total = cfg.train.steps * cfg.algo.ppo_epochs * cfg.algo.mini_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    ds_engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=_deepspeed_config(cfg, dtype)
    )
    if torch.distributed.get_world_size() == 1 and cfg.train.zero_stage == 0:
        # Alone there is nothing to average: skip DeepSpeed's flatten-and-copy of every gradient.
        ds_engine.enable_backward_allreduce = False
    return Policy(model=model, ds_engine=ds_engine, tokenizer=tokenizer, reference=reference, device=device)


def _lr_lambda(cfg: Config, total_updates: int):
    warmup, schedule = cfg.train.warmup_steps, cfg.train.lr_schedule

    def factor(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            progress = min(1.0, (update - warmup) / max(1, total_updates - warmup))
            return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))
        return 1.0

    return factor


def _deepspeed_config(cfg: Config, dtype: str) -> dict[str, Any]:
    """The ZeRO recipe from configs/deepspeed/ (or the user's file), with the fields agentrl owns set."""
    import json

    path = cfg.train.deepspeed_config or configs_dir() / "deepspeed" / f"zero{cfg.train.zero_stage}.json"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found; set train.deepspeed_config to a JSON file")
    ds = json.loads(path.read_text())
    # agentrl accumulates micro-batches itself (by tokens) and marks the boundary explicitly.
    ds["train_micro_batch_size_per_gpu"] = 1
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = cfg.train.grad_clip
    ds["bf16"] = {"enabled": dtype == "bfloat16"}
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _build_engine(cfg: Config, policy: Policy) -> Engine:
    if cfg.engine.name == "hf":
        from agentrl.engines.hf import HFEngine

        return HFEngine(
            policy.model,
            policy.tokenizer.pad_token_id,
            max_batch_size=cfg.engine.max_batch_size,
            seed=cfg.train.seed,
        )
    from agentrl.engines.vllm import VLLMEngine

    engine = VLLMEngine(
        resolve_model_path(cfg.run.init or cfg.model.path), seed=cfg.train.seed, **cfg.engine.vllm
    )
    return engine


def _named_parameters(model: torch.nn.Module):
    return ((name, p.detach()) for name, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------
# Curriculum: the stage of a step, its learning rate, the move to the next stage
# ------------------------------------------------------------------------------------------------


def _fixed_stage(cfg: Config, step: int) -> int:
    return stage_at(step, [s.steps for s in cfg.curriculum.stages])


def _stage(cfg: Config, loop: LoopState, step: int) -> Stage:
    """The stage that ``step`` plays: by the step counts, or (adaptive) where the run has moved to."""
    stages = cfg.curriculum.stages
    if not stages:
        return Stage(0, None, None, cfg.rollout.temperature)
    index = loop.curriculum.stage if cfg.curriculum.adaptive else _fixed_stage(cfg, step)
    stage = stages[index]
    return Stage(
        index=index,
        env_options=dict(stage.env_options) or None,
        lr=stage.lr if stage.lr is not None else cfg.train.lr,
        temperature=stage.temperature if stage.temperature is not None else cfg.rollout.temperature,
    )


def _set_lr(policy: Policy, lr: float) -> None:
    """Make ``lr`` the base of the LR schedule (warmup/cosine factors still apply) from now on."""
    scheduler = policy.ds_engine.lr_scheduler
    if all(base == lr for base in scheduler.base_lrs):
        return
    # LambdaLR sets each group's lr = base_lr x factor(update) at every scheduler step: change the
    # base, and the lr of the coming optimizer step (already set by the last scheduler step).
    scheduler.base_lrs = [lr] * len(scheduler.base_lrs)
    for group, factor in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = lr * factor(scheduler.last_epoch)


def _next_curriculum(
    cfg: Config, current: CurriculumState, step: int, metrics: dict[str, float], log: RunLogger
) -> CurriculumState:
    """The curriculum state after ``step``: the stage of the next step (and the adaptive window)."""
    cur = cfg.curriculum
    if not cur.stages:
        return current
    if cur.adaptive:
        nxt, move = advance(
            current,
            metrics.get("train/success_rate", 0.0),
            [s.steps for s in cur.stages],
            cur.window,
            cur.promote_at,
            cur.demote_at,
        )
        reason = {
            "promote": f"rolling success rate reached {cur.promote_at:g}",
            "demote": f"rolling success rate fell below {cur.demote_at:g}",
            "budget": "the stage's steps are spent",
        }.get(move or "", "")
    else:
        nxt, move = CurriculumState(stage=_fixed_stage(cfg, step + 1)), None
        reason = "schedule"
    if nxt.stage != current.stage and step < cfg.train.steps:
        stage = cur.stages[nxt.stage]
        log.info(
            f"agentrl: curriculum stage {nxt.stage + 1}/{len(cur.stages)} from step {step + 1} ({reason}): "
            f"env options {stage.env_options or '{}'}, lr {stage.lr or cfg.train.lr:g}, "
            f"temperature {cfg.rollout.temperature if stage.temperature is None else stage.temperature:g}"
        )
    return nxt


# ------------------------------------------------------------------------------------------------
# Collapse guard
# ------------------------------------------------------------------------------------------------


def _collapse_guard(
    cfg: Config, loop: LoopState, metrics: dict[str, float], step: int, log: RunLogger
) -> bool:
    """Watch this step's collapse signals; log ``collapse/warning``; act. True: stop the run now."""
    col = cfg.collapse
    watched = signals(col.warn_zero_std_fraction, col.warn_distinct_below, col.warn_instruction_echo)
    loop.guard_history.append({s.metric: metrics[s.metric] for s in watched if s.metric in metrics})
    loop.guard_history = loop.guard_history[-col.patience :]
    fired = detect(loop.guard_history, watched, col.patience)
    metrics["collapse/warning"] = float(bool(fired))
    was_warning, loop.warning = loop.warning, bool(fired)
    if not fired:
        if was_warning:
            log.info(f"agentrl: collapse signals cleared at step {step}")
        return False
    what = "; ".join(fired)
    if col.action == "stop":
        log.info(f"agentrl: collapse at step {step} for {col.patience} steps: {what}. Stopping. {ADVICE}")
        return True
    if col.action == "filter" and loop.keep_group_fraction > FILTER_KEEP_FRACTION:
        loop.keep_group_fraction = FILTER_KEEP_FRACTION
        log.info(
            f"agentrl: collapse at step {step} for {col.patience} steps: {what}. StarPO-S filtering on from "
            f"step {step + 1}: training on the top {FILTER_KEEP_FRACTION:.0%} of groups by reward std"
        )
        return False
    if not was_warning:  # one line when the signal starts; the metric marks every step it holds
        log.info(
            f"agentrl: collapse warning at step {step} ({col.patience} steps in a row): {what}. {ADVICE}"
        )
    return False


# ------------------------------------------------------------------------------------------------
# Rollout helpers: seeds and groups by step and rank
# ------------------------------------------------------------------------------------------------


def _rank_groups(cfg: Config, world: World) -> range:
    """This rank's slice of the step's group indices (a group never straddles ranks)."""
    per_rank = cfg.train.n_groups // world.size
    return range(world.rank * per_rank, (world.rank + 1) * per_rank)


def _train_seeds(cfg: Config, step: int, world: World) -> list[int]:
    base = cfg.env.train_seed_start + (step - 1) * cfg.train.n_groups
    return [base + g for g in _rank_groups(cfg, world)]


def _step_seed(cfg: Config, step: int, world: World) -> int:
    """The step's sampling seed, the same on every rank: episodes derive their own seeds from it
    (and their env seed and place in the group), so N ranks sample what 1 rank would."""
    return cfg.train.seed * 1_000_003 + step * 101


def _offset_groups(trajectories: list[Trajectory], cfg: Config, world: World) -> None:
    """Make group ids and episode ids global across ranks."""
    first = _rank_groups(cfg, world).start
    for traj in trajectories:
        traj.group += first
        traj.episode_id += first * cfg.rollout.group_size


# ------------------------------------------------------------------------------------------------
# Advantages
# ------------------------------------------------------------------------------------------------


def _assign_advantages(
    cfg: Config, trajectories: list[Trajectory], keep_group_fraction: float
) -> tuple[list[Trajectory], dict[str, float]]:
    """Shape rewards, compute per-turn advantages, write them onto tokens; StarPO-S group filter
    keeping the top ``keep_group_fraction`` of groups by in-group reward std."""
    shaping = cfg.algo.shaping
    bonus = None
    if shaping.enabled:
        bonus = shaping_bonus(
            ["\n".join(t.reply for t in traj.turns) for traj in trajectories],
            torch.tensor([traj.num_sampled_tokens for traj in trajectories], dtype=torch.float32),
            torch.tensor([traj.success for traj in trajectories]),
            torch.tensor([traj.group for traj in trajectories]),
            shaping,
        )
    batch = turn_batch(trajectories, bonus)
    advantages = compute_advantages(batch, cfg.algo.advantage)
    assign_advantages(trajectories, batch, advantages)
    metrics = {"train/advantage_abs_mean": float(advantages.abs().mean()) if advantages.numel() else 0.0}
    if bonus is not None:
        metrics["train/shaping_bonus"] = float(bonus.mean())
    selected = trajectories
    if keep_group_fraction < 1.0:
        keep = select_groups_by_std(batch.episode_return(), batch.episode_group(), keep_group_fraction)
        selected = [t for t, k in zip(trajectories, keep.tolist()) if k]
    metrics["train/kept_episode_fraction"] = len(selected) / max(1, len(trajectories))
    return selected, metrics


# ------------------------------------------------------------------------------------------------
# Update
# ------------------------------------------------------------------------------------------------


def _update(
    cfg: Config, policy: Policy, trajectories: list[Trajectory], step: int, world: World, temperature: float
) -> dict[str, float]:
    """``ppo_epochs`` passes of ``mini_batches`` optimizer steps over this rank's trajectories;
    log-probs at the rollout's sampling ``temperature`` (ratios against the rollout's are exact)."""
    algo = cfg.algo
    loss_fn = get_policy_loss(algo.policy_loss.loss)
    aggregate = get_aggregation(algo.policy_loss.aggregation)
    kl_coef = kl_coef_at(algo.kl, step, cfg.train.steps) if algo.kl.enabled else 0.0
    needs_all = algo.kl.enabled or algo.entropy_coef != 0 or not algo.skip_zero_advantage
    max_tokens = cfg.rollout.max_new_tokens * cfg.rollout.max_turns
    rng = random.Random(cfg.train.seed * 7919 + step)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    trained_tokens = 0
    grad_norms: list[float] = []
    policy.ds_engine.train()

    for epoch in range(algo.ppo_epochs):
        order = list(range(len(trajectories)))
        rng.shuffle(order)
        size = -(-len(order) // algo.mini_batches) if order else 0
        for mb in range(algo.mini_batches):
            chosen = [trajectories[i] for i in order[mb * size : (mb + 1) * size]]
            samples = [s for t in chosen for s in t.samples if sum(s.loss_mask)]
            # Normalisers over the whole mini-batch on every rank: micro-batch losses then sum to it.
            n_tok, n_seq = all_reduce_sum([sum(sum(s.loss_mask[1:]) for s in samples), len(samples)], world)
            totals = LossTotals(
                tokens=max(1, int(n_tok)), sequences=max(1, int(n_seq)), max_tokens=max_tokens
            )
            if not needs_all:
                samples = [s for s in samples if any(a != 0 for a in (s.advantages or []))]
            micro = pack_micro_batches(samples, cfg.train.micro_batch_tokens, policy.tokenizer.pad_token_id)
            # Every rank runs the same number of backward passes (DeepSpeed's gradient collectives).
            n_micro = all_reduce_max(len(micro), world)
            if n_micro == 0:
                continue  # nothing to learn from: no optimizer step (Adam would still move the weights)
            for i in range(n_micro):
                batch = micro[i] if i < len(micro) else None
                policy.ds_engine.set_gradient_accumulation_boundary(i == n_micro - 1)
                loss, m = _micro_step(
                    cfg, policy, batch, totals, loss_fn, aggregate, kl_coef, world, temperature
                )
                policy.ds_engine.backward(loss)
                if batch is None:
                    continue
                trained_tokens += batch.num_tokens
                for k, v in m.items():
                    if k == "drift" and (epoch or mb):
                        continue  # drift is rollout vs trainer before any update: first mini-batch only
                    sums[k] = sums.get(k, 0.0) + v * batch.num_tokens
                    counts[k] = counts.get(k, 0.0) + batch.num_tokens
            # ZeRO-2/3 compute the norm over their gradient partitions inside step(); below stage 2
            # DeepSpeed does not report it, and the full gradients are right here.
            norm = _grad_norm(policy) if cfg.train.zero_stage < 2 else None
            policy.ds_engine.step()
            if norm is None:
                norm = float(policy.ds_engine.get_global_grad_norm() or 0.0)
            grad_norms.append(norm)

    sums, counts, trained_tokens = _sum_over_ranks(sums, counts, trained_tokens, world)
    out = {f"train/{k}": sums[k] / counts[k] for k in sums if counts.get(k)}
    if "train/drift" in out:
        out["train/logprob_drift"] = out.pop("train/drift")
    out["train/grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
    out["train/lr"] = float(policy.ds_engine.get_lr()[0])
    out["train/kl_coef"] = kl_coef
    out["train/trained_tokens"] = float(trained_tokens)
    out.setdefault("train/kl", 0.0)
    out.setdefault("train/clip_fraction", 0.0)
    out.setdefault("train/entropy", 0.0)
    return out


def _sum_over_ranks(
    sums: dict[str, float], counts: dict[str, float], tokens: int, world: World
) -> tuple[dict[str, float], dict[str, float], int]:
    """Token-weighted metric sums of every rank added up, so the means are over all ranks' tokens
    (not an average of per-rank averages)."""
    if world.size == 1:
        return sums, counts, tokens
    total_sums: dict[str, float] = {}
    total_counts: dict[str, float] = {}
    total_tokens = 0
    for part_sums, part_counts, part_tokens in gather_objects((sums, counts, tokens), world):
        for k, v in part_sums.items():
            total_sums[k] = total_sums.get(k, 0.0) + v
            total_counts[k] = total_counts.get(k, 0.0) + part_counts[k]
        total_tokens += part_tokens
    return total_sums, total_counts, total_tokens


def _grad_norm(policy: Policy) -> float:
    """Global gradient norm before clipping, from the full gradients (ZeRO stage 0/1)."""
    grads = [p.grad.detach().float().norm() for p in policy.model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def _micro_step(
    cfg: Config,
    policy: Policy,
    batch: MicroBatch | None,
    totals: LossTotals,
    loss_fn,
    aggregate,
    kl_coef: float,
    world: World,
    sampling_temperature: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (already divided by the mini-batch totals) and its metrics."""
    if batch is None:
        # A rank with less data still joins the collective backward, with a zero loss.
        zero = sum(p.sum() * 0.0 for p in policy.model.parameters() if p.requires_grad)
        return zero, {}
    b = batch.to(policy.device)
    temperature = sampling_temperature if sampling_temperature > 0 else 1.0  # greedy: plain log-probs
    logits = policy.ds_engine(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
    logits = logits[:, :-1]  # (B, L-1, V): position t predicts token t+1
    logp = token_logprobs(logits, b.targets, temperature)  # (B, L-1)
    loss, metrics = loss_fn(logp, b.old_logprobs, b.advantages, b.mask, totals, cfg.algo.policy_loss)
    out = {k: float(v) for k, v in metrics.items()}
    if cfg.algo.entropy_coef != 0:
        entropy = entropy_from_logits(logits.float() / temperature)  # (B, L-1)
        loss = loss - cfg.algo.entropy_coef * aggregate(entropy, b.mask, totals)
        out["entropy"] = float(masked_mean(entropy.detach(), b.mask))
    else:
        # Metric only: on the trained positions alone, without copying the whole logits tensor.
        with torch.no_grad():
            picked = logits.detach()[b.mask.bool()]  # (N_trained, V)
            picked = picked.float() / temperature if temperature != 1.0 else picked.float()
            out["entropy"] = float(entropy_from_logits(picked).mean()) if picked.numel() else 0.0
    if cfg.algo.kl.enabled:
        ref_logp = _reference_logprobs(policy, b, temperature)
        kl_loss, kl_m = kl_penalty(logp, ref_logp, b.mask, totals, cfg.algo.kl, kl_coef)
        loss = loss + kl_loss
        out["kl"] = float(kl_m["kl"])
    out["drift"] = float(masked_mean((logp.detach() - b.old_logprobs).abs(), b.mask))
    out["policy_loss"] = float(loss.detach()) * totals.tokens / max(1, b.num_tokens)
    # DeepSpeed averages gradients over ranks; the totals are global, so undo the average.
    return loss * world.size, out


@torch.no_grad()
def _reference_logprobs(policy: Policy, b: MicroBatch, temperature: float) -> torch.Tensor:
    if policy.reference is not None:
        logits = policy.reference(
            input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False
        ).logits
    else:  # LoRA: the base model is the policy with its adapters switched off
        with policy.model.disable_adapter():
            logits = policy.model(
                input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False
            ).logits
    return token_logprobs(logits[:, :-1], b.targets, temperature)


# ------------------------------------------------------------------------------------------------
# Evaluation, saving, samples, Ctrl-C
# ------------------------------------------------------------------------------------------------


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


def _evaluate(
    cfg: Config,
    rollout: RolloutManager,
    run_dir: Path,
    step: int,
    log: RunLogger,
    world: World,
    reset_options: dict[str, Any] | None,
) -> dict[str, float]:
    t0 = time.perf_counter()
    mine = run_eval(cfg, rollout, step, world, reset_options)
    trajectories = [t for part in gather_objects(mine, world) for t in part]
    metrics = eval_metrics(trajectories, "eval")
    metrics["timing/eval_s"] = time.perf_counter() - t0
    if world.is_main:
        write_jsonl(run_dir / "eval" / step_filename(step), trajectories)
        log.text(step, "samples/eval", _render_sample(trajectories[0]))
        log.info(
            f"eval step {step}: success {metrics['eval/success_rate']:.3f}, "
            f"format-valid {metrics['eval/format_valid_rate']:.3f}, reward {metrics['eval/reward']:.3f}"
        )
    return metrics


def _save(
    cfg: Config, run_dir: Path, state: ckpt.TrainerState, policy: Policy, world: World, loop: LoopState
) -> None:
    path = ckpt.save_checkpoint(
        run_dir,
        state,
        policy.ds_engine,
        policy.model,
        policy.tokenizer,
        cfg.run.keep_checkpoints,
        world.is_main,
    )
    if world.is_main:
        # Written after the checkpoint is complete; a checkpoint without it resumes the curriculum
        # from TrainerState.stage with an empty window and the configured keep fraction.
        tmp = path / f".{LOOP_STATE_FILE}.tmp"
        tmp.write_text(json.dumps(_loop_state_dict(loop)))
        os.replace(tmp, path / LOOP_STATE_FILE)


def _loop_state_dict(loop: LoopState) -> dict[str, Any]:
    return {
        "curriculum": loop.curriculum.to_dict(),
        "keep_group_fraction": loop.keep_group_fraction,
        "guard_history": loop.guard_history,
        "warning": loop.warning,
    }


def _load_loop_state(path: Path, state: ckpt.TrainerState, cfg: Config) -> LoopState:
    file = path / LOOP_STATE_FILE
    if not file.is_file():
        return LoopState(
            curriculum=CurriculumState(stage=state.stage), keep_group_fraction=cfg.algo.keep_group_fraction
        )
    data = json.loads(file.read_text())
    return LoopState(
        curriculum=CurriculumState.from_dict(data.get("curriculum", {})),
        keep_group_fraction=min(cfg.algo.keep_group_fraction, float(data.get("keep_group_fraction", 1.0))),
        guard_history=list(data.get("guard_history", [])),
        warning=bool(data.get("warning", False)),
    )


def _render_sample(traj: Trajectory) -> str:
    lines = [
        f"env {traj.env} seed {traj.seed} reward {traj.reward:+.2f} success {traj.success} end {traj.end_reason}"
    ]
    for i, turn in enumerate(traj.turns):
        lines += [f"--- turn {i} observation", turn.observation, "--- reply", turn.reply]
        lines.append(f"actions {turn.actions} reward {turn.reward:+.2f} {turn.format_error or ''}")
    return "\n".join(lines)


class _GracefulStop:
    """First Ctrl-C: finish the current step, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self, log: RunLogger):
        self.requested = False
        self._log = log
        self._previous = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: keep the default behaviour
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._log.info(
            "agentrl: Ctrl-C: finishing this step, then saving a checkpoint (Ctrl-C again to abort)"
        )

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def copy_config(cfg: Config) -> Config:
    return copy.deepcopy(cfg)
