"""Inference engines behind one protocol (:mod:`agentrl.rollout.engines.base`), chosen by name.

``ENGINES`` maps a name to ``"module:Class"``; the class is imported only when chosen (vLLM is an
optional install). Every caller (training, in-loop eval, ``agentrl eval``, ``agentrl sft``, the
benchmarks) starts its engine with :func:`start_engine`, so ``engine.name`` means the same
everywhere. ``auto`` picks vLLM when it is installed and starts, else ``hf``, and says why.

May import: chat, trajectory, logprobs (in agentrl.rollout), and envs, models, suggest, seeds
(lint-imports checks).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.rollout.engines.base import Engine, EngineCapabilities, Generation, SamplingParams

if TYPE_CHECKING:
    import torch

#: engine name -> "module:Class". Each class offers ``from_setup(setup, options) -> Engine``.
ENGINES: dict[str, str] = {
    "hf": "agentrl.rollout.engines.hf:HFEngine",
    "vllm": "agentrl.rollout.engines.vllm:VLLMEngine",
}
#: Names accepted by ``engine.name``: the registered engines and ``auto``.
ENGINE_CHOICES = ("auto", *ENGINES)


@dataclass
class EngineSetup:
    """What an engine may need to start; each engine takes what it uses."""

    model_path: str
    """The model as an HF folder on disk (what an engine with its own weights loads)."""
    pad_token_id: int
    dtype: str
    """The dtype to sample in (``float32``, ``bfloat16``; ``engine.dtype``, by default the trainer's
    compute dtype); an engine that loads its own weights loads them in it."""
    seed: int
    max_context_tokens: int
    """Longest token sequence the rollout feeds the engine (prompt and reply)."""
    max_sequences: int
    """Most sequences generated at once (the episodes of a step, or of an evaluation)."""
    model: torch.nn.Module | None = None
    """The trainer's module, when there is one: the ``hf`` engine samples from it (else loads one)."""
    device: str = "cpu"
    lora: bool = False
    """The policy trains LoRA adapters. The ``hf`` engine samples through them; an engine with its
    own weights (vLLM) receives them merged into full weights (``agentrl.rollout.weight_sync``)."""


def engine_class(name: str) -> type:
    """The engine class registered as ``name``; ``ValueError`` with a did-you-mean otherwise."""
    from agentrl.suggest import lookup

    module, _, attr = lookup(ENGINES, name, "engine").partition(":")
    return getattr(importlib.import_module(module), attr)


def start_engine(name: str, setup: EngineSetup, options: dict[str, dict[str, Any]]) -> tuple[Engine, str]:
    """Start engine ``name`` (or choose one for ``auto``); return it and one line saying which and why.

    ``options[engine_name]`` are that engine's keyword arguments (config ``engine.hf``,
    ``engine.vllm``). An explicitly named engine that fails to start raises; ``auto`` falls back to
    ``hf`` and says what went wrong with vLLM.
    """
    if name != "auto":
        engine = engine_class(name).from_setup(setup, options.get(name, {}))
        return engine, f"engine {name} (engine.name={name}){_start_note(engine)}"
    # LoRA runs too: their push merges the adapters (agentrl.rollout.weight_sync), about as fast as a full one.
    if importlib.util.find_spec("vllm") is None:
        reason = "vLLM is not installed (bash scripts/setup.sh installs it where it can)"
    else:
        vllm_engine = engine_class("vllm")
        try:
            reason = vllm_engine.unsupported_reason(setup)
            if reason is None:
                engine = vllm_engine.from_setup(setup, options.get("vllm", {}))
        except Exception as exc:  # auto must still give the user a working run
            reason = f"vLLM did not start: {str(exc).splitlines()[0][:300]}"
        if reason is None:
            return engine, f"engine vllm (engine.name=auto: vLLM is installed){_start_note(engine)}"
    engine = engine_class("hf").from_setup(setup, options.get("hf", {}))
    return engine, f"engine hf (engine.name=auto: {reason})"


def _start_note(engine: Engine) -> str:
    seconds = getattr(engine, "start_seconds", None)
    return f", started in {seconds:.0f} s" if seconds else ""


__all__ = [
    "ENGINES",
    "ENGINE_CHOICES",
    "Engine",
    "EngineCapabilities",
    "EngineSetup",
    "Generation",
    "SamplingParams",
    "engine_class",
    "start_engine",
]
