"""The typed configuration tree: one dataclass per concern, YAML recipes, dotted overrides, checks.

``load_config`` builds a :class:`Config` from (in order) the defaults, a YAML recipe, the CLI's
shortcuts (``--env``, ``--model``) and ``--set a.b=value`` overrides, then validates the whole tree
before any work starts. Unknown keys and wrong types fail naming the key and the closest valid one.

May import: algorithms, replay, rollout, envs, models, suggest, seeds (the layers below it;
lint-imports checks).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageParams
from agentrl.algorithms.collapse import COLLAPSE_ACTIONS
from agentrl.algorithms.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    KLParams,
    PolicyLossParams,
    TISParams,
)
from agentrl.algorithms.rewards import ShapingParams
from agentrl.rollout.engines import ENGINE_CHOICES
from agentrl.rollout.manager import PER_CALL_SETTINGS, RolloutConfig, reply_fit_problem
from agentrl.suggest import did_you_mean, not_one_of


class ConfigError(ValueError):
    """A configuration problem, with a message that names the key and the fix."""


@dataclass
class EnvConfig:
    name: str = "sokoban"
    """Registered env name (``agentrl envs list``)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments for the env (``--set env.kwargs.num_boxes=2``)."""
    train_options: dict[str, Any] = field(default_factory=dict)
    """Reset options of training episodes only (``env.reset(options=...)``), under any curriculum
    stage's own: which puzzles to practise on (Sokoban: ``{min_plan_length: 4}``, the long rooms a
    warm start still fails). Evaluation plays the env as configured (or the curriculum's last stage)."""
    train_seed_start: int = 10000
    """Training step ``s`` (from 1) plays env seeds ``train_seed_start + (s-1)*n_groups + g``."""
    eval_seed_start: int = 0
    """Evaluation plays seeds ``eval_seed_start ..``; kept below ``train_seed_start`` so they are never trained on."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        import agentrl

        if self.name in agentrl.names():
            return []
        try:
            agentrl.spec(self.name)
        except KeyError as exc:
            return [f"env.name: {exc.args[0]}"]
        return []


@dataclass
class LoraConfig:
    r: int = 0
    """LoRA rank (default 0: no adapters, all weights train). Above 0, peft's LoRA adapters of this
    rank train and the base weights stay frozen; with ``engine.name=vllm`` each push sends the
    merged weights ``W + (alpha / r) * B @ A`` (docs/engines.md, "LoRA")."""
    alpha: int = 32
    """LoRA scaling numerator (default 32): the adapters' update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapters' input while training (default 0.0), in [0, 1)."""
    target_modules: str = "all-linear"
    """Which layers get adapters (default ``all-linear``: every linear layer but the output head), or
    a regular expression over module names that peft matches in full (``.*(q_proj|v_proj)``)."""

    def problems(self, prefix: str = "model.lora.") -> list[str]:
        """What is wrong with these settings, each with its fix (empty: nothing)."""
        if self.r < 0:
            return [f"{prefix}r={self.r} is negative: a LoRA rank is 0 (off) or positive, e.g. 16 to 64"]
        if self.r == 0:
            defaults = LoraConfig()
            changed = [
                f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(defaults, f.name)
            ]
            return [
                f"{prefix}{name}={getattr(self, name)!r} is set but {prefix}r=0 turns LoRA off, so it would "
                f"be ignored: set {prefix}r to a rank (e.g. 16) to train adapters, or leave {prefix}{name} out"
                for name in changed
            ]
        out = []
        if self.alpha <= 0:
            out.append(f"{prefix}alpha={self.alpha} must be positive (the adapters are scaled by alpha / r)")
        if not 0 <= self.dropout < 1:
            out.append(f"{prefix}dropout={self.dropout} must be in [0, 1) (0 turns it off)")
        if not self.target_modules.strip():
            out.append(f"{prefix}target_modules is empty: use 'all-linear' or a regex of module names")
        return out


@dataclass
class ModelConfig:
    path: str | None = None
    """HF model folder, run directory, hub id; ``None``: the offline default SmolLM2-135M-Instruct."""
    dtype: str = "auto"
    """``auto`` (float32 on CPU, bfloat16 on GPU), ``float32``, ``bfloat16``."""
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        return _choices(("model.dtype", self.dtype, DTYPES)) + self.lora.problems()


@dataclass
class EngineConfig:
    name: str = "auto"
    """``auto`` (vLLM where it is installed and starts, else ``hf``; the run's first lines say which
    and why), ``vllm`` (its own copy of the weights, pushed after every update) or ``hf``
    (in-process transformers, sampling from the trainer's own module)."""
    dtype: str = "auto"
    """The dtype an engine with its own weights (vLLM) samples in: ``auto`` (the dtype the trainer
    computes in: bfloat16 where the update autocasts to it, as on CPUs with bf16 instructions,
    else the model's), ``float32`` or ``bfloat16`` (docs/engines.md, "Dtype"). The ``hf`` engine
    samples from the trainer's own module."""
    max_batch_size: int = 64
    """Prompts per forward pass in the ``hf`` engine."""
    vllm: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``VLLMEngine`` (docs/engines.md): e.g. ``kv_cache_memory_bytes``
    (default: sized to a step's episodes at ``rollout.max_context_tokens``), ``enforce_eager``,
    ``generate_timeout_s`` (600), ``start_timeout_s`` (900), ``generate_threads``, ``sleep_level``."""
    sync_check_tokens: int = 256
    """After each weight push to an engine with its own weights (vllm), the step's first sample (on
    each rank), up to its first this-many sampled tokens, is re-scored by engine and trainer and
    compared on the sampled tokens; 0 turns the check off."""
    sync_tolerance: float | None = None
    """Largest mean |log-prob gap| (nats per sampled token) accepted after a weight push; above it
    the run stops. ``None``: 1e-4 in float32 (the kernels agree to ~1e-5; one stale layer after a
    1e-3 relative weight change shows 4e-4 or more), 0.1 in bfloat16 (docs/engines.md)."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _choices(("engine.name", self.name, ENGINE_CHOICES), ("engine.dtype", self.dtype, DTYPES))
        if self.sync_check_tokens < 0 or (self.sync_tolerance is not None and self.sync_tolerance <= 0):
            out.append(
                "engine.sync_check_tokens must be >= 0 (0: off) and engine.sync_tolerance > 0, got "
                f"{self.sync_check_tokens} and {self.sync_tolerance}"
            )
        return out


#: What the policy loss averages over (``algo.loss_over``).
LOSS_OVER = ("trained", "rolled_out")


@dataclass
class AlgoConfig:
    advantage: AdvantageParams = field(default_factory=AdvantageParams)
    policy_loss: PolicyLossParams = field(default_factory=PolicyLossParams)
    kl: KLParams = field(default_factory=KLParams)
    tis: TISParams = field(default_factory=TISParams)
    shaping: ShapingParams = field(default_factory=ShapingParams)
    entropy_coef: float = 0.0
    """Entropy bonus weight (RAGEN: 0.001)."""
    keep_group_fraction: float = 1.0
    """StarPO-S: train only on this top fraction of groups by in-group reward std (1.0 keeps all)."""
    mixed_success_only: bool = False
    """Train only on groups where some episodes succeeded and some did not (DAPO's dynamic-sampling
    filter, without resampling). Elsewhere returns differ only by shaping such as a per-move cost,
    which GRPO's std division blows up to full-size advantages; with both filters on, an episode
    trains if its group passes both."""
    min_return_spread: float = 0.0
    """With ``mixed_success_only``: also train on the groups of one outcome whose returns span at
    least this (max minus min). A dense progress reward (Sokoban's ``progress_reward`` reset option)
    makes tries that all failed differ by how far they got, which is worth learning from; a span
    below this (a per-move cost alone) still is not. 0: mixed groups only."""
    positive_advantage_only: bool = False
    """Train only on what went better than its group: negative advantages become 0, and an episode
    left with none above 0 does not go on to the update (RAFT / rejection-sampling fine-tuning inside
    GRPO: the better tries are pulled up, the worse are not pushed down). The update trains fewer
    and shorter episodes (failed multi-turn episodes are the long ones: on Sokoban about 220 sampled
    tokens per trained episode against 290 under plain GRPO), and leaves alone the text the failed
    tries share with the solved ones."""
    faithful_only: bool = False
    """Pull up no episode with a turn whose answer ignored its thought: where the env judges replies
    (its optional ``actions_follow_thought``, Sokoban's checks the moves make the push the thought
    names), an episode with a turn judged ``False`` gets no positive advantage, so with
    ``positive_advantage_only`` it does not train at all. An outcome reward alone pays for a success
    the reasoning did not earn (a walk made backwards that happened to work), and reinforcing those
    teaches that answer and thought need not agree, which then breaks rooms the model had solved
    (docs/sokoban-recipe.md). Envs without the judge: no effect."""
    unfaithful_turn_advantage: float = 0.0
    """Not 0: the advantage of each turn whose answer ignored its thought (judged by the env, as for
    ``faithful_only``), in place of the estimator's and whatever its episode's outcome or group, so
    that -1 pushes those replies down as firmly as a clear failure under ``grpo``, also under
    ``positive_advantage_only``. Only the offending turn's tokens get it. 0: off."""
    loss_over: str = "trained"
    """What the policy loss averages over (``algo.policy_loss.aggregation``'s sequences or tokens):
    ``trained``, the episodes the filters above kept; ``rolled_out``, every episode the step played,
    the dropped ones counting as zero-advantage (vanilla GRPO's mean over the whole batch), so the
    loss is ``train/kept_episode_fraction`` times the ``trained`` one. With filters, ``trained``
    moves the weights as far on a step that kept 4 episodes as on one that kept 40, and the few
    carry all of it; ``rolled_out`` moves them in proportion to what the step learned from. The
    dropped episodes' tokens are counted as the kept ones' average. Same for both without filters."""
    skip_zero_advantage: bool = True
    """Skip the forward/backward of samples whose advantages are all zero (their policy gradient is
    zero); only when KL and entropy terms are off, since those still act on such samples."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimizer steps per pass (the batch's samples split evenly)."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _choices(
            ("algo.advantage.estimator", self.advantage.estimator, ADVANTAGE_ESTIMATORS),
            ("algo.policy_loss.loss", self.policy_loss.loss, POLICY_LOSSES),
            ("algo.policy_loss.aggregation", self.policy_loss.aggregation, AGGREGATIONS),
            ("algo.kl.estimator", self.kl.estimator, KL_ESTIMATORS),
            ("algo.loss_over", self.loss_over, LOSS_OVER),
        )
        out += _not_positive("algo.", self, "ppo_epochs", "mini_batches")
        if self.min_return_spread < 0:
            out.append(f"algo.min_return_spread must be >= 0, got {self.min_return_spread}")
        elif self.min_return_spread and not self.mixed_success_only:
            out.append(
                "algo.min_return_spread widens algo.mixed_success_only's filter, which is off: set "
                "algo.mixed_success_only=true, or drop algo.min_return_spread (every group trains)"
            )
        if not 0 < self.keep_group_fraction <= 1:
            out.append(f"algo.keep_group_fraction must be in (0, 1], got {self.keep_group_fraction}")
        if not (math.isfinite(self.unfaithful_turn_advantage) and self.unfaithful_turn_advantage <= 0):
            out.append(
                f"algo.unfaithful_turn_advantage must be a finite number <= 0 (e.g. -1 pushes a reply "
                f"that ignored its thought down; 0: off), got {self.unfaithful_turn_advantage}: a "
                f"positive value would reward those replies"
            )
        return out


@dataclass
class TrainConfig:
    steps: int = 50
    """Training steps (a step = one rollout batch and its updates)."""
    n_groups: int = 8
    """Env groups per step (each of ``rollout.group_size`` episodes)."""
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    """Optimizer steps of linear warmup."""
    init_optimizer_state: bool = False
    """Start AdamW from the second moments and step count saved with the ``run.init`` checkpoint
    (the warm start's, in a warm-started run) instead of from zero. A fresh AdamW's first steps move
    every weight by about ``lr`` whatever the size of its gradient (``m / sqrt(v)`` is +-1 at step
    1), so RL's small, noisy gradients shift weights that the warm start had settled; with the warm
    start's second moments a weight moves by how its RL gradient compares with its SFT gradients.
    The first moments start at zero: the warm start's momentum would otherwise keep pushing the
    weights along its last demonstrations for ten steps or so. Needs a single-process ZeRO-0
    checkpoint of the same model (``ds/mp_rank_00_model_states.pt`` holding the optimizer); under
    ZeRO-1 and up, which shard the optimizer, RL starts AdamW from zero and says so. Without
    ``run.init`` (RL alone) there is nothing to carry, and AdamW starts from zero."""
    lr_schedule: str = "constant"
    """``constant`` or ``cosine`` (to 10% of ``lr``) after warmup."""
    grad_clip: float = 1.0
    micro_batch_tokens: int = 4096
    """Padded tokens per forward/backward pass (memory bound); samples are packed up to it."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0, 1, 2 or 3 (configs/deepspeed/zero{stage}.json)."""
    deepspeed_config: str | None = None
    """A DeepSpeed JSON to use instead of configs/deepspeed/zero{stage}.json; its ZeRO stage sets
    ``zero_stage``. Under ``accelerate launch --use_deepspeed``, the launcher's config file by default."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (cuda if available), ``cpu`` or ``cuda``."""
    dist_timeout_s: int = 1800
    """Seconds a rank waits at a collective before the job fails (a dead or hung rank then ends the
    run with an error naming the collective instead of hanging forever)."""
    num_threads: int = 0
    """CPU threads for torch (0: torch's default). Set 1 per run when running several runs at once."""
    autocast: str = "auto"
    """Mixed precision of the trainer's forward and backward passes, over float32 master weights and
    optimizer state: ``bfloat16`` (``torch.autocast``), ``off``, or ``auto``: bfloat16 for a float32
    model on a CPU with bf16 instructions (AVX512-BF16 or AMX; about 1.8x faster per token here),
    off elsewhere (a GPU run already trains a bfloat16 model). Log-probs and losses stay float32."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _choices(
            ("train.lr_schedule", self.lr_schedule, ["constant", "cosine"]),
            ("train.autocast", self.autocast, ["auto", "bfloat16", "off"]),
            ("train.device", self.device, ["auto", "cpu", "cuda"]),
        )
        out += _not_positive("train.", self, "steps", "n_groups", "micro_batch_tokens")
        if self.zero_stage not in (0, 1, 2, 3):
            out.append(f"train.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        return out


@dataclass
class EvalConfig:
    every: int = 10
    """Evaluate every N steps (and before the first and after the last); 0 disables."""
    episodes: int = 32
    """Held-out env seeds per evaluation."""
    samples_per_seed: int = 1
    """Replies sampled per seed (for pass@k); 1 with greedy decoding."""
    greedy: bool = True
    temperature: float = 1.0
    """Sampling temperature when not greedy."""
    at_start: bool = True
    """Evaluate the initial model (step 0)."""
    base_episodes: int | None = None
    """Held-out seeds for the step-0 evaluation of the base model (``None``: ``episodes``): the
    first ``base_episodes`` of the same seeds. A base model that rambles to the token limit every
    turn is the slowest to evaluate and rarely the point; a warm start (``run.init``, or RL after
    ``sft.warm_start``) is always evaluated on all ``episodes``."""
    keep_best: bool = True
    """After each of RL's evaluations that solves more held-out puzzles than every earlier one,
    export its model to ``runs/NAME/best/`` (an HF folder with ``best.json``: the step and its
    success). RL on a small model can peak and then give its gains back; the last checkpoint would
    hold the worse model."""
    drop_warning_p: float = 0.05
    """Warn when an evaluation loses more of the same puzzles than it gains against the run's best
    evaluation so far with paired (McNemar) p below this (0: never warn). The collapse guard watches
    training signals, which can stay healthy while held-out success falls."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _not_positive("eval.", self, "base_episodes") if self.base_episodes is not None else []
        if not 0 <= self.drop_warning_p <= 1:
            out.append(
                f"eval.drop_warning_p is a p-value in [0, 1] (0: no warning), got {self.drop_warning_p}"
            )
        if self.every and self.episodes <= 0:
            out.append("eval.episodes must be positive when eval.every > 0")
        if self.greedy and self.samples_per_seed > 1:
            out.append(
                "eval.samples_per_seed > 1 with eval.greedy=true gives identical samples; set eval.greedy=false "
                "for pass@k"
            )
        return out


@dataclass
class SFTConfig:
    warm_start: bool = False
    """``agentrl train`` first fine-tunes on ``episodes`` oracle demonstrations (the warm start, an SFT
    run of its own in ``RUN/warm_start/``; its step-0 evaluation is the base model's), then runs RL
    from it in ``RUN/`` (whose step-0 evaluation is the warm start's)."""
    episodes: int = 256
    """Oracle demonstrations to build (one per training seed; unsolved ones are dropped)."""
    epochs: int = 1
    batch_episodes: int = 16
    """Episodes per optimizer step."""
    lr: float | None = None
    """Learning rate of the SFT updates (``None``: ``train.lr``); warmup/cosine factors still apply."""
    reset_options: dict[str, Any] = field(default_factory=dict)
    """Reset options of the oracle demonstrations' episodes (``env.reset(options=...)``): which
    puzzles to demonstrate (Sokoban: ``{min_plan_length: 4}``, rooms of 4+ moves, whose every turn
    is one of a longer plan). ``env.train_options`` shape RL's episodes only; evaluation neither."""
    eval_every: int | None = None
    """Held-out evaluation every N SFT updates and after the last (``None``: ``eval.every``; 0: none
    during SFT, only the starting model's and the last). A warm start leaves its last update's
    evaluation to RL's step 0, which evaluates the same weights. ``eval.every: 0`` turns all off."""
    eval_episodes: int | None = None
    """Held-out seeds of the evaluations between SFT updates: the first ``eval_episodes`` of
    ``eval.episodes``'s (``None``: all of them). They draw the learning curve; the model that SFT
    ends with is evaluated on all (after the last update, or at RL's step 0 for a warm start), and so
    is RL. A model still learning fails most rooms and plays every turn of them, so these are the
    slowest evaluations of a run."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _not_positive("sft.", self, "episodes", "epochs", "batch_episodes")
        out += _not_positive("sft.", self, "eval_episodes") if self.eval_episodes is not None else []
        out += _not_positive("sft.", self, "lr") if self.lr is not None else []
        if self.eval_every is not None and self.eval_every < 0:
            out.append(f"sft.eval_every must be >= 0 (0: no evaluation during SFT), got {self.eval_every}")
        return out


@dataclass
class RunConfig:
    name: str | None = None
    """Run name; the run lives in ``root/name``. Default: ``ENV-YYYYmmdd-HHMMSS``."""
    root: str = "runs"
    save_every: int = 10
    """Checkpoint every N steps (and at the end, and on Ctrl-C); 0: only at the end."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones are deleted); 0 keeps all."""
    init: str | None = None
    """Start from this run's (or folder's) model, e.g. an SFT run."""
    progress: bool = True
    """Show a progress bar."""
    time_budget_min: float | None = None
    """Minutes from the command's start (a warm start's included) that RL's steps and final
    evaluation must fit in: after each step, if one more as long as the longest so far and its
    evaluation would end past it, that step is RL's last (evaluated and saved; ``--resume`` plays
    the rest). The first RL step always runs. ``None``: no budget, ``train.steps`` steps."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            return [
                f"run.time_budget_min must be positive (minutes), or null for no budget; got {self.time_budget_min}"
            ]
        return []


@dataclass
class StageRolloutConfig:
    """Rollout settings a curriculum stage may change (``None``: the run's own ``rollout.*``).

    The run's ``rollout.*`` values are the ceiling: a stage may lower them, never raise them, since
    they size the vLLM engine (``max_model_len``, KV cache), check ``train.micro_batch_tokens`` and
    set Dr.GRPO's constant length normaliser for the whole run. Evaluation plays the run's values.
    """

    group_size: int | None = None
    """Episodes per group in this stage (DeepScaleR: 8 at 8K, 16 from 16K on)."""
    max_turns: int | None = None
    """Turns per episode at most in this stage."""
    max_new_tokens: int | None = None
    """Tokens one reply may sample in this stage (DeepScaleR: 8192 -> 16384 -> 24576)."""
    max_context_tokens: int | None = None
    """Longest context a turn may start from plus its reply in this stage."""

    @staticmethod
    def why_not(prefix: str, name: str) -> str | None:
        """Why ``name`` cannot be set in a stage's ``rollout`` mapping (``None``: not a rollout setting)."""
        if name == "temperature":
            stage = prefix.removesuffix("rollout.")
            return (
                f"set the stage's own {stage}temperature instead (the trainer scores the log-probs at the "
                "same temperature)"
            )
        if name in {f.name for f in dataclasses.fields(RolloutConfig)}:
            return (
                f"rollout.{name} is fixed for the whole run (it shapes the system prompt, the reply parser, "
                f"the sampler or the env workers); a stage may set only {', '.join(PER_CALL_SETTINGS)}"
            )
        return None

    def overrides(self) -> dict[str, int]:
        """The settings this stage sets (those not ``None``)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def problems(self, prefix: str) -> list[str]:
        """What is wrong with these settings on their own (``prefix``: ``curriculum.stages[i].rollout.``);
        how they compare with the run's ``rollout.*`` is a check across sections (:func:`validate`)."""
        return [f"{prefix}{name} must be positive, got {v}" for name, v in self.overrides().items() if v <= 0]


@dataclass
class StageConfig:
    steps: int = 0
    """Training steps of this stage (adaptive mode: its budget; it moves on once they are spent)."""
    env_options: dict[str, Any] = field(default_factory=dict)
    """Reset options of every episode of the stage, train and eval (e.g. ``{n_people: 5}``)."""
    lr: float | None = None
    """Learning rate of the stage (``None``: ``train.lr``); warmup/cosine factors still apply."""
    temperature: float | None = None
    """Rollout sampling temperature of the stage (``None``: ``rollout.temperature``)."""
    rollout: StageRolloutConfig = field(default_factory=StageRolloutConfig)
    """Rollout limits of the stage, at most the run's own (DeepScaleR's staged context:
    ``{max_new_tokens: 8192}`` -> ``16384`` -> ``24576``); unset keys keep ``rollout.*``."""

    def problems(self, key: str) -> list[str]:
        """What is wrong with this stage on its own (``key``: ``curriculum.stages[i]``)."""
        out = []
        if self.steps <= 0:
            out.append(f"{key}.steps must be positive, got {self.steps}: give every stage its steps")
        if self.lr is not None and self.lr <= 0:
            out.append(f"{key}.lr must be positive, got {self.lr}")
        if self.temperature is not None and self.temperature < 0:
            out.append(f"{key}.temperature must be >= 0 (0: greedy), got {self.temperature}")
        return out + self.rollout.problems(f"{key}.rollout.")


@dataclass
class CurriculumConfig:
    stages: list[StageConfig] = field(default_factory=list)
    """The stages in order; empty: no curriculum. ``train.steps`` becomes the sum of their steps."""
    adaptive: bool = False
    """Move between stages on the rolling train success rate instead of the fixed step counts."""
    promote_at: float = 0.8
    """Adaptive: move to the next stage when the rolling success rate reaches this."""
    demote_at: float = 0.1
    """Adaptive: move back one stage when the rolling success rate falls below this."""
    window: int = 5
    """Adaptive: steps (of the current stage) in the rolling success rate."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = [p for i, stage in enumerate(self.stages) for p in stage.problems(f"curriculum.stages[{i}]")]
        if not 0 <= self.demote_at < self.promote_at <= 1:
            out.append(
                f"curriculum thresholds need 0 <= demote_at < promote_at <= 1 (success rates), got "
                f"demote_at={self.demote_at}, promote_at={self.promote_at}"
            )
        if self.window <= 0:
            out.append(f"curriculum.window must be positive (steps), got {self.window}")
        if self.adaptive and not self.stages:
            out.append("curriculum.adaptive=true needs curriculum.stages (at least two) to move between")
        return out


@dataclass
class CollapseConfig:
    warn_zero_std_fraction: float | None = 0.9
    """Signal when this share of groups (or more) has zero reward variance; ``None``: off."""
    warn_distinct_below: float | None = 0.3
    """Signal when distinct first replies per group / group size falls below this; ``None``: off."""
    warn_instruction_echo: float | None = 0.5
    """Signal when this share of replies (or more) repeats the instructions' wording; ``None``: off."""
    warn_distinct_across_puzzles: float | None = 0.3
    """Signal when distinct first replies / puzzles of a step falls below this (one reply for every
    puzzle: the policy ignores its input); ``None``: off."""
    patience: int = 3
    """Consecutive steps a signal must hold before the action is taken."""
    action: str = "warn"
    """``warn`` (console line, ``collapse/warning`` metric), ``stop`` (save and end the run) or
    ``filter`` (switch on StarPO-S filtering, ``algo.keep_group_fraction`` 0.25, from then on)."""

    def problems(self) -> list[str]:
        """What is wrong with this section, each with its fix (empty: nothing)."""
        out = _choices(("collapse.action", self.action, COLLAPSE_ACTIONS))
        for key in (
            "warn_zero_std_fraction",
            "warn_distinct_below",
            "warn_instruction_echo",
            "warn_distinct_across_puzzles",
        ):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= 1:
                out.append(f"collapse.{key} is a fraction in [0, 1] (or null: off), got {value}")
        if self.patience <= 0:
            out.append(f"collapse.patience must be a positive number of steps, got {self.patience}")
        return out


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    run: RunConfig = field(default_factory=RunConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)

    @property
    def episodes_per_step(self) -> int:
        return self.train.n_groups * self.rollout.group_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ------------------------------------------------------------------------------------------------
# Building from dicts (YAML, overrides) with typed checks
# ------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert strings from the command line."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} is a section; give it a mapping, not {value!r}")
        return _build(tp, value, key + ".")
    if tp is Any:
        return value
    if origin is list and typing.get_args(tp) and dataclasses.is_dataclass(typing.get_args(tp)[0]):
        return _coerce_sections(value, typing.get_args(tp)[0], key)
    if origin in (dict, list, tuple):
        return _coerce_container(value, origin, key)
    scalar = {bool: _coerce_bool, int: _coerce_number, float: _coerce_number, str: _coerce_str}.get(tp)
    return scalar(value, tp, key) if scalar else value


def _coerce_sections(value: Any, item: type, key: str) -> list[Any]:
    """A list of sections (``curriculum.stages``): mappings, or the YAML text of a list of them."""
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"{key} must be a list of mappings (e.g. {key}=[{{steps: 100}}, {{steps: 50}}]), got {value!r}"
        )
    return [v if isinstance(v, item) else _coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _coerce_container(value: Any, base: type, key: str) -> Any:
    """A ``dict``, ``list`` or ``tuple``, or its YAML text."""
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, (dict if base is dict else (list, tuple))):
        raise ConfigError(f"{key} must be a {base.__name__}, got {value!r}")
    return base(value) if base is not dict else dict(value)


def _coerce_bool(value: Any, tp: type, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{key} must be true or false, got {value!r}")


def _coerce_number(value: Any, tp: type, key: str) -> int | float:
    if isinstance(value, str):
        try:
            value = float(value) if tp is float or any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise ConfigError(f"{key} must be a number ({tp.__name__}), got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number ({tp.__name__}), got {value!r}")
    if tp is int and float(value) != int(value):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    return tp(value)


def _coerce_str(value: Any, tp: type, key: str) -> str:
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return str(value)


def _unknown_key(prefix: str, name: str, valid: list[str]) -> ConfigError:
    hint = did_you_mean(name, valid, prefix=prefix, quote=False)
    return ConfigError(f"unknown config key {prefix}{name}.{hint} Valid keys here: {', '.join(valid)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types_:
            reason = cls.why_not(prefix, name) if hasattr(cls, "why_not") else None
            if reason:
                raise ConfigError(f"{prefix}{name} cannot be set here: {reason}")
            raise _unknown_key(prefix, name, list(types_))
        kwargs[name] = _coerce(value, types_[name], prefix + name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: {exc}") from exc


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict, creating sections as needed; a number indexes a list
    that is already there (``curriculum.stages.1.lr=1e-6``)."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"cannot set {dotted}: {'.'.join(parts[:i])} is a list of {len(node)}; index it 0..{len(node) - 1}"
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {parts[i - 1]} is not a section")
        if last:
            node[part] = value
            continue
        node = node.setdefault(part, {})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = (
            _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
        )
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"algo.kl.coef=0.001"`` -> ``("algo.kl.coef", "0.001")`` (typed later against the tree)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. algo.kl.coef=0.001")
    return key.strip(), value


def load_config(
    config_file: str | None = None,
    env: str | None = None,
    model: str | None = None,
    overrides: list[str] | None = None,
    name: str | None = None,
    init: str | None = None,
) -> Config:
    """Defaults <- YAML recipe <- CLI shortcuts <- ``key=value`` overrides, then :func:`validate`."""
    tree: dict[str, Any] = {}
    steps_source = stages_source = -1  # which source (0: the file, i: the i-th override) set them last
    if not config_file and env:
        # An env may ship a default recipe sized for a laptop: configs/ENV.yaml.
        default = configs_dir() / f"{env}.yaml"
        config_file = str(default) if default.is_file() else None
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            recipes = (
                sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
            )
            raise ConfigError(
                f"config file {config_file} not found. Recipes in configs/: {', '.join(recipes) or '-'}"
            )
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file} must hold a mapping of sections (env:, train:, ...)")
        tree = _merge(tree, loaded)
        steps_source = 0 if _has(loaded, "train.steps") else -1
        stages_source = 0 if _has(loaded, "curriculum.stages") else -1
    if env:
        _set_dotted(tree, "env.name", env)
    if model:
        _set_dotted(tree, "model.path", model)
    if name:
        _set_dotted(tree, "run.name", name)
    if init:
        _set_dotted(tree, "run.init", init)
    for i, text in enumerate(overrides or [], start=1):
        key, value = parse_override(text)
        if _parsed_as_yaml(key):
            # `env.kwargs.describe_positions=false` is a bool, `curriculum.stages=[...]` a list.
            value = _yaml_value(key, value)
        _set_dotted(tree, key, value)
        steps_source = i if key == "train.steps" else steps_source
        stages_source = i if key.startswith("curriculum.stages") else stages_source
    cfg = _build(Config, tree)
    # A recipe's train.steps gives way to stages set later (on the command line); set together or
    # after the stages, it must agree with them.
    _derive_steps(cfg, steps_given=steps_source >= 0 and steps_source >= stages_source)
    _derive_zero_stage(
        cfg, stage_given=_has(tree, "train.zero_stage"), launcher=_accelerate_deepspeed(os.environ)
    )
    validate(cfg)
    return cfg


def _parsed_as_yaml(dotted: str) -> bool:
    """Whether a command-line value for ``dotted`` is YAML rather than text for a typed scalar field:
    true for sections, lists and mappings (``curriculum.stages=[...]``) and for anything inside a
    free-form mapping (``env.kwargs.x=false``), where no field type would convert the text."""
    tp: Any = Config
    for part in dotted.split("."):
        if typing.get_origin(tp) is list and part.isdigit():
            tp = (typing.get_args(tp) or (Any,))[0]  # an element: curriculum.stages.1.lr
            continue
        if not dataclasses.is_dataclass(tp):
            return True  # below a mapping field
        types_ = _field_types(tp)
        if part not in types_:
            return False  # an unknown key: _build reports it with the closest valid one
        tp = types_[part]
    return not _is_scalar(tp)


def _is_scalar(tp: Any) -> bool:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(_is_scalar(a) for a in typing.get_args(tp) if a is not type(None))
    return tp in (str, int, float, bool)


def _yaml_value(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}={text!r} is not a valid YAML value: {exc}") from None


def _has(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _derive_steps(cfg: Config, steps_given: bool) -> None:
    """With curriculum stages the run is as long as its stages: ``train.steps`` = their sum."""
    if not cfg.curriculum.stages:
        return
    total = sum(stage.steps for stage in cfg.curriculum.stages)
    if steps_given and cfg.train.steps != total:
        raise ConfigError(
            f"train.steps={cfg.train.steps} but the curriculum stages add up to {total} steps: with "
            "curriculum.stages the run length is the sum of the stages' steps; leave train.steps out "
            "(or set it to that sum) and change the stages' steps instead"
        )
    cfg.train.steps = total


def _accelerate_deepspeed(environ: Mapping[str, str]) -> dict[str, Any]:
    """What ``accelerate launch --use_deepspeed`` asked for: its DeepSpeed config file and/or ZeRO stage."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        return {}
    out: dict[str, Any] = {}
    if environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").lower() != "none":
        out["deepspeed_config"] = environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"]
    elif environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "").isdigit():
        out["zero_stage"] = int(environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    return out


def _derive_zero_stage(cfg: Config, stage_given: bool, launcher: Mapping[str, Any]) -> None:
    """One source of truth for the ZeRO stage: ``train.zero_stage`` or the DeepSpeed JSON's own stage.

    Under ``accelerate launch --use_deepspeed`` the launcher's config file (or ``--zero_stage``) is
    used unless the agentrl config names one itself. A JSON's ``zero_optimization.stage`` then sets
    ``train.zero_stage``, so the config-time checks (ZeRO-3 with the hf engine, LoRA) see the real stage.
    """
    t = cfg.train
    if t.deepspeed_config is None and "deepspeed_config" in launcher:
        t.deepspeed_config = launcher["deepspeed_config"]
    if not stage_given and t.deepspeed_config is None and "zero_stage" in launcher:
        t.zero_stage = launcher["zero_stage"]
    if t.deepspeed_config is None:
        return
    path = Path(t.deepspeed_config)
    try:
        ds = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"train.deepspeed_config={path}: no such file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"train.deepspeed_config={path} is not readable JSON: {exc}") from None
    zero = ds.get("zero_optimization", {}) if isinstance(ds, dict) else {}
    stage = zero.get("stage", 0) if isinstance(zero, dict) else 0
    if stage_given and t.zero_stage != stage:
        raise ConfigError(
            f"train.zero_stage={t.zero_stage} but train.deepspeed_config={path} sets ZeRO stage {stage}: "
            "set one of them (the JSON's zero_optimization.stage wins when train.zero_stage is left out)"
        )
    t.zero_stage = stage


def configs_dir() -> Path:
    """The recipes folder: configs/ of the source tree (agentrl installs editable), else ./configs."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", Path("configs")):
        if candidate.is_dir():
            return candidate
    return Path("configs")


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config from ``Config.to_dict()`` (a run's config.yaml)."""
    cfg = _build(Config, data)
    _derive_steps(cfg, steps_given=_has(data, "train.steps"))
    _derive_zero_stage(cfg, stage_given=_has(data, "train.zero_stage"), launcher={})
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# Checks: each section's own (its problems()), then those across sections; each names the fix
# ------------------------------------------------------------------------------------------------


#: The dtypes a model or an engine may be given.
DTYPES = ("auto", "float32", "bfloat16")


def _choices(*settings: tuple[str, str, Any]) -> list[str]:
    """The messages of the ``(key, value, choices)`` whose value is not one of its choices."""
    return [m for key, value, choices in settings if (m := not_one_of(key, value, choices))]


def _not_positive(prefix: str, section: Any, *names: str) -> list[str]:
    """``"{prefix}{name} must be positive, got {value}"`` for each of ``names`` that is not."""
    return [
        f"{prefix}{name} must be positive, got {getattr(section, name)}"
        for name in names
        if getattr(section, name) <= 0
    ]


def validate(cfg: Config) -> None:
    """Check the whole tree before any work starts: each section its own fields (its ``problems()``),
    then the few settings that involve two sections (:func:`problems_across_sections`). The first
    section with a problem raises :class:`ConfigError`; then a run without a name gets one."""
    sections = (
        cfg.env,
        cfg.collapse,
        cfg.algo,
        cfg.engine,
        cfg.rollout,
        cfg.train,
        cfg.sft,
        cfg.eval,
        cfg.run,
    )
    for section in (*sections, cfg.curriculum, cfg.model):
        problems = section.problems()
        if problems:
            raise ConfigError("; ".join(problems))
    problems = problems_across_sections(cfg)
    if problems:
        raise ConfigError(problems[0])
    if cfg.run.name is None:
        cfg.run.name = f"{cfg.env.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def problems_across_sections(cfg: Config) -> list[str]:
    """The checks that read two sections or more, each with why; every section is valid on its own."""
    out = []
    # Advantages are relative to the group: a group of one learns nothing (but the turn estimator's).
    if cfg.rollout.group_size < 2 and cfg.algo.advantage.estimator != "turn":
        out.append(
            "rollout.group_size must be at least 2: group-relative advantages of a group of one are always 0"
        )
    # The update splits a step's episodes evenly into mini-batches.
    if cfg.episodes_per_step % cfg.algo.mini_batches:
        out.append(
            f"algo.mini_batches={cfg.algo.mini_batches} must divide the {cfg.episodes_per_step} episodes per step "
            f"(train.n_groups={cfg.train.n_groups} x rollout.group_size={cfg.rollout.group_size})"
        )
    # A curriculum stage plays within the run's rollout limits, which size the engine and the batches.
    for i, stage in enumerate(cfg.curriculum.stages):
        out += _stage_within_run(cfg, f"curriculum.stages[{i}]", stage.rollout)
    if cfg.curriculum.stages and cfg.train.steps != sum(s.steps for s in cfg.curriculum.stages):
        out.append(
            f"train.steps={cfg.train.steps} differs from the sum of the curriculum stages' steps "
            f"({sum(s.steps for s in cfg.curriculum.stages)}); leave train.steps out with curriculum.stages"
        )
    # The env judges a reply's moves against its thought only where replies have one.
    judged = " and ".join(
        name
        for name, on in (
            ("algo.faithful_only", cfg.algo.faithful_only),
            ("algo.unfaithful_turn_advantage", cfg.algo.unfaithful_turn_advantage != 0),
        )
        if on
    )
    if judged and not cfg.rollout.think:
        out.append(
            f"{judged} judge each reply's moves against its <think> thought, which "
            f"rollout.think=false leaves out: set rollout.think=true, or drop {judged}"
        )
    # One micro-batch must hold the longest sample a rollout can make.
    if cfg.train.micro_batch_tokens < cfg.rollout.max_context_tokens:
        out.append(
            f"train.micro_batch_tokens={cfg.train.micro_batch_tokens} is smaller than one full context "
            f"(rollout.max_context_tokens={cfg.rollout.max_context_tokens}); raise it to at least that"
        )
    return out + _zero3_problems(cfg) + _held_out_problems(cfg)


def _zero3_problems(cfg: Config) -> list[str]:
    """ZeRO-3 shards the parameters: nothing may need the full module in the trainer's process."""
    hf_engine = cfg.engine.name == "hf" or (
        cfg.engine.name == "auto" and importlib.util.find_spec("vllm") is None
    )
    if cfg.train.zero_stage != 3:
        return []
    if hf_engine:
        return [
            "train.zero_stage=3 shards the parameters, and the hf engine samples from the trainer's own "
            "module, which then holds no full weights: use train.zero_stage=2 with engine.name=hf, or "
            "engine.name=vllm (weights are gathered and pushed to it)"
        ]
    if cfg.model.lora.r > 0:
        return ["LoRA with ZeRO-3 is not supported; use train.zero_stage=2 (LoRA state is small)"]
    return []


def _held_out_problems(cfg: Config) -> list[str]:
    """Evaluation seeds (``eval`` section) must never be training seeds (``env`` section)."""
    env = cfg.env
    if env.eval_seed_start < env.train_seed_start < env.eval_seed_start + cfg.eval.episodes:
        return [
            f"eval seeds {env.eval_seed_start}..{env.eval_seed_start + cfg.eval.episodes - 1} overlap the "
            f"training seeds from env.train_seed_start={env.train_seed_start}: held-out seeds must never be "
            "trained on"
        ]
    return []


def _stage_within_run(cfg: Config, key: str, limits: StageRolloutConfig) -> list[str]:
    """A stage's rollout limits: at most the run's own, a reply that fits the context, whole groups
    that split into the mini-batches."""
    run = cfg.rollout
    out = []
    for name, value in limits.overrides().items():
        ceiling = getattr(run, name)
        if value > ceiling:
            out.append(
                f"{key}.rollout.{name}={value} exceeds rollout.{name}={ceiling}: the run's rollout settings are "
                "the most any stage may use (they size the engine's context and KV cache, the micro-batches "
                f"and the loss's length normaliser); set rollout.{name} to the largest stage's value ({value} "
                "or more) and let the earlier stages lower it"
            )
    if limits.max_new_tokens is not None or limits.max_context_tokens is not None:
        named = [
            (f"{key}.rollout.{name}", getattr(limits, name))
            if getattr(limits, name) is not None
            else (f"rollout.{name}", getattr(run, name))
            for name in ("max_new_tokens", "max_context_tokens")
        ]
        fits = reply_fit_problem(*named[0], *named[1], where=f" in {key}")
        out += [fits] if fits else []
    group_size = limits.group_size or run.group_size
    if group_size < 2 and cfg.algo.advantage.estimator != "turn":
        out.append(
            f"{key}.rollout.group_size must be at least 2: group-relative advantages of a group of one are always 0"
        )
    if (cfg.train.n_groups * group_size) % cfg.algo.mini_batches:
        out.append(
            f"algo.mini_batches={cfg.algo.mini_batches} must divide the {cfg.train.n_groups * group_size} episodes "
            f"per step of {key} (train.n_groups={cfg.train.n_groups} x {key}.rollout.group_size={group_size})"
        )
    return out
