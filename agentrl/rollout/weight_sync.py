"""After each update the engine must sample from the new weights: push them, then check they arrived.

The ``hf`` engine samples from the trainer's own module, so it has nothing to push and nothing to
check. An engine with its own copy of the weights (vLLM) gets every parameter by its Hugging Face
name, gathered from ZeRO-3 shards one parameter at a time, and then re-scores a few tokens the
trainer also scores: a wrong name, a missed bucket or a stale cache shows up as a log-prob gap
instead of as a run that quietly trains on another model's samples.

A LoRA policy (peft) is pushed as merged full weights under the base model's names: each adapted
layer's ``W + scaling * B @ A`` is computed as the engine reads it, without touching the training
module (peft's in-place merge and unmerge would leave float rounding in ``W`` at every step). The
check then compares the engine with the trainer's adapted forward pass.

May import: engines, chat, trajectory, logprobs (in agentrl.rollout), and envs, models, suggest,
seeds (lint-imports checks).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from agentrl.rollout.engines.base import Engine
from agentrl.rollout.logprobs import token_logprobs
from agentrl.rollout.trajectory import Trajectory


class WeightSyncError(RuntimeError):
    """The engine's log-probs differ from the trainer's after a weight update."""


def merged_lora_weight(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool = False,
) -> torch.Tensor:
    """``weight + scaling * lora_b @ lora_a`` (LoRA's merged linear weight), a new tensor.

    ``weight`` is ``(out, in)`` (``(in, out)`` with ``fan_in_fan_out``, GPT-2's Conv1D layout),
    ``lora_a`` ``(r, in)``, ``lora_b`` ``(out, r)``; peft's ``scaling`` is ``alpha / r``
    (``alpha / sqrt(r)`` with rsLoRA). The sum is taken in float32 and rounded once to ``weight``'s
    dtype, so a bfloat16 model gets the nearest bfloat16 of the exact merge. ``weight`` is not changed.
    """
    delta = lora_b.float() @ lora_a.float()
    if fan_in_fan_out:
        delta = delta.T
    if delta.shape != weight.shape:
        raise ValueError(
            f"LoRA update of shape {tuple(delta.shape)} does not fit a weight of {tuple(weight.shape)}"
        )
    return (weight.float() + scaling * delta).to(weight.dtype)


def _merged_layer_weight(layer: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """The weight a peft ``LoraLayer`` computes with: ``weight`` plus each active adapter's update.

    An adapter peft already merged in place is in ``weight``; with the adapters disabled the base
    weight is what runs.
    """
    if getattr(layer, "disable_adapters", False):
        return weight
    out = weight
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A or adapter in layer.merged_adapters:
            continue
        if adapter in getattr(layer, "lora_magnitude_vector", {}):
            raise ValueError("DoRA adapters cannot be pushed as a merged weight; train plain LoRA")
        out = merged_lora_weight(
            out,
            layer.lora_A[adapter].weight,
            layer.lora_B[adapter].weight,
            layer.scaling[adapter],
            getattr(layer, "fan_in_fan_out", False),
        )
    return out


def _peft_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, tensor)`` of a peft LoRA model as the base model names them, adapters merged.

    ``q_proj.base_layer.weight`` is sent as ``q_proj.weight`` with its adapters' update added; the
    adapters' own parameters (``lora_A``, ``lora_B``) are not sent. One merged layer is alive at a
    time (the engine reads the generator lazily).
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    for name, param in base.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if any(part.startswith("lora_") for part in owner.split(".")):
            continue
        if owner.endswith(".base_layer"):
            prefix = owner.removesuffix(".base_layer")
            tensor = param.detach()
            if leaf == "weight" and prefix in layers:
                tensor = _merged_layer_weight(layers[prefix], tensor)
            yield f"{prefix}.{leaf}", tensor
        else:
            yield name, param.detach()


def is_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a peft model (LoRA adapters on a frozen base)."""
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def policy_weights(model: torch.nn.Module, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, full tensor)`` for every parameter of ``model``.

    Under ZeRO-3 each parameter is gathered from its shards (a collective: every rank must iterate
    in the same order) and copied, since the gathered storage is released when the next one is
    gathered; the engine's bucket size bounds how many copies are alive at once.

    A peft LoRA model yields the base model's names with the adapters merged in (:func:`merged_lora_weight`);
    LoRA under ZeRO-3 is refused at config time, and here with ``ValueError``.
    """
    if is_lora(model):
        if zero_stage == 3:
            raise ValueError("LoRA weights cannot be gathered from ZeRO-3 shards; use train.zero_stage=2")
        yield from _peft_weights(model)
        return
    for name, param in model.named_parameters():
        if zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.detach().clone()
        else:
            yield name, param.detach()


def probe_prompts(
    trajectories: Sequence[Trajectory], max_tokens: int
) -> tuple[list[list[int]], list[list[bool]]]:
    """The check's token sequence and the tokens its gap is taken over: this step's first sample,
    cut after its first ``max_tokens`` sampled tokens, and a mask (one entry per token after the
    first) true on the sampled ones.

    The gap is taken over the sampled tokens because those are the ones whose engine log-probs the
    update uses, and where a stale engine shows: on the prompt and the observations, which no update
    trains, a fine-tuned model puts some tokens far out in the tail of its distribution, and
    bfloat16 rounding alone moves those log-probs by ~0.07 nats (docs/engines.md, "Post-sync check").
    Always exactly one sequence per rank: under ZeRO-3 the trainer's forward is a collective, so
    every rank must run the same number of them.
    """
    samples = [s for traj in trajectories for s in traj.samples if len(s.token_ids) >= 2]
    for sample in samples:
        sampled = [i for i, m in enumerate(sample.loss_mask) if m and i > 0]
        if sampled:
            end = sampled[: max(1, max_tokens)][-1] + 1
            return [list(sample.token_ids[:end])], [[bool(m) for m in sample.loss_mask[1:end]]]
    # Nothing sampled (not in training; a probe built by hand): the first tokens, all of them scored.
    ids = list(samples[0].token_ids[: max(2, max_tokens)]) if samples else [0, 0]
    return [ids], [[True] * (len(ids) - 1)]


@torch.no_grad()
def trainer_logprobs(
    model: torch.nn.Module, prompts: Sequence[list[int]], device: torch.device
) -> list[torch.Tensor]:
    """Log-prob (``T = 1``) of every token after the first, per prompt, under the trainer's weights.

    Scored in eval mode (dropout off, LoRA dropout included), which is what the engine samples
    with; the module's train/eval mode is restored afterwards.
    """
    out = []
    training = model.training
    model.eval()
    try:
        for ids in prompts:
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1]  # (1, L-1, V)
            out.append(token_logprobs(logits, x[:, 1:], 1.0)[0].float().cpu())
    finally:
        model.train(training)
    return out


def logprob_gap(
    engine: Engine,
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    device: torch.device,
    masks: Sequence[Sequence[bool]] | None = None,
) -> float:
    """Mean |engine log-prob - trainer log-prob| over the tokens of ``prompts`` (0 without prompts),
    or over those ``masks`` marks (one entry per token after the first of each prompt)."""
    if not prompts:
        return 0.0
    ours = trainer_logprobs(model, prompts, device)
    theirs = engine.prompt_logprobs([list(p) for p in prompts])
    diffs = [(torch.tensor(t) - o).abs() for t, o in zip(theirs, ours)]
    if masks is not None:
        diffs = [d[torch.tensor(list(m), dtype=torch.bool)] for d, m in zip(diffs, masks)]
    return float(torch.cat(diffs).mean())


#: Default post-sync tolerance (mean nats per sampled token) by the dtype the engine samples in.
#: Measured on the default model with vLLM's CPU build (docs/engines.md): in float32 the kernels
#: agree to ~9e-6, and one layer left stale after a 1e-3 relative weight change shows a gap of
#: 4e-4 to 1.4e-3, so 1e-4 catches it. A bfloat16 engine against the trainer's bf16 autocast
#: differs by 0.04 on the base model's T = 1 samples and 1e-3 on a warm start's (rounding alone):
#: 0.1 catches a push that did not arrive after a real update, not a small stale layer.
SYNC_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.1, "float16": 0.1}


def sync_tolerance(configured: float | None, dtype: str) -> float:
    """``configured`` (``engine.sync_tolerance``), or the default for ``dtype``."""
    return configured if configured is not None else SYNC_TOLERANCE.get(dtype, 0.1)
