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

Curriculum stage logic lives in :mod:`agentrl.training.curriculum`, collapse detection in :mod:`agentrl.algorithms.collapse`.
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from agentrl.algorithms.collapse import GuardDecision, decide, detect, signals
from agentrl.algorithms.credit import Credit, assign_credit
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
from agentrl.training import checkpoint as ckpt
from agentrl.training.curriculum import CurriculumState, advance, stage_at
from agentrl.training.distributed import World, all_reduce_max, gather_objects, init_distributed, meet
from agentrl.training.evaluate import run_eval, start_eval_config
from agentrl.training.logger import RunLogger, read_metrics
from agentrl.training.metrics import eval_metrics, rollout_metrics
from agentrl.training.policy import (
    Policy,
    build_engine,
    build_policy,
    device_for,
    engine_dtype_for,
    quiet_libraries,
    seed_everything,
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


def train(cfg: Config, resume: bool = False) -> Path:
    """Run (or resume) training as configured; return the run directory."""
    # ---- set-up -------------------------------------------------------------------------------
    check_model(cfg)
    device, world = set_up_process(cfg)
    if cfg.train.n_groups % world.size:
        raise ConfigError(
            f"train.n_groups={cfg.train.n_groups} must be divisible by the {world.size} ranks: each rank plays "
            "whole groups (group-relative advantages need every episode of a group on one rank)"
        )
    run_dir = Path(cfg.run.root) / cfg.run.name
    start_step = prepare_run_dir(run_dir, cfg, resume, world)
    seed_everything(cfg.train.seed + world.rank)
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
    stop = _GracefulStop(log)

    try:
        if cfg.eval.every and cfg.eval.at_start and start_step == 1:
            log.log(
                0,
                evaluate_and_log(
                    start_eval_config(cfg), rollout, run_dir, 0, log, world, _stage(cfg, state, 1).env_options
                ),
            )
        for step in range(start_step, cfg.train.steps + 1):
            metrics: dict[str, float] = {}

            # ---- 0. curriculum: this step's stage sets env options, lr and temperature ---------
            stage = _stage(cfg, state, step)
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
                settings=stage.rollout,
            )
            engine.sleep()
            _offset_groups(trajectories, cfg, world)
            metrics["timing/rollout_s"] = time.perf_counter() - t0
            # Rollouts are where ranks spend the longest apart: a rank that died or hangs there is
            # named here, within train.dist_timeout_s, instead of surfacing as an anonymous timeout.
            meet(world, f"the end of step {step}'s rollout")

            # ---- 2. rewards -> advantages -> tokens ---------------------------------------------
            credit = assign_step_credit(cfg, trajectories, state.keep_group_fraction, stage)
            metrics.update(credit.metrics)

            # ---- 3. policy update ---------------------------------------------------------------
            t0 = time.perf_counter()
            metrics.update(
                update(cfg, policy, credit.selected, step, world, stage.temperature, behaviour_is=tis)
            )
            metrics["timing/update_s"] = time.perf_counter() - t0
            metrics["perf/train_tokens_per_s"] = metrics["train/trained_tokens"] / max(
                metrics["timing/update_s"], 1e-9
            )
            if policy.device.type == "cuda":
                # Peak of the rollout and the update together (the step's high-water mark).
                metrics["perf/peak_memory_gb"] = torch.cuda.max_memory_allocated(policy.device) / 2**30
                torch.cuda.reset_peak_memory_stats(policy.device)

            # ---- 4. the engine samples with the new weights -------------------------------------
            metrics.update(sync_weights(cfg, engine, policy, trajectories, world))

            # ---- 5. metrics, trajectories, evaluation ---------------------------------------------
            all_trajs = [t for part in gather_objects(trajectories, world) for t in part]
            metrics.update(rollout_metrics(all_trajs, "train", rollout.system_prompt))
            sampled = sum(t.num_sampled_tokens for t in all_trajs)
            metrics["perf/rollout_tokens_per_s"] = sampled / max(metrics["timing/rollout_s"], 1e-9)
            if world.is_main:
                write_jsonl(run_dir / "trajectories" / step_filename(step), all_trajs)
                log.text(step, "samples/train", _render_sample(all_trajs[0]))
            if cfg.eval.every and (step % cfg.eval.every == 0 or step == cfg.train.steps):
                metrics.update(evaluate_and_log(cfg, rollout, run_dir, step, log, world, stage.env_options))
            if cfg.curriculum.stages:
                metrics.update(stage_metrics(cfg, stage))

            # ---- 6. collapse guard ------------------------------------------------------------
            collapsed = _act_on(collapse_guard(cfg, state, metrics, step), state, metrics, log)
            log.log(step, metrics)

            # ---- 7. curriculum: the next step's stage; checkpoint -------------------------------
            state.curriculum = _next_curriculum(cfg, state.curriculum, step, metrics, log)
            state.step = step
            if (
                (cfg.run.save_every and step % cfg.run.save_every == 0)
                or step == cfg.train.steps
                or stop.requested
                or collapsed
            ):
                save(cfg, run_dir, state, policy, world)
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
        summary = summary_line(cfg, run_dir) if world.is_main else None
        if summary:
            log.info(summary)
    finally:
        stop.restore()
        rollout.close()
        engine.close()
        log.close()
    return run_dir


# ------------------------------------------------------------------------------------------------
# Set-up
# ------------------------------------------------------------------------------------------------


def set_up_process(cfg: Config) -> tuple[torch.device, World]:
    """This process's part of any run (train, sft): quiet libraries, threads, device, process group."""
    quiet_libraries()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = device_for(cfg)
    return device, init_distributed(device.type, timeout_s=cfg.train.dist_timeout_s)


def check_model(cfg: Config) -> None:
    """Fail before anything is written if the model to start from cannot be found (``--model``,
    ``--init``): a typo or an offline hub id then leaves no run folder and the run name stays free."""
    from agentrl.models import resolve_model_path

    resolve_model_path(cfg.run.init or cfg.model.path)


def prepare_run_dir(run_dir: Path, cfg: Config, resume: bool, world: World) -> int:
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
    check_run_dir_free(run_dir)
    # Every rank has checked the folder before rank 0 writes into it (else the others would find
    # this very run's config.yaml and refuse).
    meet(world, "the run folder check")
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    return 1


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse a folder that already holds a run (a new run must never write into another's)."""
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise ConfigError(
            f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or --name NEW for a new run"
        )
    if (run_dir / "config.yaml").is_file():
        # A run started here (it may still be running, or died before its first checkpoint): two
        # runs writing one folder would interleave their metrics.
        raise ConfigError(
            f"{run_dir} already holds a run (config.yaml, no checkpoint yet): pass --name NEW for a new "
            "run, or delete the folder if that run is over and you want its name back"
        )


#: What a start writes before its first step; a folder holding nothing more has no results to keep.
SET_UP_FILES = {
    "config.yaml",
    "tb",
    "metrics.jsonl",
    "sft_data.jsonl",
    "trajectories",
    "eval",
    "checkpoints",
}


def discard_failed_start(run_dir: Path) -> bool:
    """Remove ``run_dir`` after a start that failed before its first step; return whether it did.

    Removed only if it holds nothing but set-up output: ``config.yaml``, ``tb/``, an empty
    ``metrics.jsonl``, ``sft_data.jsonl``, and no file under ``trajectories/``, ``eval/`` or
    ``checkpoints/``, and a ``warm_start/`` folder that holds no more than that. Call it only for a folder this start created (it did not exist before), so no
    other run's folder is ever touched; then the same run name can be used again.
    """
    import shutil

    if not run_dir.is_dir() or not _holds_only_set_up(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _holds_only_set_up(run_dir: Path) -> bool:
    for entry in run_dir.iterdir():
        if entry.name == "warm_start" and entry.is_dir():  # a warm start's own run folder
            if not _holds_only_set_up(entry):
                return False
            continue
        if entry.name not in SET_UP_FILES:
            return False
        if entry.name in ("trajectories", "eval", "checkpoints") and any(entry.rglob("*")):
            return False
        if entry.name == "metrics.jsonl" and entry.stat().st_size > 0:
            return False
    return True


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop metric rows newer than the checkpoint we resume from (they will be logged again)."""

    rows = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


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
    base = cfg.env.train_seed_start + (step - 1) * cfg.train.n_groups
    return [base + g for g in _rank_groups(cfg, world)]


def _step_seed(cfg: Config, step: int, world: World) -> int:
    """The step's sampling seed, the same on every rank: episodes derive their own seeds from it
    (and their env seed and place in the group), so N ranks sample what 1 rank would."""
    return cfg.train.seed * 1_000_003 + step * 101


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
        keep_group_fraction,
        max_reply_tokens=limits["max_new_tokens"] * limits["max_turns"],
    )


# ------------------------------------------------------------------------------------------------
# Evaluation, saving, samples, Ctrl-C
# ------------------------------------------------------------------------------------------------


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
        log.text(step, "samples/eval", _render_sample(trajectories[0]))
        log.info(
            f"eval step {step}: success {success_text(metrics)}, "
            f"format-valid {metrics['eval/format_valid_rate']:.3f}, reward {metrics['eval/reward']:.3f}"
        )
    return metrics


def success_text(metrics: dict[str, float]) -> str:
    """``0.312 (5/16, 95% CI 0.14-0.56)`` from an evaluation's metrics."""
    n = int(metrics["eval/episodes"])
    rate = metrics["eval/success_rate"]
    low, high = metrics["eval/success_ci_low"], metrics["eval/success_ci_high"]
    return f"{rate:.3f} ({round(rate * n)}/{n}, 95% CI {low:.2f}-{high:.2f})"


def summary_line(cfg: Config, run_dir: Path) -> str | None:
    """The run's last line: held-out success at the first and the last evaluation, with intervals,
    and the command that replays the run (``None`` without two evaluations). A run started from
    another run (``--init``, a warm start) whose own step 0 evaluated the base model shows that
    too: base -> warm start -> final."""
    rows = _eval_rows(run_dir)
    if len(rows) < 2:
        return None
    first, last = rows[0], rows[-1]
    start = "warm start" if cfg.run.init else "base"
    parts = [
        f"{start} (step {first['step']}) {success_text(first)}",
        f"step {last['step']} {success_text(last)}",
    ]
    replay = f"agentrl replay {run_dir}"
    init_rows = _eval_rows(Path(cfg.run.init)) if cfg.run.init else []
    if init_rows and init_rows[0]["step"] == 0:
        parts.insert(0, f"base {success_text(init_rows[0])}")
        replay += f" (the warm start: agentrl replay {cfg.run.init})"
    return f"agentrl: held-out success {' -> '.join(parts)}. Replay: {replay}"


def _eval_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The metric rows of a run's evaluations (none for a folder that is not a run)."""
    return [r for r in read_metrics(run_dir) if "eval/success_rate" in r and "eval/episodes" in r]


def save(
    cfg: Config,
    run_dir: Path,
    state: ckpt.TrainerState,
    policy: Policy,
    world: World,
) -> Path:
    """Checkpoint the policy and the trainer state (step and loop state), atomically."""
    return ckpt.save_checkpoint(
        run_dir,
        state,
        policy.ds_engine,
        policy.model,
        policy.tokenizer,
        cfg.run.keep_checkpoints,
        world.is_main,
    )


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
    prompts = probe_prompts(trajectories, cfg.engine.sync_check_tokens)
    # Every rank scores (a ZeRO-3 forward is a collective); the worst rank decides.
    gap = all_reduce_max(logprob_gap(engine, policy.ds_engine, prompts, policy.device), world)
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
