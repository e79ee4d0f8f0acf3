"""``train(cfg)``: the RL loop, a handful of named phases called in order, each a function below.

Set-up (:func:`start_run`) builds the policy, the engine, the rollout manager and the logger, and
restores the loop's state on resume. Then each step:

1. **stage**: the curriculum stage of the step sets env options, lr and temperature;
2. **roll out** (:func:`roll_out`): ``n_groups x group_size`` episodes (a group shares one env seed);
3. **credit** (:func:`assign_step_credit`): shaped rewards -> per-turn advantages -> the sampled
   tokens of each turn; StarPO-S keeps the top groups by in-group reward std;
4. **update** (:func:`update_policy`): ``ppo_epochs`` passes of ``mini_batches`` optimizer steps,
   each a sum of micro-batches of at most ``micro_batch_tokens`` tokens (DeepSpeed accumulates);
5. **sync** (:func:`sync_weights`) the engine's weights (a no-op for the ``hf`` engine);
6. **score** (:func:`score_step`): the step's metrics over every rank's episodes, its trajectory file;
7. **time** (:func:`out_of_time`): ``run.time_budget_min`` makes this step the last when one more
   would not fit; **evaluate** (:func:`evaluate_if_due`) on the held-out seeds when due and at the last,
   against the run's best evaluation so far (:func:`compare_with_best`: keep a new best's model, warn
   on a significant drop);
8. **log** (:func:`guard_and_log`): the collapse guard decides (warn, stop, filter), the metrics are
   written, the curriculum picks the next step's stage;
9. **checkpoint** (:func:`checkpoint_if_due`) when due, at the last, on Ctrl-C and before a stop.

Curriculum stage logic lives in :mod:`agentrl.training.curriculum`, collapse detection in
:mod:`agentrl.algorithms.collapse`, the credit path in :mod:`agentrl.algorithms.credit`, what RL
shares with SFT in :mod:`agentrl.training.run`.

May import: every module of :mod:`agentrl.training` but ``sft`` and ``warm_start``, and the stages below.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl import seeds
from agentrl.algorithms.collapse import GuardDecision, decide, detect, signals
from agentrl.algorithms.credit import Credit, EpisodeFilter, assign_credit
from agentrl.config import Config, ConfigError
from agentrl.rollout.engines.base import Engine
from agentrl.rollout.manager import PER_CALL_SETTINGS, RolloutManager
from agentrl.rollout.trajectory import Trajectory, step_filename, write_jsonl
from agentrl.rollout.weight_sync import (
    WeightSyncError,
    logprob_gap,
    policy_weights,
    probe_prompts,
    sync_tolerance,
)
from agentrl.training import best
from agentrl.training import checkpoint as ckpt
from agentrl.training.budget import TimeBudget
from agentrl.training.curriculum import CurriculumState, advance, stage_at
from agentrl.training.distributed import World, all_reduce_max, gather_objects, meet
from agentrl.training.evaluate import evaluate_and_log, evaluation_due, start_eval_config, success_text
from agentrl.training.logger import RunLogger, render_sample
from agentrl.training.metrics import paired_change, rollout_metrics
from agentrl.training.policy import (
    Policy,
    build_engine,
    build_policy,
    engine_dtype_for,
    release_memory,
    seed_everything,
)
from agentrl.training.run import (
    check_disk_space,
    check_model,
    check_reset_options,
    checkpoints_at_once,
    peak_rss_gb,
    prepare_run_dir,
    rss_gb,
    save,
    set_up_process,
    training_reset_options,
)
from agentrl.training.update import update


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
    rollout: dict[str, int] = field(default_factory=dict)
    """Rollout settings the stage sets for its steps (``max_new_tokens``...; empty: the run's own)."""


def train(cfg: Config, resume: bool = False, started: float | None = None) -> Path:
    """Run (or resume) training as configured; return the run directory. ``started``: the
    command's ``time.monotonic()`` start, which ``run.time_budget_min`` counts from (default: now)."""
    run = start_run(cfg, resume, started)
    try:
        evaluate_at_start(run)
        for step in range(run.start_step, cfg.train.steps + 1):
            t0 = time.monotonic()
            stage = begin_step(run, step)
            trajectories, metrics = roll_out(run, step, stage)
            credit = assign_step_credit(cfg, trajectories, run.state.keep_group_fraction, stage)
            metrics.update(credit.metrics)
            metrics.update(update_policy(run, credit.selected, step, stage, len(trajectories)))
            metrics.update(sync_weights(cfg, run.engine, run.policy, trajectories, run.world))
            metrics.update(score_step(run, step, trajectories, metrics))
            run.budget.step_done(time.monotonic() - t0)
            last = step == cfg.train.steps or out_of_time(run, step)
            metrics.update(evaluate_if_due(run, step, stage, last))
            stop = guard_and_log(run, step, metrics)
            checkpoint_if_due(run, step, stop, last)
            if stop or last or run.ctrl_c.requested:
                break
        if run.world.is_main:
            log_summary(run)
    finally:
        run.close()
    return run.run_dir


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------


@dataclass
class RLRun:
    """Everything the loop's phases share: the config, the process, the run folder, the policy and
    its engine, the rollout manager, the logger and the loop's state (:class:`TrainerState`)."""

    cfg: Config
    world: World
    run_dir: Path
    start_step: int
    policy: Policy
    engine: Engine
    rollout: RolloutManager
    log: RunLogger
    state: ckpt.TrainerState
    tis: bool
    """Correct for the engine's numerics (truncated importance sampling, ``algo.tis``)."""
    ctrl_c: _GracefulStop
    budget: TimeBudget

    def close(self) -> None:
        self.ctrl_c.restore()
        self.rollout.close()
        self.engine.close()
        self.log.close()


def start_run(cfg: Config, resume: bool, started: float | None = None) -> RLRun:
    """Set up the process, the run folder, the policy (restored on ``resume``), its engine, the
    rollout manager and the logger."""
    check_model(cfg)
    check_reset_options(cfg)
    # A new run holds its kept checkpoints at once; a resumed one already holds them and writes one
    # more before it deletes the oldest.
    saves = 1 if resume else checkpoints_at_once(cfg, cfg.train.steps)
    keeps = f"run.save_every={cfg.run.save_every}, run.keep_checkpoints={cfg.run.keep_checkpoints}"
    check_disk_space(
        cfg,
        saves,
        "RL's next one, on resume" if resume else f"RL's, {keeps}",
        cfg.eval.keep_best and not resume,
    )
    device, world = set_up_process(cfg)
    if cfg.train.n_groups % world.size:
        raise ConfigError(
            f"train.n_groups={cfg.train.n_groups} must be divisible by the {world.size} ranks: each rank plays "
            "whole groups (group-relative advantages need every episode of a group on one rank)"
        )
    run_dir = Path(cfg.run.root) / cfg.run.name
    start_step = prepare_run_dir(run_dir, cfg, resume, world)
    seed_everything(seeds.rank_seed(cfg.train.seed, world.rank))
    policy = build_policy(cfg, device)
    state = ckpt.TrainerState(step=0, keep_group_fraction=cfg.algo.keep_group_fraction)
    if resume:
        state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir), policy.ds_engine)
        # A resumed run may lower the StarPO-S fraction, never raise it past what the guard set.
        state.keep_group_fraction = min(cfg.algo.keep_group_fraction, state.keep_group_fraction)
        start_step = state.step + 1
    engine, engine_note = build_engine(cfg, policy)
    if resume and engine.capabilities.own_weights:
        # The engine loaded the starting model from disk; the checkpoint's weights are newer.
        engine.update_weights(policy_weights(policy.model, cfg.train.zero_stage))
    rollout = RolloutManager(engine, policy.tokenizer, cfg.env.name, cfg.rollout, cfg.env.kwargs)
    log = RunLogger(run_dir, cfg.train.steps, start_step, enabled=world.is_main, progress=cfg.run.progress)
    log.info(
        f"agentrl: run {run_dir} | env {cfg.env.name} | {cfg.episodes_per_step} episodes/step | device {device}"
    )
    log.info(f"agentrl: {engine_note}")
    # The engine's log-probs are the behaviour policy's; correct for its numerics where they differ
    # (another engine's kernels, or the trainer's own bf16 autocast against fp32 sampling).
    tis = cfg.algo.tis.enabled(engine.capabilities.same_numerics and policy.autocast is None)
    budget = TimeBudget(cfg.run.time_budget_min, time.monotonic() if started is None else started)
    return RLRun(
        cfg, world, run_dir, start_step, policy, engine, rollout, log, state, tis, _GracefulStop(log), budget
    )


# ------------------------------------------------------------------------------------------------
# The phases of a step
# ------------------------------------------------------------------------------------------------


def evaluate_at_start(run: RLRun) -> None:
    """Step 0: evaluate the starting model (a fresh run with ``eval.at_start``)."""
    cfg = run.cfg
    if cfg.eval.every and cfg.eval.at_start and run.start_step == 1:
        env_options = _stage(cfg, run.state, 1).env_options
        metrics = evaluate_and_log(
            start_eval_config(cfg), run.rollout, run.run_dir, 0, run.log, run.world, env_options
        )
        run.budget.evaluated(metrics["timing/eval_s"])
        run.log.log(0, metrics)


def begin_step(run: RLRun, step: int) -> Stage:
    """The step's curriculum stage; its learning rate goes on the optimizer."""
    stage = _stage(run.cfg, run.state, step)
    if stage.lr is not None:
        _set_lr(run.policy, stage.lr)
    return stage


def roll_out(run: RLRun, step: int, stage: Stage) -> tuple[list[Trajectory], dict[str, float]]:
    """This rank's share of the step's groups, played with the engine; and the rollout's time."""
    cfg, world = run.cfg, run.world
    t0 = time.perf_counter()
    run.engine.wake()
    trajectories = run.rollout.rollout(
        _train_seeds(cfg, step, world),
        step=step,
        sampling_seed=_step_seed(cfg, step, world),
        temperature=stage.temperature,
        reset_options=training_reset_options(cfg, stage.env_options),
        settings=stage.rollout,
    )
    run.engine.sleep()
    _offset_groups(trajectories, cfg, world)
    metrics = {"timing/rollout_s": time.perf_counter() - t0}
    # Rollouts are where ranks spend the longest apart: a rank that died or hangs there is
    # named here, within train.dist_timeout_s, instead of surfacing as an anonymous timeout.
    meet(world, f"the end of step {step}'s rollout")
    return trajectories, metrics


def update_policy(
    run: RLRun, selected: list[Trajectory], step: int, stage: Stage, rolled_out: int
) -> dict[str, float]:
    """The policy update on the step's selected episodes (of the ``rolled_out`` this rank played),
    with its timing and throughput."""
    policy = run.policy
    t0 = time.perf_counter()
    metrics = update(
        run.cfg,
        policy,
        selected,
        step,
        run.world,
        stage.temperature,
        behaviour_is=run.tis,
        rolled_out=rolled_out,
    )
    metrics["timing/update_s"] = time.perf_counter() - t0
    metrics["perf/train_tokens_per_s"] = metrics["train/trained_tokens"] / max(
        metrics["timing/update_s"], 1e-9
    )
    if policy.device.type == "cuda":
        # Peak of the rollout and the update together (the step's high-water mark).
        metrics["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(policy.device) / 2**30
        torch.cuda.reset_peak_memory_stats(policy.device)
    # The process's resident high-water mark so far (engine, trainer and their buffers):
    # what decides whether a laptop's RAM holds the run.
    metrics["perf/peak_rss_gb"] = peak_rss_gb()
    release_memory()  # the update's activations, before the engine allocates again
    metrics["perf/rss_gb"] = rss_gb()  # what the step kept: a leak shows as a climb here
    return metrics


def score_step(
    run: RLRun, step: int, trajectories: list[Trajectory], metrics: dict[str, float]
) -> dict[str, float]:
    """The step's episode metrics over every rank's trajectories; rank 0 writes the trajectory file
    and a sample. ``metrics``: the step's so far (the rollout's time gives its throughput)."""
    all_trajs = [t for part in gather_objects(trajectories, run.world) for t in part]
    out = rollout_metrics(all_trajs, "train", run.rollout.system_prompt)
    sampled = sum(t.num_sampled_tokens for t in all_trajs)
    out["perf/rollout_tokens_per_s"] = sampled / max(metrics["timing/rollout_s"], 1e-9)
    if run.world.is_main:
        write_jsonl(run.run_dir / "trajectories" / step_filename(step), all_trajs)
        run.log.text(step, "samples/train", render_sample(all_trajs[0]))
    return out


def out_of_time(run: RLRun, step: int) -> bool:
    """Whether ``run.time_budget_min`` ends RL at ``step`` (every rank agrees: any rank's clock
    that runs out ends all); the log says so."""
    cfg = run.cfg
    eval_due = bool(cfg.eval.every) and evaluation_due(step, cfg.train.steps, cfg.eval.every)
    over = all_reduce_max(int(not run.budget.fits_another_step(eval_due)), run.world)
    if over:
        run.log.info(run.budget.stop_note(step, cfg.train.steps))
    return bool(over)


def evaluate_if_due(run: RLRun, step: int, stage: Stage, last: bool) -> dict[str, float]:
    """The held-out evaluation when due (every ``eval.every`` steps and at ``last``, RL's last step:
    ``train.steps``, or where the time budget ends it); the stage's limits."""
    cfg = run.cfg
    out: dict[str, float] = {}
    if cfg.eval.every and evaluation_due(step, step if last else cfg.train.steps, cfg.eval.every):
        out.update(
            evaluate_and_log(cfg, run.rollout, run.run_dir, step, run.log, run.world, stage.env_options)
        )
        run.budget.evaluated(out["timing/eval_s"])
        out.update(compare_with_best(run, step))
        release_memory()
    if cfg.curriculum.stages:
        out.update(stage_metrics(cfg, stage))
    return out


def compare_with_best(run: RLRun, step: int) -> dict[str, float]:
    """This step's evaluation against the best earlier one (:mod:`agentrl.training.best`): a new
    best's model goes to ``runs/NAME/best/`` (``eval.keep_best``), a significant drop prints a
    warning (``eval.drop_warning_p``); the comparison's metrics. The main rank reads the run's
    evaluations and decides; every rank joins the export (ZeRO-3 gathers the weights)."""
    cfg, metrics = run.cfg, {}
    latest = best.Evaluation(step, best.eval_episodes(run.run_dir, step) if run.world.is_main else [])
    new_best = False
    if latest.episodes:
        earlier = [e for e in best.logged_evaluations(run.run_dir) if e.step < step]
        standing = best.standing(earlier, latest, cfg.eval.drop_warning_p)
        new_best = standing.new_best
        if standing.best is not None and standing.change is not None:
            metrics["eval/best_step"] = float(step if standing.new_best else standing.best.step)
            metrics["eval/gained_since_best"] = float(standing.change.gained)
            metrics["eval/lost_since_best"] = float(standing.change.lost)
            metrics["eval/drop_from_best"] = float(standing.dropped)
        if standing.dropped:
            run.log.info(drop_warning(cfg, run.run_dir, standing, latest))
    # The main rank decided; the max over ranks tells every rank (the others' flag is 0).
    if cfg.eval.keep_best and all_reduce_max(int(new_best), run.world):
        with ckpt.whole_parameters(run.policy.model):
            if run.world.is_main:
                out = run.run_dir / best.BEST_DIR
                ckpt.export_model(
                    run.policy.model, run.policy.tokenizer, out, best.best_record(latest), best.BEST_FILE
                )
        meet(run.world, "the best model's export")
    return metrics


def drop_warning(cfg: Config, run_dir: Path, standing: best.Standing, latest: best.Evaluation) -> str:
    """The console line of a significant held-out drop from the run's best evaluation."""
    assert standing.best is not None and standing.change is not None
    puzzles = latest.puzzles
    was, now = standing.best.solved(puzzles), latest.solved()
    kept = best.read_best(run_dir) if cfg.eval.keep_best else None
    if kept is not None and kept["step"] == standing.best.step:
        where = f"its model is in {run_dir / best.BEST_DIR}"
    elif standing.best.step == 0:
        where = f"the starting model ({cfg.run.init or cfg.model.path})"
    else:
        where = "set eval.keep_best=true to keep the best model"
    return (
        f"agentrl: warning: held-out success fell from {was}/{len(puzzles)} at step {standing.best.step} "
        f"to {now}/{len(puzzles)} at step {latest.step} on the same puzzles, {standing.change}: RL is "
        f"giving back what it learned; {where}. A lower train.lr or train.grad_clip takes smaller steps "
        f"(docs/metrics.md, eval/drop_from_best)"
    )


def guard_and_log(run: RLRun, step: int, metrics: dict[str, float]) -> bool:
    """The collapse guard's decision is carried out, the step's metrics logged and the next step's
    curriculum stage chosen; True: the guard stops the run after this step."""
    collapsed = _act_on(collapse_guard(run.cfg, run.state, metrics, step), run.state, metrics, run.log)
    run.log.log(step, metrics)
    run.state.curriculum = _next_curriculum(run.cfg, run.state.curriculum, step, metrics, run.log)
    run.state.step = step
    return collapsed


def checkpoint_if_due(run: RLRun, step: int, collapsed: bool, last: bool) -> None:
    """Save every ``run.save_every`` steps, at the ``last``, on Ctrl-C and before a collapse stop."""
    cfg = run.cfg
    due = cfg.run.save_every and step % cfg.run.save_every == 0
    if due or last or run.ctrl_c.requested or collapsed:
        save(cfg, run.run_dir, run.state, run.policy, run.world)
    run.log.advance(step)
    if collapsed:
        run.log.info(
            f"agentrl: stopped after step {step} (collapse.action=stop), checkpoint saved; "
            f"resume with --resume --name {cfg.run.name} once the recipe is changed"
        )
    elif run.ctrl_c.requested:
        run.log.info(f"agentrl: stopped after step {step}; resume with --resume --name {cfg.run.name}")


def log_summary(run: RLRun) -> None:
    """The run's last line (rank 0): held-out success at the first and last evaluation."""
    summary = summary_line(run.cfg, run.run_dir)
    if summary:
        run.log.info(summary)


# ------------------------------------------------------------------------------------------------
# Curriculum: the stage of a step, its learning rate, the move to the next stage
# ------------------------------------------------------------------------------------------------


def _fixed_stage(cfg: Config, step: int) -> int:
    return stage_at(step, [s.steps for s in cfg.curriculum.stages])


def _stage(cfg: Config, state: ckpt.TrainerState, step: int) -> Stage:
    """The stage that ``step`` plays: by the step counts, or (adaptive) where the run has moved to."""
    if not cfg.curriculum.stages:
        return Stage(0, None, None, cfg.rollout.temperature)
    return stage_settings(cfg, state.curriculum.stage if cfg.curriculum.adaptive else _fixed_stage(cfg, step))


def stage_settings(cfg: Config, index: int) -> Stage:
    """Stage ``index`` of the curriculum with the config's defaults filled in."""
    stage = cfg.curriculum.stages[index]
    return Stage(
        index=index,
        env_options=dict(stage.env_options) or None,
        lr=stage.lr if stage.lr is not None else cfg.train.lr,
        temperature=stage.temperature if stage.temperature is not None else cfg.rollout.temperature,
        rollout=stage.rollout.overrides(),
    )


def _stage_limits(cfg: Config, stage: Stage | None) -> dict[str, int]:
    """The rollout limits a step of ``stage`` plays: the stage's own, else the run's."""
    own = stage.rollout if stage is not None else {}
    return {key: own.get(key, getattr(cfg.rollout, key)) for key in PER_CALL_SETTINGS}


def stage_metrics(cfg: Config, stage: Stage) -> dict[str, float]:
    """``curriculum/stage`` and the limits the step played (``curriculum/max_new_tokens``...)."""
    limits = _stage_limits(cfg, stage)
    return {
        "curriculum/stage": float(stage.index),
        **{f"curriculum/{k}": float(v) for k, v in limits.items()},
    }


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
        stage = stage_settings(cfg, nxt.stage)
        limits = "".join(f", {k} {v}" for k, v in stage.rollout.items())
        log.info(
            f"agentrl: curriculum stage {nxt.stage + 1}/{len(cur.stages)} from step {step + 1} ({reason}): "
            f"env options {stage.env_options or '{}'}, lr {stage.lr:g}, temperature {stage.temperature:g}{limits}"
        )
    return nxt


# ------------------------------------------------------------------------------------------------
# Collapse guard
# ------------------------------------------------------------------------------------------------


def collapse_guard(
    cfg: Config, state: ckpt.TrainerState, metrics: dict[str, float], step: int
) -> GuardDecision:
    """The collapse guard's decision after ``step``: this step's watched metrics join the guard's
    history in ``state``; the signals that held on the last ``collapse.patience`` steps decide."""
    col = cfg.collapse
    watched = signals(
        col.warn_zero_std_fraction,
        col.warn_distinct_below,
        col.warn_instruction_echo,
        col.warn_distinct_across_puzzles,
    )
    state.guard_history.append({s.metric: metrics[s.metric] for s in watched if s.metric in metrics})
    state.guard_history = state.guard_history[-col.patience :]
    fired = detect(state.guard_history, watched, col.patience)
    return decide(fired, step, col.action, col.patience, state.warning, state.keep_group_fraction)


def _act_on(
    decision: GuardDecision, state: ckpt.TrainerState, metrics: dict[str, float], log: RunLogger
) -> bool:
    """Carry out the guard's decision; True: stop the run after this step."""
    metrics["collapse/warning"] = float(decision.warning)
    state.warning = decision.warning
    if decision.keep_group_fraction is not None:
        state.keep_group_fraction = decision.keep_group_fraction
    if decision.message:
        log.info(decision.message)
    return decision.stop


# ------------------------------------------------------------------------------------------------
# Rollout helpers: seeds and groups by step and rank
# ------------------------------------------------------------------------------------------------


def _rank_groups(cfg: Config, world: World) -> range:
    """This rank's slice of the step's group indices (a group never straddles ranks)."""
    per_rank = cfg.train.n_groups // world.size
    return range(world.rank * per_rank, (world.rank + 1) * per_rank)


def _train_seeds(cfg: Config, step: int, world: World) -> list[int]:
    return seeds.train_env_seeds(cfg.env.train_seed_start, cfg.train.n_groups, step, _rank_groups(cfg, world))


def _step_seed(cfg: Config, step: int, world: World) -> int:
    """The step's sampling seed, the same on every rank: episodes derive their own seeds from it
    (and their env seed and place in the group), so N ranks sample what 1 rank would."""
    return seeds.step_sampling_seed(cfg.train.seed, step)


def _offset_groups(trajectories: list[Trajectory], cfg: Config, world: World) -> None:
    """Make group ids and episode ids global across ranks."""
    groups = _rank_groups(cfg, world)
    group_size = len(trajectories) // max(1, len(groups))  # a curriculum stage may set its own
    for traj in trajectories:
        traj.group += groups.start
        traj.episode_id += groups.start * group_size


# ------------------------------------------------------------------------------------------------
# Credit
# ------------------------------------------------------------------------------------------------


def assign_step_credit(
    cfg: Config, trajectories: list[Trajectory], keep_group_fraction: float, stage: Stage | None = None
) -> Credit:
    """The step's credit (:func:`agentrl.algorithms.credit.assign_credit`) with the run's settings;
    ``stage``: the step's curriculum stage, whose reply budget is the cosine reward's default ``L_max``."""
    limits = _stage_limits(cfg, stage)
    return assign_credit(
        trajectories,
        cfg.algo.advantage,
        cfg.algo.shaping,
        EpisodeFilter(
            keep_group_fraction=keep_group_fraction,
            mixed_success_only=cfg.algo.mixed_success_only,
            min_return_spread=cfg.algo.min_return_spread,
            positive_advantage_only=cfg.algo.positive_advantage_only,
            faithful_only=cfg.algo.faithful_only,
            unfaithful_turn_advantage=cfg.algo.unfaithful_turn_advantage,
        ),
        max_reply_tokens=limits["max_new_tokens"] * limits["max_turns"],
    )


# ------------------------------------------------------------------------------------------------
# Summary, weight sync, Ctrl-C
# ------------------------------------------------------------------------------------------------


def summary_line(cfg: Config, run_dir: Path) -> str | None:
    """The run's last line: held-out success at the first and the last evaluation, with intervals,
    and the command that replays the run (``None`` without two evaluations). A run started from
    another run (``--init``, a warm start) whose own step 0 evaluated the base model shows that
    too: base -> warm start -> final."""
    rows = best.eval_rows(run_dir)
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    start = f"step {first['step']}"  # eval.at_start=false: the first evaluation is after training
    if first["step"] == 0:
        start = f"{'warm start' if cfg.run.init else 'base'} (step 0)"
    parts = [f"{start} {success_text(first)}", f"step {last['step']} {success_text(last)}"]
    replay = f"agentrl replay {run_dir}"
    init_rows = best.eval_rows(Path(cfg.run.init)) if cfg.run.init else []
    if init_rows and init_rows[0]["step"] == 0:
        parts.insert(0, f"base {success_text(init_rows[0])}")
        replay += f" (the warm start: agentrl replay {cfg.run.init})"
    # Two overlapping intervals can still be a real difference, and a small net gain can be many
    # puzzles won and lost: the paired count over the same puzzles says which.
    first_eps, last_eps = (best.eval_episodes(run_dir, int(r["step"])) for r in (first, last))
    paired = ""
    if first_eps and last_eps:
        paired = f"; step {last['step']} against step {first['step']} on the same puzzles: {paired_change(first_eps, last_eps)}"
    kept = best.read_best(run_dir)
    if kept is not None and kept["step"] != last["step"]:
        # RL peaked earlier and gave some back: say where the better model is.
        paired += f"; the best was step {kept['step']} ({kept['solved']}/{kept['puzzles']}), its model in {run_dir / best.BEST_DIR}"
    return f"agentrl: held-out success {' -> '.join(parts)}{paired}. Replay: {replay}"


def sync_weights(
    cfg: Config, engine: Engine, policy: Policy, trajectories: list[Trajectory], world: World
) -> dict[str, float]:
    """Push the updated weights into an engine with its own copy, then check a few log-probs."""
    if not engine.capabilities.own_weights:
        return {}  # the hf engine samples from the trainer's module itself
    t0 = time.perf_counter()
    engine.update_weights(policy_weights(policy.model, cfg.train.zero_stage))
    metrics = {"timing/sync_s": time.perf_counter() - t0}
    if not cfg.engine.sync_check_tokens:
        return metrics
    prompts, sampled = probe_prompts(trajectories, cfg.engine.sync_check_tokens)
    # Every rank scores (a ZeRO-3 forward is a collective); the worst rank decides.
    gap = all_reduce_max(logprob_gap(engine, policy.ds_engine, prompts, policy.device, sampled), world)
    tolerance = sync_tolerance(cfg.engine.sync_tolerance, engine_dtype_for(cfg, policy.device))
    if gap > tolerance:
        raise WeightSyncError(
            f"after the weight push the engine's log-probs differ from the trainer's by {gap:.2e} nats per "
            f"token (tolerance {tolerance:g}, engine.sync_tolerance): the engine is not sampling from the "
            "trained weights. Check that the model's parameter names are the Hugging Face ones the engine "
            "loads, and the engine's dtype; raise engine.sync_tolerance only for a known kernel difference"
        )
    metrics["engine/sync_logprob_gap"] = gap
    return metrics


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
