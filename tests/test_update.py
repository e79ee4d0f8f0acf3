"""The update through ``update``: the behaviour-policy correction, logits at trained positions
only, and bf16 autocast.

The rollout log-probs are set to the trainer's own minus a known shift, as an engine with other
kernels would give: the importance weights must then be ``exp(shift)`` (or the cap) on every token,
also on the second mini-batch, after an optimizer step has moved the weights.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from agentrl.config import load_config
from agentrl.rollout.logprobs import token_logprobs
from agentrl.rollout.trajectory import Sample, Trajectory
from agentrl.training.distributed import init_distributed
from agentrl.training.policy import autocast_for, build_policy, engine_dtype_for, split_lm
from agentrl.training.update import update


def _batch(model: torch.nn.Module, shift: float, n: int = 4, length: int = 40) -> list[Trajectory]:
    """``n`` one-sample episodes: a 10-token prompt, then sampled tokens whose stored log-probs are
    the model's own minus ``shift``; advantages +1 / -1 by episode."""
    rng = random.Random(0)
    trajectories = []
    for e in range(n):
        ids = [rng.randrange(3, 500) for _ in range(length)]
        mask = [0] * 10 + [1] * (length - 10)
        with torch.no_grad():
            x = torch.tensor([ids])
            own = token_logprobs(model(input_ids=x).logits[:, :-1], x[:, 1:])[0].tolist()
        logprobs = [0.0] + [(lp - shift) if m else 0.0 for lp, m in zip(own, mask[1:])]
        adv = [(1.0 if e % 2 else -1.0) * m for m in mask]
        sample = Sample(token_ids=ids, loss_mask=mask, logprobs=logprobs, advantages=adv)
        trajectories.append(Trajectory(env="t", seed=e, group=e // 2, samples=[sample]))
    return trajectories


@pytest.fixture(scope="module")
def world():
    return init_distributed("cpu")


def _policy(*sets: str):
    # Exact float32 numerics (no bf16 autocast on CPUs that have it): log-probs compare to 1e-4.
    cfg = load_config(
        env="sokoban",
        model="tiny-random",
        overrides=["train.lr=1e-2", "engine.name=hf", "train.autocast=off", *sets],
    )
    return cfg, build_policy(cfg, torch.device("cpu"))


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_weights_are_the_exponentiated_gap_on_every_mini_batch(world, mini_batches):
    cfg, policy = _policy(f"algo.mini_batches={mini_batches}", "rollout.group_size=2", "train.n_groups=2")
    out = update(cfg, policy, _batch(policy.model, 0.1), 1, world, 1.0, behaviour_is=True)
    # The trainer's log-probs before the update exceed the engine's by 0.1 on every sampled token.
    assert out["train/is_weight_mean"] == pytest.approx(math.exp(0.1), abs=1e-4)
    assert out["train/is_weight_max"] == pytest.approx(math.exp(0.1), abs=1e-4)
    assert out["train/logprob_mismatch_mean"] == pytest.approx(0.1, abs=1e-4)
    assert out["train/logprob_mismatch_max"] == pytest.approx(0.1, abs=1e-4)
    assert out["train/is_truncated_fraction"] == 0.0
    # One pass from the pre-update policy: its own ratio is 1, nothing clipped.
    if mini_batches == 1:
        assert out["train/clip_fraction"] == 0.0


def test_weights_stop_at_the_cap(world):
    cfg, policy = _policy("algo.tis.cap=1.05")
    out = update(cfg, policy, _batch(policy.model, 0.1), 1, world, 1.0, behaviour_is=True)
    assert out["train/is_weight_mean"] == pytest.approx(1.05, abs=1e-6)
    assert out["train/is_truncated_fraction"] == 1.0


def test_without_correction_the_mismatch_is_still_logged(world):
    cfg, policy = _policy()
    out = update(cfg, policy, _batch(policy.model, 0.1), 1, world, 1.0, behaviour_is=False)
    assert out["train/logprob_mismatch_mean"] == pytest.approx(0.1, abs=1e-4)
    assert "train/is_weight_mean" not in out


def test_unit_weights_change_nothing(world):
    """With the engine's log-probs equal to the trainer's, the corrected update is the plain one."""
    results = []
    for correct in (False, True):
        torch.manual_seed(0)
        cfg, policy = _policy()
        update(cfg, policy, _batch(policy.model, 0.0), 1, world, 1.0, behaviour_is=correct)
        results.append({k: v.detach().clone() for k, v in policy.model.named_parameters()})
    for name, value in results[0].items():
        torch.testing.assert_close(results[1][name], value, rtol=0, atol=1e-6)


def test_logits_at_trained_positions_are_the_full_forward_rows(world):
    """The head runs on the trained positions only; their logits are the full forward's rows."""
    _, policy = _policy()
    assert policy.split is not None  # a Llama-style model: logits = lm_head(body(x))
    ids = torch.randint(3, 500, (2, 12))
    attn = torch.ones_like(ids)
    keep = torch.zeros(2, 11, dtype=torch.bool)
    keep[0, 4:9] = keep[1, 2:5] = True
    with torch.no_grad():
        full = policy.model(input_ids=ids, attention_mask=attn).logits[:, :-1][keep]
        picked = policy.logits_at(policy.ds_engine, ids, attn, keep)
    assert picked.shape == (8, full.shape[-1])
    torch.testing.assert_close(picked, full, rtol=0, atol=1e-5)


def test_a_model_that_rescales_its_logits_keeps_its_own_forward():
    """Logits changed after the head (soft-capping, scaling) fail the probe: no split, full forward."""
    _, policy = _policy()
    model = policy.model
    handle = model.register_forward_hook(
        lambda m, args, out: out.__setitem__("logits", out.logits * 2) or out
    )
    try:
        assert split_lm(model) is None
    finally:
        handle.remove()
    assert split_lm(model) is not None


def test_autocast_choice():
    cfg = load_config(env="sokoban", overrides=["train.autocast=off"])
    assert autocast_for(cfg, torch.device("cpu")) is None
    cfg = load_config(env="sokoban", overrides=["train.autocast=bfloat16"])
    assert autocast_for(cfg, torch.device("cpu")) is torch.bfloat16
    # A bfloat16 model is already in bfloat16: nothing to autocast.
    cfg = load_config(env="sokoban", overrides=["train.autocast=bfloat16", "model.dtype=bfloat16"])
    assert autocast_for(cfg, torch.device("cpu")) is None
    # The engine samples in the dtype the trainer computes in, unless asked for another.
    cfg = load_config(env="sokoban", overrides=["train.autocast=bfloat16"])
    assert engine_dtype_for(cfg, torch.device("cpu")) == "bfloat16"
    cfg = load_config(env="sokoban", overrides=["train.autocast=off"])
    assert engine_dtype_for(cfg, torch.device("cpu")) == "float32"
    cfg = load_config(env="sokoban", overrides=["train.autocast=bfloat16", "engine.dtype=float32"])
    assert engine_dtype_for(cfg, torch.device("cpu")) == "float32"
    cfg = load_config(env="sokoban", overrides=["train.autocast=off", "engine.dtype=bfloat16"])
    assert engine_dtype_for(cfg, torch.device("cpu")) == "bfloat16"


def test_bf16_autocast_update_trains_with_float32_master_weights(world):
    """Under autocast the weights and their optimizer state stay float32, the log-probs the update
    reports are within bf16 precision of the float32 ones, and the update moves the weights."""
    cfg, policy = _policy("train.autocast=bfloat16")
    assert policy.autocast is torch.bfloat16
    before = {k: v.detach().clone() for k, v in policy.model.named_parameters()}
    out = update(cfg, policy, _batch(policy.model, 0.0), 1, world, 1.0)
    # The stored log-probs are float32 ones: the bf16 forward differs from them by bf16 rounding only.
    assert 0 < out["train/logprob_mismatch_mean"] < 0.05
    assert all(p.dtype == torch.float32 for p in policy.model.parameters())
    moved = sum(float((p.detach() - before[k]).abs().max()) for k, p in policy.model.named_parameters())
    assert moved > 0


@pytest.mark.parametrize("entropy_coef", [0.0, 0.5])
def test_loss_is_the_policy_term_minus_the_entropy_bonus(world, entropy_coef):
    # token_mean: per trained token, loss = policy term - coef x mean entropy, exactly.
    cfg, policy = _policy(f"algo.entropy_coef={entropy_coef}")
    out = update(cfg, policy, _batch(policy.model, 0.0), 1, world, 1.0)
    assert out["train/entropy"] > 1.0  # a random tiny model: far from zero
    expected = out["train/policy_loss"] - entropy_coef * out["train/entropy"]
    assert out["train/loss"] == pytest.approx(expected, abs=1e-5)


def test_the_pre_update_scores_are_plain_numbers_not_graphs(world):
    """The proximal pre-pass scores every trained sample before the first optimizer step; were it
    to record autograd graphs, each row it keeps would hold its micro-batch's activations alive
    (a 32-episode Sokoban update grew by ~15 GB that way and was OOM-killed)."""
    from agentrl.training.update import proximal_logprobs

    cfg, policy = _policy()
    trajectories = _batch(policy.model, 0.0)
    scores = proximal_logprobs(cfg, policy, trajectories, 1.0, needs_all=True)
    assert len(scores) == len(trajectories)
    for t in trajectories:
        row = scores[id(t.samples[0])]
        assert not row.requires_grad and row.grad_fn is None
        # Row t scores token t+1 with the current weights: the engine's stored log-probs (shift 0).
        stored = torch.tensor(t.samples[0].logprobs[1:])
        mask = torch.tensor(t.samples[0].loss_mask[1:], dtype=torch.bool)
        assert torch.allclose(row[mask], stored[mask], atol=1e-4)


@pytest.mark.parametrize("aggregation", ["seq_mean", "token_mean"])
def test_loss_over_rolled_out_scales_the_gradient_by_the_kept_share(world, aggregation):
    """``algo.loss_over=rolled_out``: 4 trained episodes of 16 rolled out give the same loss with
    the normalisers 4x larger, so the gradient (measured before clipping, and linear in the loss)
    is exactly 1/4 of ``trained``'s from the same weights; the reported per-token loss is the same."""
    norms, losses = {}, {}
    for over in ("trained", "rolled_out"):
        cfg, policy = _policy(f"algo.loss_over={over}", f"algo.policy_loss.aggregation={aggregation}")
        torch.manual_seed(0)
        out = update(cfg, policy, _batch(policy.model, 0.0), 1, world, 1.0, rolled_out=16)
        norms[over], losses[over] = out["train/grad_norm"], out["train/policy_loss"]
    assert norms["rolled_out"] == pytest.approx(norms["trained"] / 4, rel=1e-4)
    assert losses["rolled_out"] == pytest.approx(losses["trained"], rel=1e-4)
    # Without a count of what was rolled out (SFT's update), nothing is scaled.
    cfg, policy = _policy("algo.loss_over=rolled_out", f"algo.policy_loss.aggregation={aggregation}")
    assert update(cfg, policy, _batch(policy.model, 0.0), 1, world, 1.0)["train/grad_norm"] == pytest.approx(
        norms["trained"], rel=1e-4
    )
