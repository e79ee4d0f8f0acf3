"""One rollout batch's policy update: epochs, mini-batches, token-packed micro-batches, DeepSpeed steps.

Losses come from :mod:`agentrl.algorithms.losses` by name; normalisers (``LossTotals``) are over the whole
mini-batch on every rank, so micro-batch and rank losses add up to exactly the mini-batch loss.

May import: policy, checkpoint, metrics, logger, curriculum, distributed (in agentrl.training), and
config, algorithms, replay, rollout, envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from agentrl import seeds
from agentrl.algorithms.batching import MicroBatch, pack_micro_batches
from agentrl.algorithms.losses import (
    LossTotals,
    entropy_from_logits,
    get_aggregation,
    get_policy_loss,
    kl_coef_at,
    kl_penalty,
    masked_mean,
    truncated_is_weights,
)
from agentrl.config import Config
from agentrl.rollout.logprobs import token_logprobs
from agentrl.rollout.trajectory import Sample, Trajectory
from agentrl.training.distributed import World, all_reduce_max, all_reduce_sum, gather_objects
from agentrl.training.policy import Policy


@dataclass
class UpdateContext:
    """What every micro-batch of one update shares: the run, the policy, the process group, and the
    loss functions with their settings."""

    cfg: Config
    policy: Policy
    world: World
    loss_fn: object
    aggregate: object
    kl_coef: float
    temperature: float
    """The rollout's sampling temperature (greedy: 1), at which the trainer's log-probs are taken."""
    tis: bool
    """Correct for the engine's numerics with truncated importance sampling (``algo.tis``)."""
    proximal: dict[int, torch.Tensor] | None = None
    """Trainer log-probs before the update, by ``id(sample)`` (only when several passes need them)."""
    loss_over_scale: float = 1.0
    """Every mini-batch's normalisers are multiplied by this: episodes the step rolled out per
    episode it trains (``algo.loss_over=rolled_out``), else 1."""


@dataclass
class _Sums:
    """An update's metrics as they accumulate: token-weighted sums and their token counts, maxima."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)
    maxes: dict[str, float] = field(default_factory=dict)
    trained_tokens: int = 0
    grad_norms: list[float] = field(default_factory=list)

    def add(self, metrics: dict[str, float], tokens: int) -> None:
        self.trained_tokens += tokens
        for k, v in metrics.items():
            if k.endswith("_max"):
                self.maxes[k] = max(self.maxes.get(k, v), v)
                continue
            self.sums[k] = self.sums.get(k, 0.0) + v * tokens
            self.counts[k] = self.counts.get(k, 0.0) + tokens


def update(
    cfg: Config,
    policy: Policy,
    trajectories: list[Trajectory],
    step: int,
    world: World,
    temperature: float,
    behaviour_is: bool = False,
    rolled_out: int | None = None,
) -> dict[str, float]:
    """``ppo_epochs`` passes of ``mini_batches`` optimizer steps over this rank's trajectories;
    log-probs at the rollout's sampling ``temperature``.

    ``behaviour_is``: the stored log-probs come from an engine whose numerics differ from the
    trainer's; the PPO ratio is then taken against the trainer's own log-probs before the update
    and each token's loss weighted by the truncated importance weight (``algo.tis``).
    ``rolled_out``: the episodes this rank played this step, of which ``trajectories`` are those
    the credit filters kept (``None``: all of them); ``algo.loss_over=rolled_out`` averages over them."""
    algo = cfg.algo
    ctx = UpdateContext(
        cfg=cfg,
        policy=policy,
        world=world,
        loss_fn=get_policy_loss(algo.policy_loss.loss),
        aggregate=get_aggregation(algo.policy_loss.aggregation),
        kl_coef=kl_coef_at(algo.kl, step, cfg.train.steps) if algo.kl.enabled else 0.0,
        temperature=temperature if temperature > 0 else 1.0,
        tis=behaviour_is,
    )
    if algo.loss_over == "rolled_out" and rolled_out is not None:
        played, kept = all_reduce_sum([rolled_out, len(trajectories)], world)
        ctx.loss_over_scale = played / kept if kept else 1.0
    rng = random.Random(seeds.update_shuffle_seed(cfg.train.seed, step))
    acc = _Sums()
    if behaviour_is and (algo.ppo_epochs > 1 or algo.mini_batches > 1):
        # After the first optimizer step the trainer's log-probs are no longer the pre-update ones:
        # take them for every sample now (one forward pass, no gradient).
        ctx.proximal = proximal_logprobs(cfg, policy, trajectories, ctx.temperature, _needs_all(cfg))
    policy.ds_engine.train()
    for epoch in range(algo.ppo_epochs):
        order = list(range(len(trajectories)))
        rng.shuffle(order)
        size = -(-len(order) // algo.mini_batches) if order else 0
        for mb in range(algo.mini_batches):
            chosen = [trajectories[i] for i in order[mb * size : (mb + 1) * size]]
            _mini_batch(ctx, chosen, first_pass=epoch == 0 and mb == 0, acc=acc)
    return _update_metrics(ctx, acc)


def _needs_all(cfg: Config) -> bool:
    """Whether samples with all-zero advantages still train (KL and entropy terms act on them)."""
    return cfg.algo.kl.enabled or cfg.algo.entropy_coef != 0 or not cfg.algo.skip_zero_advantage


def _mini_batch(ctx: UpdateContext, chosen: list[Trajectory], first_pass: bool, acc: _Sums) -> None:
    """One optimizer step over the samples of ``chosen``, summed over micro-batches."""
    cfg, policy, world = ctx.cfg, ctx.policy, ctx.world
    samples = [s for t in chosen for s in t.samples if sum(s.loss_mask)]
    # Normalisers over the whole mini-batch on every rank: micro-batch losses then sum to it.
    n_tok, n_seq = all_reduce_sum([sum(sum(s.loss_mask[1:]) for s in samples), len(samples)], world)
    max_tokens = cfg.rollout.max_new_tokens * cfg.rollout.max_turns
    # algo.loss_over=rolled_out: as many more sequences and tokens as the filters dropped episodes.
    n_tok, n_seq = (round(n * ctx.loss_over_scale) for n in (n_tok, n_seq))
    totals = LossTotals(tokens=max(1, n_tok), sequences=max(1, n_seq), max_tokens=max_tokens)
    if not _needs_all(cfg):
        samples = [s for s in samples if _has_advantage(s)]
    micro = pack_micro_batches(samples, cfg.train.micro_batch_tokens, policy.tokenizer.pad_token_id)
    # Every rank runs the same number of backward passes (DeepSpeed's gradient collectives).
    n_micro = all_reduce_max(len(micro), world)
    if n_micro == 0:
        return  # nothing to learn from: no optimizer step (Adam would still move the weights)
    for i in range(n_micro):
        batch = micro[i] if i < len(micro) else None
        policy.ds_engine.set_gradient_accumulation_boundary(i == n_micro - 1)
        loss, m = _micro_step(ctx, batch, totals, first_pass)
        policy.ds_engine.backward(loss)
        if batch is not None:
            acc.add(m, batch.num_tokens)
    # ZeRO-2/3 compute the norm over their gradient partitions inside step(); below stage 2
    # DeepSpeed does not report it, and the full gradients are right here.
    norm = _grad_norm(policy) if cfg.train.zero_stage < 2 else None
    policy.ds_engine.step()
    if norm is None:
        norm = float(policy.ds_engine.get_global_grad_norm() or 0.0)
    acc.grad_norms.append(norm)


def _update_metrics(ctx: UpdateContext, acc: _Sums) -> dict[str, float]:
    """The update's ``train/*`` metrics over every rank's tokens."""
    sums, counts, maxes, trained_tokens = _combine_ranks(
        acc.sums, acc.counts, acc.maxes, acc.trained_tokens, ctx.world
    )
    out = {f"train/{k}": sums[k] / counts[k] for k in sums if counts.get(k)}
    out.update({f"train/{k}": v for k, v in maxes.items()})
    out["train/grad_norm"] = float(np.mean(acc.grad_norms)) if acc.grad_norms else 0.0
    out["train/lr"] = float(ctx.policy.ds_engine.get_lr()[0])
    out["train/kl_coef"] = ctx.kl_coef
    out["train/trained_tokens"] = float(trained_tokens)
    out.setdefault("train/kl", 0.0)
    out.setdefault("train/clip_fraction", 0.0)
    out.setdefault("train/entropy", 0.0)
    return out


def _combine_ranks(
    sums: dict[str, float], counts: dict[str, float], maxes: dict[str, float], tokens: int, world: World
) -> tuple[dict[str, float], dict[str, float], dict[str, float], int]:
    """Every rank's metrics combined: token-weighted sums and counts added up (so the means are over
    all ranks' tokens, not an average of per-rank averages), maxima maxed. A rank may lack a key
    (it had no tokens), so they travel as one gathered object rather than per-key collectives."""
    if world.size == 1:
        return sums, counts, maxes, tokens
    total_sums: dict[str, float] = {}
    total_counts: dict[str, float] = {}
    total_maxes: dict[str, float] = {}
    total_tokens = 0
    for part_sums, part_counts, part_maxes, part_tokens in gather_objects(
        (sums, counts, maxes, tokens), world
    ):
        for k, v in part_sums.items():
            total_sums[k] = total_sums.get(k, 0.0) + v
            total_counts[k] = total_counts.get(k, 0.0) + part_counts[k]
        for k, v in part_maxes.items():
            total_maxes[k] = max(total_maxes.get(k, v), v)
        total_tokens += part_tokens
    return total_sums, total_counts, total_maxes, total_tokens


def _grad_norm(policy: Policy) -> float:
    """Global gradient norm before clipping, from the full gradients (ZeRO stage 0/1)."""
    grads = [p.grad.detach().float().norm() for p in policy.model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def _micro_step(
    ctx: UpdateContext, batch: MicroBatch | None, totals: LossTotals, first_pass: bool
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (already divided by the mini-batch totals) and its metrics.

    ``first_pass``: no optimizer step has happened yet in this update, so the trainer's log-probs
    here are the pre-update ones (what the engine's are compared with)."""
    cfg, policy = ctx.cfg, ctx.policy
    if batch is None:
        # A rank with less data still joins the collective backward, with a zero loss.
        zero = sum(p.sum() * 0.0 for p in policy.model.parameters() if p.requires_grad)
        return zero, {}
    b = batch.to(policy.device)
    temperature = ctx.temperature
    trained = b.mask.bool()  # (B, L-1): the trained positions, the only ones any term below reads
    logits, logp = _trained_logprobs(policy, policy.ds_engine, b, temperature)  # (N, V), (B, L-1)

    # ---- behaviour (engine) vs trainer: the PPO "old" log-probs and the importance weights ----
    proximal = _proximal_rows(ctx.proximal, b) if ctx.proximal is not None else None
    if proximal is None and first_pass:
        proximal = logp.detach()
    out: dict[str, float] = {}
    old, advantages = b.old_logprobs, b.advantages
    if proximal is not None:
        weights, tis_metrics = truncated_is_weights(proximal, b.old_logprobs, b.mask, cfg.algo.tis.cap)
        keep = tis_metrics if ctx.tis else {k: v for k, v in tis_metrics.items() if "mismatch" in k}
        out.update({k: float(v) for k, v in keep.items()})
        if ctx.tis:
            # ppo_clip/reinforce are linear in the advantage per token: weighting it weights the loss.
            old, advantages = proximal, b.advantages * weights

    loss, metrics = ctx.loss_fn(logp, old, advantages, b.mask, totals, cfg.algo.policy_loss)
    out.update({k: float(v) for k, v in metrics.items()})
    # Per trained token of this micro-batch (update() averages micro-batches by their token counts).
    per_token = totals.tokens / max(1, b.num_tokens)
    out["policy_loss"] = float(loss.detach()) * per_token
    if cfg.algo.entropy_coef != 0:
        entropy = _scatter(entropy_from_logits(logits.float() / temperature), trained)  # (B, L-1)
        loss = loss - cfg.algo.entropy_coef * ctx.aggregate(entropy, b.mask, totals)
        out["entropy"] = float(masked_mean(entropy.detach(), b.mask))
    else:
        with torch.no_grad():  # metric only
            picked = logits.detach().float()
            picked = picked / temperature if temperature != 1.0 else picked
            out["entropy"] = float(entropy_from_logits(picked).mean()) if picked.numel() else 0.0
    if cfg.algo.kl.enabled:
        ref_logp = _reference_logprobs(policy, b, temperature)
        kl_loss, kl_m = kl_penalty(logp, ref_logp, b.mask, totals, cfg.algo.kl, ctx.kl_coef)
        loss = loss + kl_loss
        out["kl"] = float(kl_m["kl"])
    out["loss"] = float(loss.detach()) * per_token  # what is minimised: + KL penalty - entropy bonus
    # DeepSpeed averages gradients over ranks; the totals are global, so undo the average.
    return loss * ctx.world.size, out


def _has_advantage(sample: Sample) -> bool:
    """Whether any token of ``sample`` has a non-zero advantage (else its policy gradient is zero)."""
    return any(a != 0 for a in (sample.advantages or []))


@torch.no_grad()  # a score, not a loss: an autograd graph here would be kept alive with every row
def proximal_logprobs(
    cfg: Config, policy: Policy, trajectories: list[Trajectory], temperature: float, needs_all: bool
) -> dict[int, torch.Tensor]:
    """The trainer's log-probs (T = ``temperature``) before the update of every sample the update
    will train (``needs_all``: every sample, else those with a non-zero advantage), by
    ``id(sample)``: row ``t`` holds token ``t+1``, as in a micro-batch. Plain tensors (no grad)."""
    samples = [s for t in trajectories for s in t.samples if sum(s.loss_mask)]
    if not needs_all:  # zero-advantage samples are skipped by the update: no need to score them
        samples = [s for s in samples if _has_advantage(s)]
    out: dict[int, torch.Tensor] = {}
    for micro in pack_micro_batches(samples, cfg.train.micro_batch_tokens, policy.tokenizer.pad_token_id):
        logp = (
            _trained_logprobs(policy, policy.ds_engine, micro.to(policy.device), temperature)[1].float().cpu()
        )
        for row, index in enumerate(micro.sample_index):
            out[id(samples[index])] = logp[row, : len(samples[index].token_ids) - 1]
    return out


def _proximal_rows(proximal: dict[int, torch.Tensor], b: MicroBatch) -> torch.Tensor:
    """The pre-update log-probs of micro-batch ``b``'s samples as a (B, L-1) tensor like ``b.mask``."""
    rows = torch.zeros_like(b.old_logprobs)
    for row, sample in enumerate(b.samples):
        values = proximal[id(sample)]
        rows[row, : values.numel()] = values.to(rows.device)
    return rows


@torch.no_grad()
def _reference_logprobs(policy: Policy, b: MicroBatch, temperature: float) -> torch.Tensor:
    """The frozen reference's log-probs (B, L-1) at the trained positions (0 elsewhere)."""
    if policy.reference is not None:
        return _trained_logprobs(policy, policy.reference, b, temperature)[1]
    with policy.model.disable_adapter():  # LoRA: the base model is the policy with its adapters off
        return _trained_logprobs(policy, policy.model, b, temperature)[1]


def _trained_logprobs(
    policy: Policy, model: object, b: MicroBatch, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s logits (N, V) at the trained positions of ``b`` and the log-probs of their
    tokens laid out as ``b.mask`` (B, L-1), zero elsewhere; forward in the policy's precision."""
    trained = b.mask.bool()
    with policy.precision():
        logits = policy.logits_at(model, b.input_ids, b.attention_mask, trained)
    logp = token_logprobs(logits[None], b.targets[trained][None], temperature)[0]
    return logits, _scatter(logp, trained)


def _scatter(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Values (N,) of the kept positions laid out as ``keep`` (B, L-1), zero elsewhere."""
    out = values.new_zeros(keep.shape)
    out[keep] = values
    return out
