"""Policy losses, loss aggregations and KL estimators: pure tensor functions in name registries.

Shapes: ``B`` sequences (rows of a micro-batch), ``L`` positions, ``V`` vocabulary. ``mask`` (B, L)
is 1 exactly on the tokens the policy sampled (the loss mask), 0 elsewhere (prompt, observations,
padding). All per-token tensors are aligned: position ``j`` holds the log-prob of token ``j``.

Registries (the trainer looks names up, never branches on them):

- ``AGGREGATIONS[name](values, mask, totals) -> scalar``
- ``POLICY_LOSSES[name](logp, old_logp, advantages, mask, totals, params) -> (loss, metrics)``
- ``KL_ESTIMATORS[name](logp, ref_logp) -> (B, L)``

Aggregations divide by ``LossTotals`` of the whole *mini-batch* (one optimizer step), not of the
micro-batch at hand, so the losses of the micro-batches sum to the mini-batch loss: the trainer just
calls ``backward`` on each micro-batch loss and steps once. Formulas and references:
docs/algorithms.md.

May import: rollout, envs, models, suggest, seeds (the stages below agentrl.algorithms; lint-imports
checks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from agentrl.suggest import lookup

# ---------------------------------------------------------------------------------------------------
# parameters


@dataclass
class LossTotals:
    """Normalisers over the whole mini-batch, so that micro-batch losses sum to the mini-batch loss."""

    tokens: int
    """Number of loss-mask tokens in the mini-batch."""
    sequences: int
    """Number of sequences in the mini-batch."""
    max_tokens: int
    """Dr.GRPO's constant normaliser (``seq_sum_constant``): e.g. the configured max response tokens."""

    @classmethod
    def from_mask(cls, mask: Tensor, max_tokens: int | None = None) -> LossTotals:
        """Totals of a whole mini-batch given its (B, L) mask; ``max_tokens`` defaults to ``L``."""
        return cls(
            tokens=int(mask.sum()),
            sequences=int(mask.shape[0]),
            max_tokens=int(mask.shape[-1] if max_tokens is None else max_tokens),
        )


@dataclass
class PolicyLossParams:
    """The policy-gradient loss (config section ``loss``)."""

    loss: str = "ppo_clip"
    """Name in ``POLICY_LOSSES``: ``ppo_clip`` or ``reinforce``."""
    clip_low: float = 0.2
    """``ppo_clip``: the ratio is clipped below at ``1 - clip_low``."""
    clip_high: float = 0.28
    """``ppo_clip``: the ratio is clipped above at ``1 + clip_high`` (DAPO clip-higher; 0.2 = symmetric PPO)."""
    dual_clip: float | None = None
    """``ppo_clip``: dual-clip constant ``c > 1``; for negative advantages the per-token loss is capped
    at ``-c * A``. ``None`` disables it."""
    aggregation: str = "token_mean"
    """Name in ``AGGREGATIONS``: ``token_mean``, ``seq_mean`` or ``seq_sum_constant`` (Dr.GRPO)."""

    def __post_init__(self) -> None:
        if not (0.0 <= self.clip_low < 1.0 and self.clip_high >= 0.0):
            raise ValueError(
                f"need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}"
            )
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"loss.dual_clip must be > 1 or None, got {self.dual_clip}")


@dataclass
class KLParams:
    """The KL penalty to the reference policy (config section ``kl``). Off by default: R1-Zero style
    runs use no or a tiny KL; the trainer needs a reference model only when a coefficient is > 0."""

    estimator: str = "k3"
    """Name in ``KL_ESTIMATORS``: ``k1``, ``k2`` or ``k3``."""
    coef: float = 0.0
    """KL coefficient at step 0 (and throughout with ``schedule: constant``)."""
    schedule: str = "constant"
    """``constant`` or ``cosine`` (anneal from ``coef`` to ``final_coef`` over the run)."""
    final_coef: float = 0.0
    """``cosine``: the coefficient at the last step."""
    aggregation: str = "token_mean"
    """Name in ``AGGREGATIONS`` used to reduce the per-token KL to the loss term."""

    def __post_init__(self) -> None:
        if self.schedule not in KL_SCHEDULES:
            raise ValueError(f"unknown kl.schedule {self.schedule!r}. Valid: {', '.join(KL_SCHEDULES)}.")
        if self.coef < 0 or self.final_coef < 0:
            raise ValueError("kl.coef and kl.final_coef must be >= 0")

    @property
    def enabled(self) -> bool:
        """Whether the KL term is ever non-zero (and a reference model is needed)."""
        return self.coef > 0 or (self.schedule != "constant" and self.final_coef > 0)


KL_SCHEDULES = ("constant", "cosine")


@dataclass
class TISParams:
    """Truncated importance sampling against the rollout engine (config section ``algo.tis``).

    The engine that sampled (the behaviour policy) and the trainer compute slightly different
    log-probs for the same weights (other kernels, bf16). The update then treats the trainer's own
    log-probs before the update as the PPO "old" policy and weights each token's loss by
    ``min(pi_trainer_old / pi_engine, cap)``, so the gradient is that of the trainer's policy even
    though the engine drew the samples (Yao et al. 2025, "off-policy RL in disguise")."""

    mode: str = "auto"
    """``auto`` (on when the engine's numerics differ from the trainer's: vLLM; off for the ``hf``
    engine, which samples with the trainer's own module), ``on`` or ``off``."""
    cap: float = 2.0
    """The largest importance weight; tokens the engine made far likelier than the trainer would
    are kept, with a bounded weight (truncation, not masking)."""

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "on", "off"):
            raise ValueError(f"algo.tis.mode must be auto, on or off, got {self.mode!r}")
        if not self.cap >= 1.0:
            raise ValueError(f"algo.tis.cap must be >= 1 (1 keeps only down-weighting), got {self.cap}")

    def enabled(self, same_numerics: bool) -> bool:
        """Whether to correct, given whether the engine shares the trainer's numerics."""
        return self.mode == "on" or (self.mode == "auto" and not same_numerics)


def truncated_is_weights(
    proximal_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token weights ``min(exp(proximal - behaviour), cap)`` (B, L), detached; 0 off the mask.

    ``proximal_logp``: the trainer's log-probs before the update; ``behaviour_logp``: the engine's.
    Metrics (masked): ``is_weight_mean``, ``is_weight_max``, ``is_truncated_fraction`` (share of
    tokens at the cap), ``logprob_mismatch_mean`` / ``logprob_mismatch_max`` (|proximal - behaviour|).
    """
    with torch.no_grad():
        log_w = (proximal_logp - behaviour_logp).detach()
        weights = torch.exp(log_w.clamp(max=math.log(cap))) * mask
        on = mask.bool()
        gap = log_w.abs()
        metrics = {
            "is_weight_mean": masked_mean(weights, mask),
            "is_weight_max": weights[on].max() if on.any() else weights.new_zeros(()),
            "is_truncated_fraction": masked_mean((log_w >= math.log(cap)).to(weights.dtype), mask),
            "logprob_mismatch_mean": masked_mean(gap, mask),
            "logprob_mismatch_max": gap[on].max() if on.any() else gap.new_zeros(()),
        }
    return weights, metrics


def kl_coef_at(params: KLParams, step: int, total_steps: int) -> float:
    """The KL coefficient at ``step`` (0-based) of ``total_steps``.

    ``constant``: ``coef``. ``cosine``: ``final + (coef - final) * (1 + cos(pi * step / total)) / 2``,
    i.e. ``coef`` at step 0, the midpoint at ``total/2``, ``final_coef`` from ``total_steps`` on.
    """
    if params.schedule == "constant" or total_steps <= 0:
        return float(params.coef)
    if params.schedule == "cosine":
        frac = min(max(step, 0), total_steps) / total_steps
        return float(
            params.final_coef + (params.coef - params.final_coef) * 0.5 * (1 + math.cos(math.pi * frac))
        )
    raise ValueError(f"unknown kl.schedule {params.schedule!r}. Valid: {', '.join(KL_SCHEDULES)}.")


# ---------------------------------------------------------------------------------------------------
# aggregations: fn(values (B, L), mask (B, L), totals) -> scalar

Aggregation = Callable[[Tensor, Tensor, LossTotals], Tensor]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Scalar mean of ``values`` over the tokens where ``mask`` is 1 (0 if there are none)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def token_mean(values: Tensor, mask: Tensor, totals: LossTotals) -> Tensor:
    """``sum(v * m) / totals.tokens``: every token of the mini-batch weighs the same (DAPO)."""
    return (values * mask.to(values.dtype)).sum() / max(totals.tokens, 1)


def seq_mean(values: Tensor, mask: Tensor, totals: LossTotals) -> Tensor:
    """``sum_i mean_{masked j} v_ij / totals.sequences``: every sequence weighs the same (GRPO paper).

    A sequence with no masked token contributes 0 (it still counts in ``totals.sequences``)."""
    m = mask.to(values.dtype)
    per_seq = (values * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per_seq.sum() / max(totals.sequences, 1)


def seq_sum_constant(values: Tensor, mask: Tensor, totals: LossTotals) -> Tensor:
    """Dr.GRPO: ``sum(v * m) / (totals.sequences * totals.max_tokens)``, a constant normaliser that
    does not depend on the lengths of the replies."""
    return (values * mask.to(values.dtype)).sum() / max(totals.sequences * totals.max_tokens, 1)


AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": token_mean,
    "seq_mean": seq_mean,
    "seq_sum_constant": seq_sum_constant,
}
"""Loss aggregations by name; all ``fn(values (B, L), mask (B, L), totals) -> scalar``."""


def get_aggregation(name: str) -> Aggregation:
    """The aggregation registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(AGGREGATIONS, name, "loss aggregation")


# ---------------------------------------------------------------------------------------------------
# KL estimators: fn(logp (B, L), ref_logp (B, L)) -> (B, L)

KLEstimator = Callable[[Tensor, Tensor], Tensor]

_K3_LOG_RATIO_LIMIT = 20.0


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = ``logp - ref_logp`` = log(pi / ref): unbiased for KL(pi || ref) on samples of pi, can be < 0."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ``0.5 * (logp - ref_logp)^2``: low variance, biased, >= 0."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = ``ref/pi - log(ref/pi) - 1`` = ``exp(d) - d - 1`` with ``d = ref_logp - logp``: unbiased,
    low variance, always >= 0. ``d`` is clamped to +-20 so ``exp`` cannot overflow."""
    d = (ref_logp - logp).clamp(-_K3_LOG_RATIO_LIMIT, _K3_LOG_RATIO_LIMIT)
    return torch.exp(d) - d - 1


KL_ESTIMATORS: dict[str, KLEstimator] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""Per-token KL estimators by name; all ``fn(logp (B, L), ref_logp (B, L)) -> (B, L)``."""


def get_kl_estimator(name: str) -> KLEstimator:
    """The KL estimator registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(KL_ESTIMATORS, name, "KL estimator")


def kl_penalty(
    logp: Tensor, ref_logp: Tensor, mask: Tensor, totals: LossTotals, params: KLParams, coef: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The KL loss term ``coef * aggregate(kl(logp, ref_logp))`` and metrics.

    ``coef`` is ``kl_coef_at(params, step, total_steps)``. Returns ``(loss scalar, {"kl": masked mean
    of the per-token KL over this micro-batch, detached})``.
    """
    kl = get_kl_estimator(params.estimator)(logp, ref_logp)
    loss = coef * get_aggregation(params.aggregation)(kl, mask, totals)
    return loss, {"kl": masked_mean(kl.detach(), mask)}


# ---------------------------------------------------------------------------------------------------
# policy losses: fn(logp, old_logp, advantages, mask, totals, params) -> (loss, metrics)

PolicyLoss = Callable[
    [Tensor, Tensor, Tensor, Tensor, LossTotals, PolicyLossParams], tuple[Tensor, dict[str, Tensor]]
]


def _ratio_metrics(logp: Tensor, old_logp: Tensor, mask: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        log_ratio = logp.detach() - old_logp
        return {
            "approx_kl": masked_mean(kl_k3(logp.detach(), old_logp), mask),
            "ratio_mean": masked_mean(torch.exp(log_ratio), mask),
        }


def ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    totals: LossTotals,
    params: PolicyLossParams,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric clipping (DAPO clip-higher) and optional dual clip.

    Per token, with ``ratio = exp(logp - old_logp)`` and ``A`` the advantage::

        loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))
        loss = min(loss, -A * dual_clip)            where A < 0, if dual_clip is set

    aggregated with ``params.aggregation``. All inputs (B, L); ``old_logp`` and ``advantages`` carry
    no gradient. Metrics (detached scalars, masked means over this micro-batch): ``clip_fraction``
    (share of tokens where the clipped branch is the one taken, i.e. with zero gradient),
    ``clip_fraction_low`` / ``clip_fraction_high`` (of those, ratio below / above the range),
    ``dual_clip_fraction``, ``approx_kl`` (k3 of the old policy to the current one), ``ratio_mean``.
    """
    old_logp = old_logp.detach()
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp)
    low, high = 1.0 - params.clip_low, 1.0 + params.clip_high
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(low, high)
    per_token = torch.maximum(loss_unclipped, loss_clipped)
    clipped = loss_clipped > loss_unclipped
    dual = torch.zeros_like(clipped)
    if params.dual_clip is not None:
        cap = -advantages * params.dual_clip
        dual = (advantages < 0) & (per_token > cap)
        per_token = torch.where(dual, cap, per_token)
    loss = get_aggregation(params.aggregation)(per_token, mask, totals)
    with torch.no_grad():
        r = ratio.detach()
        metrics = {
            "clip_fraction": masked_mean((clipped | dual).to(r.dtype), mask),
            "clip_fraction_low": masked_mean((clipped & (r < low)).to(r.dtype), mask),
            "clip_fraction_high": masked_mean((clipped & (r > high)).to(r.dtype), mask),
            "dual_clip_fraction": masked_mean(dual.to(r.dtype), mask),
            **_ratio_metrics(logp, old_logp, mask),
        }
    return loss, metrics


def reinforce(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    totals: LossTotals,
    params: PolicyLossParams,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Vanilla policy gradient: per-token ``-A * logp``, aggregated with ``params.aggregation``.

    No importance ratio or clipping (strictly on-policy). ``old_logp`` is used only for the metrics
    ``approx_kl`` and ``ratio_mean``; ``clip_fraction`` is always 0 (present so logs line up)."""
    per_token = -advantages.detach() * logp
    loss = get_aggregation(params.aggregation)(per_token, mask, totals)
    metrics = {
        "clip_fraction": torch.zeros((), dtype=logp.dtype),
        **_ratio_metrics(logp, old_logp.detach(), mask),
    }
    return loss, metrics


POLICY_LOSSES: dict[str, PolicyLoss] = {"ppo_clip": ppo_clip, "reinforce": reinforce}
"""Policy losses by name; all ``fn(logp, old_logp, advantages, mask, totals, params) -> (loss, metrics)``."""


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    return lookup(POLICY_LOSSES, name, "policy loss")


# ---------------------------------------------------------------------------------------------------
# entropy from logits (the log-prob of a token: agentrl.rollout.logprobs.token_logprobs)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """(B, L) entropy of ``softmax(logits)`` over the last dim, for logits (B, L, V).

    ``H = logsumexp(z) - sum(softmax(z) * z)``: stable for large logits (no ``log(0)``). Half
    precision logits are upcast to float32.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.einsum("...v,...v->...", probs, logits)
