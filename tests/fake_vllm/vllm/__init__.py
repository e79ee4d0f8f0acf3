"""A stand-in for the ``vllm`` package, for tests on machines without vLLM or a GPU.

It mirrors only the surface :mod:`agentrl.rollout.engines.vllm` uses, with the signatures and defaults of
recent vLLM releases (``SamplingParams.top_k`` defaults to 0 = disabled, ``logprobs=0`` returns the
sampled token's log-prob). It records every call in ``LLM.calls`` so tests can check what the
adapter sent and in which order, and it emulates sleep-mode bookkeeping strictly: generating with
the KV cache asleep, loading weights while they are asleep, or sleeping twice raises, as the real
allocator would misbehave there. It says nothing about whether real vLLM samples correctly. It reports a CUDA platform
(``vllm.platforms.current_platform``), so the sleep-mode paths that only run on a GPU can be tested.

When ``model`` is a local Hugging Face folder, the stand-in also loads that model on CPU: weight
loads (``apply_model`` -> ``load_weights``) copy into it by HF name, and ``prompt_logprobs`` are
computed from it, so a test can check that weights really arrived. Sampling stays canned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__version__ = "0.0.0+fake"

_SAMPLING_FIELDS = {
    "n": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "seed": None,
    "stop_token_ids": None,
    "ignore_eos": False,
    "max_tokens": 16,
    "logprobs": None,
    "detokenize": True,
    "skip_special_tokens": True,
    "prompt_logprobs": None,
}


class SamplingParams:
    """Accepts only the keyword arguments listed above (a typo raises ``TypeError``)."""

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(_SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"unexpected SamplingParams arguments: {sorted(unknown)}")
        self.explicit = dict(kwargs)
        for name, default in _SAMPLING_FIELDS.items():
            setattr(self, name, kwargs.get(name, default))


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None


@dataclass
class FakeModel:
    """What ``apply_model`` hands to the callable: records each ``load_weights`` batch."""

    def modules(self) -> list[Any]:
        return []

    loaded: list[list[str]] = field(default_factory=list)
    hf: Any = None
    """The real model behind the stand-in, when ``LLM(model=...)`` named a local HF folder."""

    def load_weights(self, weights: Any) -> set[str]:
        weights = list(weights)
        names = [name for name, _ in weights]
        self.loaded.append(names)
        if self.hf is not None:
            import torch

            params = dict(self.hf.named_parameters())
            with torch.no_grad():
                for name, tensor in weights:
                    params[name].copy_(tensor)  # a wrong name raises KeyError, as vLLM's loader would
        return set(names)


def fake_reply(prompt: list[int], params: SamplingParams) -> CompletionOutput:
    """Deterministic reply: tokens ``base, base+1, ...`` with ``base = 100 + sum(prompt) % 50``.

    The sampled token's log-prob is ``-(k + 1) / 10`` at position ``k``; each entry also holds a
    second, higher-ranked token, as vLLM's output may. Stops after a token in ``stop_token_ids``.
    """
    base = 100 + sum(prompt) % 50
    stops = set(params.stop_token_ids or [])
    tokens: list[int] = []
    logprobs: list[dict[int, Logprob]] = []
    reason = "length"
    for k in range(params.max_tokens):
        tok = base + k
        tokens.append(tok)
        logprobs.append({tok: Logprob(-(k + 1) / 10, rank=2), 7: Logprob(-0.01, rank=1)})
        if tok in stops:
            reason = "stop"
            break
    return CompletionOutput(
        0, "", tokens, sum(lp[t].logprob for lp, t in zip(logprobs, tokens)), logprobs, reason
    )


def _load_hf(model: str) -> Any:
    from pathlib import Path

    if not (Path(model) / "config.json").is_file():
        return None
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype="float32").eval()


class LLM:
    """Records calls; ``instances`` holds every LLM built, newest last."""

    instances: list[LLM] = []
    #: set by a test to post-process the outputs of the next generate call
    output_hook: Callable[[list[RequestOutput]], list[RequestOutput]] | None = None

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[tuple[str, Any]] = []
        self.asleep: set[str] = set()
        self.model = FakeModel(hf=_load_hf(model))
        LLM.instances.append(self)

    def generate(
        self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True
    ) -> list[RequestOutput]:
        self.calls.append(("generate", (prompts, sampling_params, use_tqdm)))
        if self.asleep:
            raise RuntimeError(f"generate while asleep: {sorted(self.asleep)}")
        per_prompt = (
            sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        )
        outs = [
            RequestOutput(str(i), p["prompt_token_ids"], [fake_reply(p["prompt_token_ids"], sp)])
            for i, (p, sp) in enumerate(zip(prompts, per_prompt))
        ]
        for out, sp in zip(outs, per_prompt):
            if sp.prompt_logprobs is not None:
                out.prompt_logprobs = self._prompt_logprobs(out.prompt_token_ids)
        hook = type(self).output_hook
        return hook(outs) if hook else outs

    def _prompt_logprobs(self, ids: list[int]) -> list[dict[int, Logprob] | None]:
        if self.model.hf is None:
            raise RuntimeError("the stand-in computes prompt_logprobs only for a local HF model folder")
        import torch

        with torch.no_grad():
            logits = self.model.hf(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        return [None] + [{tok: Logprob(float(logp[i, tok]), rank=1)} for i, tok in enumerate(ids[1:])]

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))
        if self.asleep:
            raise RuntimeError("sleep while (partly) asleep")
        self.asleep = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tags))
        self.asleep -= set(tags or ["weights", "kv_cache"])

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache", None))
        return True

    def apply_model(self, func: Callable[[Any], Any]) -> list[Any]:
        self.calls.append(("apply_model", func))
        if "weights" in self.asleep:
            raise RuntimeError("apply_model while the weights are asleep")
        return [func(self.model)]

    def collective_rpc(
        self, method: str, args: tuple = (), kwargs: dict[str, Any] | None = None
    ) -> list[Any]:
        """Only ``reload_weights(weights_iterator=..., is_checkpoint_format=True)`` (what agentrl calls)."""
        kwargs = kwargs or {}
        self.calls.append(("collective_rpc", method))
        if method != "reload_weights" or not kwargs.get("is_checkpoint_format", True):
            raise NotImplementedError(f"the stand-in has no collective_rpc {method!r}")
        if "weights" in self.asleep:
            raise RuntimeError("reload_weights while the weights are asleep")
        self.model.load_weights(kwargs["weights_iterator"])
        return [None]
