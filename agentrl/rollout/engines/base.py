"""The ``Engine`` protocol: token ids in, token ids and log-probs out.

An engine never sees text. The rollout manager templates and tokenizes; the engine samples.
A third engine is one file implementing this protocol plus one line in ``ENGINES``
(:mod:`agentrl.rollout.engines`); callers read what an engine can do from its :class:`EngineCapabilities`,
never by probing for methods.

May import: nothing from agentrl (every engine and the rollout manager stand on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@dataclass
class SamplingParams:
    """How to sample one reply."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    """0 means greedy. Log-probs are always of the temperature-scaled distribution (``logits / T``;
    ``T = 1`` when greedy), before top-p/top-k truncation, so the trainer can recompute them."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Generation of a prompt ends after it samples one of these (kept in the output)."""
    seed: int | None = None
    """Seed for this call's sampling; ``None`` draws from the engine's own generator."""
    row_seeds: list[int] | None = None
    """One seed per prompt (overrides ``seed``): a prompt's sample then depends only on its own seed
    and tokens, not on which other prompts share the batch. The rollout manager derives them from
    (step, env seed, episode, turn), so a run's samples are the same on 1 rank or N."""


@dataclass
class Generation:
    """One sampled reply."""

    token_ids: list[int]
    logprobs: list[float]
    """Log-prob of each sampled token under the temperature-scaled distribution."""
    finish_reason: str
    """``stop`` (sampled a stop token, which is included) or ``length`` (hit ``max_new_tokens``)."""


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do, declared by the engine class; the trainer and the checks read it."""

    own_weights: bool
    """The engine keeps its own copy of the weights: the trainer pushes them after every update
    (``update_weights``) and can check the push by re-scoring tokens (``prompt_logprobs``)."""
    same_numerics: bool
    """The engine samples with the trainer's own module and kernels, so its log-probs are the
    trainer's: no behaviour/trainer mismatch to correct (truncated importance sampling stays off)."""
    sleep: bool
    """``sleep``/``wake`` really free and restore memory (otherwise they are no-ops)."""


@runtime_checkable
class Engine(Protocol):
    """What the rollout manager and the trainer need from an inference engine."""

    capabilities: EngineCapabilities

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        """Sample one reply per prompt, in order."""
        ...

    def update_weights(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights (a no-op for an engine that shares the trainer's model)."""
        ...

    def sleep(self) -> None:
        """Free inference memory (KV cache, weights copy) while the trainer updates."""
        ...

    def wake(self) -> None:
        """Undo :meth:`sleep` before the next generation."""
        ...

    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """Log-prob (``T = 1``) of every token after the first of each prompt, under the engine's
        current weights. Engines with ``own_weights`` must implement it (the post-sync check)."""
        ...

    def close(self) -> None:
        """Release the engine's resources (threads, memory); the engine is unusable afterwards."""
        ...
