"""The optional vLLM engine: token ids in, token ids and log-probs out, colocated with the trainer.

What has been run where (keep this paragraph true):

* **Nothing in this file has run against a real vLLM or on a GPU yet.** vLLM is not installed on the
  development machines and none of them has a GPU.
* Everything below is tested only against a stand-in ``vllm`` package (``tests/fake_vllm``) that
  records what the adapter sends and returns canned outputs (``tests/test_engine_vllm.py``). Those
  tests pin the adapter's own logic (parameter mapping, output validation, bucketing, sleep/wake
  state); they cannot show that vLLM behaves as its documentation says.
* The vLLM facts relied on were read from vLLM's documentation and source (recent 0.x releases,
  up to 0.32/0.33) and are listed in ``docs/engines.md``. The first GPU run should check, in this
  order: greedy output equals the HF engine's; ``processed_logprobs`` log-probs match the trainer's
  recomputation at ``top_p=1``; a weight update changes the samples; sleep/wake frees and restores
  memory.

The module imports without vLLM; :class:`VLLMEngine` imports it in its constructor.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from agentrl.engines.base import Generation, SamplingParams

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Sleep states tracked by the engine. ``weights``: weights on the GPU, KV cache still freed
#: (the state after :meth:`VLLMEngine.update_weights` on a sleeping engine).
_AWAKE, _ASLEEP, _WEIGHTS_ONLY = "awake", "asleep", "weights"

_INSTALL_HINT = (
    "the 'vllm' engine needs the optional vLLM package: pip install 'agentrl[vllm]' "
    "(vLLM runs on a CUDA GPU; on a CPU machine use engine 'hf')"
)

#: Environment variables set by torchrun / the DeepSpeed launcher.
_LAUNCHER_VARS = ("WORLD_SIZE", "LOCAL_RANK")


def _under_distributed_launcher() -> bool:
    return all(v in os.environ for v in _LAUNCHER_VARS)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def iter_buckets(
    named_params: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group ``(name, tensor)`` pairs, in order, into lists of at most ``bucket_bytes`` bytes.

    A tensor larger than the budget gets a bucket of its own; ``bucket_bytes <= 0`` yields one
    tensor per bucket. Every pair appears in exactly one bucket. Raises ``ValueError`` on an empty
    tensor that looks like an ungathered ZeRO-3 parameter (it would load silently as garbage).
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named_params:
        if tensor.numel() == 0 and getattr(tensor, "ds_numel", 0):
            raise ValueError(
                f"parameter {name!r} is an ungathered ZeRO-3 shard (numel()==0, ds_numel="
                f"{tensor.ds_numel}); gather it (deepspeed.zero.GatheredParameters) before update_weights"
            )
        n = _nbytes(tensor)
        if bucket and (bucket_bytes <= 0 or size + n > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += n
    if bucket:
        yield bucket


class _LoadWeights:
    """Callable run by ``LLM.apply_model`` inside each vLLM worker: ``model.load_weights(bucket)``.

    A top-level class (not a closure) so it pickles when vLLM runs its workers in other processes.
    In that case vLLM may also need ``VLLM_ALLOW_INSECURE_SERIALIZATION=1`` to accept a callable,
    and the tensors are copied across processes; colocated runs keep the engine in-process, where
    the tensors are passed by reference.
    """

    def __init__(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        self.weights = weights

    def __call__(self, model: Any) -> int:
        # vLLM's load_weights takes HF checkpoint names and full (unsharded) tensors; each model's
        # weight loaders fuse (q/k/v -> qkv_proj) and shard for tensor parallelism themselves.
        model.load_weights(self.weights)
        return len(self.weights)


class VLLMEngine:
    """The :class:`~agentrl.engines.base.Engine` protocol on top of ``vllm.LLM``.

    Contract:

    * :meth:`generate` sends every prompt as token ids in one ``LLM.generate`` call and returns one
      :class:`Generation` per prompt, in order. Generation stops only at ``max_new_tokens`` or at a
      caller-given ``stop_token_ids`` token (kept in the output: a ``stop`` reply that does not
      end with one raises); the model's own EOS does not stop it unless it is in
      ``stop_token_ids`` (``ignore_eos=True``), so the rollout manager alone decides stops.
    * Log-probs come from vLLM's ``processed_logprobs`` mode (see ``logprobs_mode``): the sampled
      token's log-prob after temperature and after top-k/top-p. With ``top_p=1`` and ``top_k=0``
      that is exactly agentrl's contract (``log_softmax(logits / T)``; ``T = 1`` when greedy).
      With truncation vLLM renormalises over the kept tokens, so each log-prob is higher than the
      contract's by ``-log(kept mass)``; the engine warns once and the trainer's drift metric shows
      it. Kernel differences (bf16, fused ops) give a small drift in any case.
    * A per-call ``seed`` gives prompt ``i`` the vLLM request seed ``seed + i``: one shared seed
      would make identical prompts (a GRPO group) sample identical replies.
    * :meth:`update_weights` loads ``(name, tensor)`` pairs (HF parameter names) in buckets of
      about ``weight_bucket_bytes`` through ``LLM.apply_model(fn)`` -> ``model.load_weights``, then
      resets the prefix cache. Tensors must stay valid until their bucket is loaded; under ZeRO-3
      with per-parameter gathering pass ``weight_bucket_bytes=0`` (one tensor per load).
    * :meth:`sleep` / :meth:`wake` are idempotent. ``sleep_level=1`` offloads weights to CPU and
      drops the KV cache; ``2`` drops both, so after it the engine refuses to generate until
      :meth:`update_weights` has reloaded the weights; ``0`` disables sleep mode (no-ops).
      :meth:`generate` on a sleeping engine wakes it first.

    Colocation: with ``colocate=True`` under torchrun/DeepSpeed (``WORLD_SIZE`` and ``LOCAL_RANK``
    set) the engine uses ``distributed_executor_backend="external_launcher"``: every rank builds its
    own ``LLM`` in its own process on its own GPU (with ``tensor_parallel_size > 1``, consecutive
    ranks form one tensor-parallel engine and share a seed). Without a launcher it keeps vLLM's
    engine core in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so weight updates pass
    tensors by reference. ``colocate=False`` leaves vLLM's defaults alone.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 4096,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        sleep_level: int = 1,
        colocate: bool = True,
        tensor_parallel_size: int = 1,
        logprobs_mode: str = "processed_logprobs",
        weight_bucket_bytes: int = 512 * 1024**2,
        **llm_kwargs: Any,
    ) -> None:
        """Build the ``vllm.LLM``; ``llm_kwargs`` go to it unchanged (they override ours).

        Raises ``ImportError`` (with the install command) when vLLM is missing and ``ValueError``
        on a bad ``sleep_level``.
        """
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"sleep_level must be 0 (off), 1 or 2, got {sleep_level}")
        if sleep_level == 2:
            # Several RL projects saw stale or garbage weights after level-2 sleep (shared/REFERENCE.md).
            logger.warning("vLLM sleep level 2 drops the weights: every wake needs a full update_weights")
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc

        self._vllm = vllm
        self.sleep_level = sleep_level
        self.weight_bucket_bytes = weight_bucket_bytes
        self.logprobs_mode = logprobs_mode
        self._state = _AWAKE
        self._weights_valid = True
        self._warned_truncation = False

        kwargs: dict[str, Any] = dict(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=enable_prefix_caching,
            enable_sleep_mode=sleep_level > 0,
            tensor_parallel_size=tensor_parallel_size,
            logprobs_mode=logprobs_mode,
        )
        if colocate and _under_distributed_launcher():
            kwargs["distributed_executor_backend"] = "external_launcher"
            # Ranks of one tensor-parallel group must sample the same tokens; groups must differ.
            rank = int(os.environ.get("RANK", os.environ["LOCAL_RANK"]))
            kwargs["seed"] = seed + rank // tensor_parallel_size
        elif colocate:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs.update(llm_kwargs)
        self.llm_kwargs = kwargs
        self.llm = vllm.LLM(**kwargs)

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
        # top_k is sent only when enabled: vLLM's own default means "disabled" in every version
        # (-1 in old releases, 0 in recent ones), which spares us knowing which one is installed.
        if sampling.top_k > 0 and not greedy:
            params["top_k"] = int(sampling.top_k)
        if sampling.row_seeds is not None:
            params["seed"] = int(sampling.row_seeds[index])
        elif sampling.seed is not None:
            params["seed"] = int(sampling.seed) + index
        return self._vllm.SamplingParams(**params)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        """Sample one reply per prompt (token ids), in order; see the class docstring."""
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
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
        outputs = self.llm.generate(requests, params, use_tqdm=False)
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
        current weights: what the trainer compares after a weight update (``agentrl.weight_sync``)."""
        if any(len(p) < 2 for p in prompts):
            raise ValueError("prompt_logprobs needs prompts of at least two tokens")
        self.wake()
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(
            n=1, temperature=1.0, max_tokens=1, prompt_logprobs=0, detokenize=False
        )
        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        result = []
        for index, (prompt, out) in enumerate(zip(prompts, outputs)):
            entries = out.prompt_logprobs  # [None, {token: Logprob}, ...]: nothing for the first token
            if entries is None or len(entries) != len(prompt):
                raise RuntimeError(f"vLLM returned no prompt log-probs for prompt {index}")
            result.append([float(entry[int(tok)].logprob) for tok, entry in zip(prompt[1:], entries[1:])])
        return result

    # ------------------------------------------------------------------ weights

    def update_weights(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new weights (HF names) into vLLM bucket by bucket, then reset the prefix cache.

        A sleeping engine wakes its weights only (the KV cache stays freed until :meth:`wake`), so
        the update needs no more GPU memory than the weights themselves.
        """
        if self._state == _ASLEEP:
            self.llm.wake_up(tags=["weights"])
            self._state = _WEIGHTS_ONLY
        loaded = 0
        for bucket in iter_buckets(named_params, self.weight_bucket_bytes):
            self.llm.apply_model(_LoadWeights(bucket))
            loaded += len(bucket)
        if loaded == 0:
            raise ValueError("update_weights got no parameters")
        # Cached KV blocks were computed with the old weights.
        self.llm.reset_prefix_cache()
        self._weights_valid = True

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
