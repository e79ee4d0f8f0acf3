"""Losses, aggregations and KL estimators against hand-computed numbers (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.algorithms.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    KLParams,
    LossTotals,
    PolicyLossParams,
    entropy_from_logits,
    get_aggregation,
    get_kl_estimator,
    get_policy_loss,
    kl_coef_at,
    kl_penalty,
)
from agentrl.rollout.logprobs import token_logprobs

LN = math.log

# values [[1, 2, 3], [4, 5, 6]], mask [[1, 1, 0], [1, 0, 0]]: masked values 1, 2 | 4
VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])
TOTALS = LossTotals(tokens=3, sequences=2, max_tokens=4)


def test_totals_from_mask() -> None:
    assert LossTotals.from_mask(MASK) == LossTotals(tokens=3, sequences=2, max_tokens=3)
    assert LossTotals.from_mask(MASK, max_tokens=128).max_tokens == 128


def test_token_mean() -> None:
    # (1 + 2 + 4) / 3 tokens = 7/3
    assert AGGREGATIONS["token_mean"](VALUES, MASK, TOTALS).item() == pytest.approx(7 / 3)


def test_seq_mean() -> None:
    # ((1 + 2)/2 + 4/1) / 2 sequences = (1.5 + 4) / 2 = 2.75
    assert AGGREGATIONS["seq_mean"](VALUES, MASK, TOTALS).item() == pytest.approx(2.75)


def test_seq_sum_constant() -> None:
    # (1 + 2 + 4) / (2 sequences * 4 max tokens) = 7/8
    assert AGGREGATIONS["seq_sum_constant"](VALUES, MASK, TOTALS).item() == pytest.approx(0.875)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_micro_batches_sum_to_mini_batch(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 9, generator=g)
    mask = (torch.rand(6, 9, generator=g) < 0.6).long()
    mask[2] = 0  # a sequence with no sampled token
    totals = LossTotals.from_mask(mask, max_tokens=12)
    agg = AGGREGATIONS[name]
    whole = agg(values, mask, totals)
    split = agg(values[:4], mask[:4], totals) + agg(values[4:], mask[4:], totals)
    assert split.item() == pytest.approx(whole.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_loss_micro_batches_sum(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(4, 5, generator=g)
    old = logp + 0.3 * torch.randn(4, 5, generator=g)
    adv = torch.randn(4, 5, generator=g)
    mask = (torch.rand(4, 5, generator=g) < 0.7).long()
    totals = LossTotals.from_mask(mask)
    params = PolicyLossParams(loss=name)
    fn = POLICY_LOSSES[name]
    whole, _ = fn(logp, old, adv, mask, totals, params)
    a, _ = fn(logp[:1], old[:1], adv[:1], mask[:1], totals, params)
    b, _ = fn(logp[1:], old[1:], adv[1:], mask[1:], totals, params)
    assert (a + b).item() == pytest.approx(whole.item(), abs=1e-6)


def _ppo_case() -> tuple[torch.Tensor, ...]:
    # five tokens; the last one is masked out (its huge ratio must not matter)
    #   t1: ratio 1.5, A = +1  -> unclipped -1.5, clipped -1.28 -> max -1.28  (clipped high)
    #   t2: ratio 0.5, A = -1  -> unclipped  0.5, clipped  0.8  -> max  0.8   (clipped low)
    #   t3: ratio 1.0, A = +2  -> -2 both                       -> -2         (not clipped)
    #   t4: ratio 0.5, A = +1  -> unclipped -0.5, clipped -0.8  -> max -0.5   (outside the range, not clipped)
    #   t5: ratio 10,  A = +1, mask 0
    old = torch.full((1, 5), LN(0.5))
    logp = old + torch.tensor([[LN(1.5), LN(0.5), 0.0, LN(0.5), LN(10.0)]])
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return logp, old, adv, mask


def test_ppo_clip_both_sides() -> None:
    logp, old, adv, mask = _ppo_case()
    logp.requires_grad_(True)
    params = PolicyLossParams(clip_low=0.2, clip_high=0.28)
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, LossTotals.from_mask(mask), params)
    # token_mean: (-1.28 + 0.8 - 2 - 0.5) / 4 = -2.98 / 4 = -0.745
    assert loss.item() == pytest.approx(-0.745, abs=1e-6)
    # clipped branch taken on t1 and t2: 2/4; t1 above the range, t2 below
    assert m["clip_fraction"].item() == pytest.approx(0.5)
    assert m["clip_fraction_high"].item() == pytest.approx(0.25)
    assert m["clip_fraction_low"].item() == pytest.approx(0.25)
    assert m["dual_clip_fraction"].item() == 0.0
    # ratio mean (1.5 + 0.5 + 1 + 0.5) / 4 = 0.875
    assert m["ratio_mean"].item() == pytest.approx(0.875)
    # approx_kl = mean k3 with d = old - logp = -log r: 1/r + log r - 1
    #   t1: 1/1.5 + ln 1.5 - 1 = 0.666667 + 0.405465 - 1 = 0.072132
    #   t2, t4: 2 + ln 0.5 - 1 = 0.306853;  t3: 0  -> (0.072132 + 2*0.306853) / 4 = 0.171460
    assert m["approx_kl"].item() == pytest.approx(0.171460, abs=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    # gradient: clipped tokens have none; t3: d(-2 r)/dlogp / 4 = -2*1/4 = -0.5; t4: -1*0.5/4 = -0.125
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, 0.0, -0.5, -0.125, 0.0]]), atol=1e-6)


def test_ppo_clip_symmetric_and_other_aggregation() -> None:
    logp, old, adv, mask = _ppo_case()
    # clip_high 0.2: t1 -> -1.2; seq_sum_constant with 1 sequence x 8 max tokens:
    #   (-1.2 + 0.8 - 2 - 0.5) / 8 = -2.9 / 8 = -0.3625
    params = PolicyLossParams(clip_high=0.2, aggregation="seq_sum_constant")
    loss, _ = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, LossTotals(4, 1, 8), params)
    assert loss.item() == pytest.approx(-0.3625, abs=1e-6)


def test_ppo_dual_clip() -> None:
    # ratio 4, A = -1: unclipped 4, clipped 1.28 -> max 4 -> dual clip caps at -A*c = 3
    # ratio 2, A = -1: 2 < 3, untouched;  ratio 4, A = +1: -1.28 (dual clip only for A < 0)
    old = torch.zeros(1, 3)
    logp = torch.tensor([[LN(4.0), LN(2.0), LN(4.0)]])
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    mask = torch.ones(1, 3)
    params = PolicyLossParams(dual_clip=3.0, aggregation="seq_sum_constant")
    loss, m = POLICY_LOSSES["ppo_clip"](logp, old, adv, mask, LossTotals(3, 1, 1), params)
    # sum: 3 + 2 - 1.28 = 3.72
    assert loss.item() == pytest.approx(3.72, abs=1e-6)
    assert m["dual_clip_fraction"].item() == pytest.approx(1 / 3)
    assert m["clip_fraction"].item() == pytest.approx(2 / 3)  # t1 (dual) and t3 (clipped high)


def test_reinforce() -> None:
    # per-token -A * logp with logp ln .5, ln .25 and A 1, -2; token_mean over 2 tokens
    logp = torch.tensor([[LN(0.5), LN(0.25)]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, m = POLICY_LOSSES["reinforce"](
        logp, logp.detach(), adv, mask, LossTotals(2, 1, 2), PolicyLossParams()
    )
    # per token: -1*ln.5 = 0.693147; 2*ln.25 = -2.772589; mean = -1.039721
    assert loss.item() == pytest.approx((LN(2) + 2 * LN(0.25)) / 2, abs=1e-6)
    assert m["clip_fraction"].item() == 0.0 and m["ratio_mean"].item() == pytest.approx(1.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, 1.0]]))


def test_kl_estimators() -> None:
    # logp = ln .5, ref = ln .25
    #   k1 = ln .5 - ln .25 = ln 2 = 0.693147
    #   k2 = 0.5 * (ln 2)^2 = 0.240227
    #   k3: d = ref - logp = -ln 2; exp(d) - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    logp, ref = torch.tensor([[LN(0.5)]]), torch.tensor([[LN(0.25)]])
    assert KL_ESTIMATORS["k1"](logp, ref).item() == pytest.approx(0.693147, abs=1e-6)
    assert KL_ESTIMATORS["k2"](logp, ref).item() == pytest.approx(0.240227, abs=1e-6)
    assert KL_ESTIMATORS["k3"](logp, ref).item() == pytest.approx(0.193147, abs=1e-6)
    # k3 >= 0 everywhere, 0 at equality, finite for extreme differences
    x = torch.linspace(-50, 50, 101)
    k3 = KL_ESTIMATORS["k3"](x, torch.zeros_like(x))
    assert (k3 >= 0).all() and torch.isfinite(k3).all() and k3[50].item() == 0.0


def test_kl_penalty() -> None:
    # k1 over tokens ln 2 (masked) and 5 (mask 0): token_mean = ln 2 / 1; times coef 0.1
    logp = torch.tensor([[LN(0.5), 5.0]])
    ref = torch.tensor([[LN(0.25), 0.0]])
    mask = torch.tensor([[1, 0]])
    loss, m = kl_penalty(logp, ref, mask, LossTotals(1, 1, 2), KLParams(estimator="k1"), coef=0.1)
    assert loss.item() == pytest.approx(0.1 * LN(2), abs=1e-6)
    assert m["kl"].item() == pytest.approx(LN(2), abs=1e-6)


def test_kl_coef_schedule() -> None:
    p = KLParams(coef=1e-3, schedule="cosine", final_coef=0.0)
    # final + (coef - final) * (1 + cos(pi * s/T)) / 2 with T = 100
    assert kl_coef_at(p, 0, 100) == pytest.approx(1e-3)  # cos 0 = 1
    assert kl_coef_at(p, 25, 100) == pytest.approx(1e-3 * (1 + math.sqrt(0.5)) / 2)  # 8.5355e-4
    assert kl_coef_at(p, 50, 100) == pytest.approx(5e-4)  # cos(pi/2) = 0
    assert kl_coef_at(p, 100, 100) == pytest.approx(0.0, abs=1e-15)  # cos pi = -1
    assert kl_coef_at(p, 150, 100) == pytest.approx(0.0, abs=1e-15)  # held after the end
    up = KLParams(coef=0.0, schedule="cosine", final_coef=0.2)
    assert kl_coef_at(up, 50, 100) == pytest.approx(0.1)
    assert kl_coef_at(KLParams(coef=0.05), 70, 100) == 0.05
    assert not KLParams().enabled and p.enabled and up.enabled
    with pytest.raises(ValueError, match="schedule"):
        KLParams(schedule="linear")


def test_token_logprobs_hand_values() -> None:
    # logits [0, ln 3]: softmax [1/4, 3/4]. At T = 0.5: [0, 2 ln 3] = [0, ln 9] -> [1/10, 9/10].
    logits = torch.tensor([[[0.0, LN(3)], [0.0, LN(3)]]])
    targets = torch.tensor([[1, 0]])
    assert torch.allclose(token_logprobs(logits, targets), torch.tensor([[LN(0.75), LN(0.25)]]))
    assert torch.allclose(token_logprobs(logits, targets, 0.5), torch.tensor([[LN(0.9), LN(0.1)]]))
    assert torch.allclose(token_logprobs(logits, targets, 0.0), token_logprobs(logits, targets, 1.0))


def test_token_logprobs_matches_manual() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g) * 4
    targets = torch.randint(0, 5, (2, 3), generator=g)
    out = token_logprobs(logits, targets, temperature=0.7)
    for b in range(2):
        for j in range(3):
            z = [v / 0.7 for v in logits[b, j].tolist()]
            manual = z[targets[b, j]] - math.log(sum(math.exp(v) for v in z))
            assert out[b, j].item() == pytest.approx(manual, abs=1e-5)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(out, ref, atol=1e-6)
    half = token_logprobs(logits.to(torch.bfloat16), targets, 0.7)
    assert half.dtype == torch.float32
    with pytest.raises(ValueError):
        token_logprobs(logits, targets[:, :2])


def test_token_logprobs_gradient() -> None:
    # d logp(target) / d logits = onehot - softmax, divided by T
    logits = torch.tensor([[[0.0, LN(3)]]], requires_grad=True)
    token_logprobs(logits, torch.tensor([[1]])).sum().backward()
    assert torch.allclose(logits.grad, torch.tensor([[[-0.25, 0.25]]]))


def test_entropy() -> None:
    # uniform over V = 7: ln 7
    assert entropy_from_logits(torch.zeros(2, 3, 7)).allclose(torch.full((2, 3), LN(7)))
    # [1/4, 3/4]: -(.25 ln .25 + .75 ln .75) = 0.346574 + 0.215762 = 0.562335
    assert entropy_from_logits(torch.tensor([[[0.0, LN(3)]]])).item() == pytest.approx(0.562335, abs=1e-6)
    # huge logits: one-hot, entropy 0, no NaN
    big = entropy_from_logits(torch.tensor([[[1e4, 0.0, -1e4]]]))
    assert torch.isfinite(big).all() and big.item() == pytest.approx(0.0, abs=1e-6)


def test_lookup_errors() -> None:
    with pytest.raises(ValueError, match=r"Did you mean 'ppo_clip'\?.*Valid: ppo_clip, reinforce"):
        get_policy_loss("ppo_clp")
    with pytest.raises(ValueError, match=r"Did you mean 'k3'\?"):
        get_kl_estimator("K3")
    with pytest.raises(ValueError, match=r"Valid: seq_mean, seq_sum_constant, token_mean"):
        get_aggregation("mean")
    with pytest.raises(ValueError, match="aggregation 'tok'"):
        POLICY_LOSSES["ppo_clip"](*_ppo_case(), LossTotals(4, 1, 5), PolicyLossParams(aggregation="tok"))
    with pytest.raises(ValueError, match="dual_clip"):
        PolicyLossParams(dual_clip=0.5)


# ---------------------------------------------------------------- truncated importance sampling


def test_truncated_is_weights_by_hand():
    from agentrl.algorithms.losses import TISParams, truncated_is_weights

    proximal = torch.tensor([[-1.0, -2.0, -0.2, -3.0]])
    behaviour = torch.tensor([[-1.5, -1.0, -1.2, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    weights, m = truncated_is_weights(proximal, behaviour, mask, cap=2.0)
    # exp(0.5), exp(-1), exp(1) capped at 2, masked out
    torch.testing.assert_close(weights, torch.tensor([[1.6487213, 0.3678794, 2.0, 0.0]]))
    assert float(m["is_weight_mean"]) == pytest.approx((1.6487213 + 0.3678794 + 2.0) / 3)
    assert float(m["is_weight_max"]) == pytest.approx(2.0)
    assert float(m["is_truncated_fraction"]) == pytest.approx(1 / 3)
    assert float(m["logprob_mismatch_mean"]) == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert float(m["logprob_mismatch_max"]) == pytest.approx(1.0)  # the masked 2.9 does not count
    assert TISParams().enabled(same_numerics=False) and not TISParams().enabled(same_numerics=True)
    assert TISParams(mode="on").enabled(True) and not TISParams(mode="off").enabled(False)
    with pytest.raises(ValueError, match="cap must be >= 1"):
        TISParams(cap=0.5)
    with pytest.raises(ValueError, match="auto, on or off"):
        TISParams(mode="always")
