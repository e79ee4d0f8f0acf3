"""LoRA with an engine that holds its own weights (vLLM): the merged push and its checks.

A LoRA policy is pushed as merged full weights, ``W + (alpha / r) * B @ A`` per adapted layer,
under the base model's parameter names; the post-sync check compares the engine with the trainer's
adapted forward. Fast tests check the merge against hand-computed numbers and against peft's own
merge; the slow ones run the real vLLM (CPU build) on a tiny model with 32-wide heads (the smallest
its CPU attention takes).
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from envs_for_tests import run_agentrl

from agentrl.config import ConfigError, configs_dir, load_config
from agentrl.rollout.weight_sync import logprob_gap, merged_lora_weight, policy_weights, trainer_logprobs

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")

# ------------------------------------------------------------------------------------------------
# The merge: hand-computed numbers
# ------------------------------------------------------------------------------------------------

W = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (out=2, in=3)
A = torch.tensor([[1.0, 0.0, -1.0]])  # (r=1, in=3)
B = torch.tensor([[2.0], [3.0]])  # (out=2, r=1)
# B @ A = [[2, 0, -2], [3, 0, -3]]; scaled by alpha / r = 16 / 32 = 0.5: [[1, 0, -1], [1.5, 0, -1.5]].
MERGED = torch.tensor([[2.0, 2.0, 2.0], [5.5, 5.0, 4.5]])


def test_merged_weight_is_w_plus_scaled_b_times_a():
    before = W.clone()
    assert torch.equal(merged_lora_weight(W, A, B, 16 / 32), MERGED)
    assert torch.equal(W, before)  # the training module's weight is left alone


def test_merged_weight_in_the_fan_in_fan_out_layout_is_the_transpose():
    assert torch.equal(merged_lora_weight(W.T.contiguous(), A, B, 0.5, fan_in_fan_out=True), MERGED.T)


def test_merged_weight_keeps_the_dtype_and_rounds_once():
    # 256 + 0.5 * 1 = 256.5 is not a bfloat16 (8 bits of mantissa): it rounds to even, 256.
    weight = torch.tensor([[256.0]], dtype=torch.bfloat16)
    out = merged_lora_weight(weight, torch.ones(1, 1), torch.ones(1, 1), 0.5)
    assert out.dtype == torch.bfloat16
    assert float(out) == 256.0
    assert float(merged_lora_weight(weight, torch.ones(1, 1), torch.full((1, 1), 4.0), 0.5)) == 258.0


def test_a_lora_update_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="does not fit a weight"):
        merged_lora_weight(W, A[:, :2], B, 0.5)  # B @ A is (2, 2)


# ------------------------------------------------------------------------------------------------
# The push of a peft model: the base model's names, peft's merge, the training module untouched
# ------------------------------------------------------------------------------------------------


def _lora_model(
    model: torch.nn.Module, r: int = 4, alpha: int = 8, dropout: float = 0.0, scale: float = 0.05
):
    """``model`` with LoRA adapters on every linear layer, their B made non-zero (peft starts B at
    zero, where the merge is the base weight and proves nothing)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear")
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    return peft_model


def test_a_lora_push_is_the_base_names_with_peft_merged_weights(tiny_model_path):
    import copy

    from agentrl.models import load_model

    base_names = [n for n, _ in load_model(tiny_model_path).named_parameters()]
    peft_model = _lora_model(load_model(tiny_model_path))
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}

    pushed = dict(policy_weights(peft_model, zero_stage=0))

    assert list(pushed) == base_names
    expected = copy.deepcopy(peft_model).merge_and_unload().state_dict()
    differs = 0
    for name, tensor in pushed.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6)
        differs += not torch.equal(tensor, dict(load_model(tiny_model_path).named_parameters())[name])
    assert differs == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down): exactly the adapted weights
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert not any(getattr(m, "merged", False) for m in peft_model.modules())


def test_the_pushed_weights_compute_what_the_adapted_model_computes(tiny_model_path):
    """What an engine loads from the push gives the trainer's adapted log-probs."""
    from agentrl.models import load_model

    peft_model = _lora_model(load_model(tiny_model_path)).eval()
    engine_copy = load_model(tiny_model_path).eval()
    engine_copy.load_state_dict(dict(policy_weights(peft_model, zero_stage=0)), strict=False)
    ids = [[1, 30, 500, 7, 9000, 42, 3, 17]]
    adapted = trainer_logprobs(peft_model, ids, torch.device("cpu"))[0]
    loaded = trainer_logprobs(engine_copy, ids, torch.device("cpu"))[0]
    unadapted = trainer_logprobs(load_model(tiny_model_path), ids, torch.device("cpu"))[0]
    torch.testing.assert_close(loaded, adapted, rtol=0, atol=1e-5)
    assert float((unadapted - adapted).abs().mean()) > 1e-3  # the adapters matter to the check


def test_a_lora_push_under_zero3_is_refused(tiny_model_path):
    from agentrl.models import load_model

    with pytest.raises(ValueError, match="zero_stage=2"):
        next(iter(policy_weights(_lora_model(load_model(tiny_model_path)), zero_stage=3)))


def test_the_trainer_side_of_the_check_scores_without_dropout_and_keeps_the_mode(tiny_model_path):
    """The update leaves the module in train mode; LoRA dropout must not enter the post-sync check."""
    from agentrl.models import load_model

    peft_model = _lora_model(load_model(tiny_model_path), dropout=0.5).train()
    ids = [list(range(1, 40))]
    first = trainer_logprobs(peft_model, ids, torch.device("cpu"))[0]
    assert peft_model.training
    second = trainer_logprobs(peft_model, ids, torch.device("cpu"))[0]
    assert torch.equal(first, second)
    peft_model.eval()
    assert torch.equal(trainer_logprobs(peft_model, ids, torch.device("cpu"))[0], first)
    assert not peft_model.training


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.lora.r=-4"], "model.lora.r=-4 is negative"),
        (["model.lora.alpha=64"], "model.lora.alpha=64 is set but model.lora.r=0 turns LoRA off"),
        (["model.lora.target_modules=.*q_proj"], "set model.lora.r to a rank"),
        (["model.lora.r=16", "model.lora.alpha=0"], "model.lora.alpha=0 must be positive"),
        (["model.lora.r=16", "model.lora.dropout=1.0"], "model.lora.dropout=1.0 must be in [0, 1)"),
        (["model.lora.r=16", "model.lora.target_modules= "], "model.lora.target_modules is empty"),
        (["model.lora.r=16", "train.zero_stage=3", "engine.name=vllm"], "use train.zero_stage=2"),
    ],
)
def test_bad_lora_settings_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(env="countdown", overrides=overrides)
    assert message in str(info.value)


def test_lora_with_the_vllm_engine_is_accepted():
    cfg = load_config(env="countdown", overrides=["model.lora.r=8", "engine.name=vllm"])
    assert (cfg.model.lora.r, cfg.engine.name) == (8, "vllm")


def test_the_lora_recipe_is_a_lora_run_with_the_engine_chosen_as_for_any_run():
    cfg = load_config(config_file=str(configs_dir() / "lora_countdown.yaml"))
    assert cfg.env.name == "countdown" and cfg.engine.name == "auto"  # vLLM where it runs
    assert 16 <= cfg.model.lora.r <= 64 and cfg.model.lora.alpha == 2 * cfg.model.lora.r
    assert 1e-4 <= cfg.train.lr <= 2e-4


# ------------------------------------------------------------------------------------------------
# The real vLLM (CPU build)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_model_path() -> str:
    """A tiny random Llama with 32-wide heads: the smallest vLLM's CPU attention runs."""
    from agentrl.models import tiny_model_dir

    return str(tiny_model_dir(hidden_size=128))


@pytest.mark.slow
@needs_vllm
def test_a_lora_push_makes_vllm_score_like_the_adapted_trainer(vllm_model_path):
    from agentrl.models import load_model
    from agentrl.rollout.engines.vllm import VLLMEngine

    engine = VLLMEngine(vllm_model_path, dtype="float32", max_model_len=512, kv_cache_memory_bytes=1 << 28)
    try:
        trainer = _lora_model(load_model(vllm_model_path), r=8, alpha=16)
        prompts = [[1, *range(200, 260)], [1, 5, 900, 77, 3000, 12, 8, 41000, 6]]
        cpu = torch.device("cpu")
        stale = logprob_gap(engine, trainer, prompts, cpu)  # the engine still has the base weights
        engine.update_weights(policy_weights(trainer, zero_stage=0))
        after = logprob_gap(engine, trainer, prompts, cpu)
        # A push of the base weights alone (the adapters not merged) puts the engine back where it was.
        base = trainer.get_base_model().named_parameters()
        engine.update_weights((n.replace(".base_layer", ""), p) for n, p in base if "lora_" not in n)
        unmerged = logprob_gap(engine, trainer, prompts, cpu)
    finally:
        engine.close()
    assert stale > 1e-2, stale
    assert after < 1e-4, after
    assert unmerged > 1e-2, unmerged  # the check catches a push that forgot the adapters


@pytest.mark.slow
@needs_vllm
def test_the_lora_recipe_trains_on_vllm_from_the_cli(tmp_path, vllm_model_path):
    """``agentrl train --config configs/lora_countdown.yaml``, cut to two small steps of the tiny
    model: every push passes the post-sync check, and step 2 was sampled from the step-1 adapters."""
    sets = [
        "train.steps=2",
        "train.n_groups=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=16",
        "rollout.max_context_tokens=512",
        "train.micro_batch_tokens=1024",
        "train.autocast=off",  # float32 on both sides: the check's 1e-4 tolerance is float32's
        "train.lr=1e-2",  # moves the tiny model's adapters far enough in one step to tell apart
        "algo.entropy_coef=0.01",  # a gradient even when every reply of a group scores the same
        "eval.every=0",
        "run.save_every=1",
        "run.progress=false",
        f"run.root={tmp_path}",
    ]
    args = ["train", "--config", str(configs_dir() / "lora_countdown.yaml"), "--model", vllm_model_path]
    done = run_agentrl([*args, "--name", "lora"], sets, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    # engine.name=auto chooses vLLM for a LoRA run as for any other.
    assert "engine vllm (engine.name=auto" in done.stderr + done.stdout

    run = tmp_path / "lora"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["engine/sync_logprob_gap"] < 1e-4 for r in rows), [
        r["engine/sync_logprob_gap"] for r in rows
    ]
    step2 = [json.loads(x) for x in (run / "trajectories" / "step_000002.jsonl").read_text().splitlines()]
    after_step1 = _stored_gap(run / "checkpoints" / "step_000001" / "hf", step2)
    base = _stored_gap(vllm_model_path, step2)
    assert after_step1 < 1e-4, after_step1
    assert base > 10 * after_step1, (base, after_step1)


def _stored_gap(model_dir, trajectories: list[dict]) -> float:
    """Mean |stored rollout log-prob - recomputed| over sampled tokens, under the model in ``model_dir``
    (a checkpoint's ``hf/`` folder holds the adapters merged)."""
    from agentrl.models import load_model
    from agentrl.rollout.logprobs import token_logprobs

    model = load_model(str(model_dir)).eval()
    gaps = []
    for traj in trajectories:
        for sample in traj["samples"]:
            ids = torch.tensor([sample["token_ids"]])
            mask = torch.tensor(sample["loss_mask"][1:], dtype=torch.bool)
            with torch.no_grad():
                logp = token_logprobs(model(input_ids=ids).logits[:, :-1], ids[:, 1:], 1.0)[0]
            gaps.append((logp - torch.tensor(sample["logprobs"][1:])).abs()[mask])
    return float(torch.cat(gaps).mean())
