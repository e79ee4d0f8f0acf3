"""After each update the engine must sample from the new weights: push them, then check they arrived.

The ``hf`` engine samples from the trainer's own module, so it has nothing to push and nothing to
check. An engine with its own copy of the weights (vLLM) gets every parameter by its Hugging Face
name, gathered from ZeRO-3 shards one parameter at a time, and then re-scores a few tokens the
trainer also scores: a wrong name, a missed bucket or a stale cache shows up as a log-prob gap
instead of as a run that quietly trains on another model's samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from agentrl.engines.base import Engine
from agentrl.losses import token_logprobs
from agentrl.trajectory import Trajectory


class WeightSyncError(RuntimeError):
    """The engine's log-probs differ from the trainer's after a weight update."""


def policy_weights(model: torch.nn.Module, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """``(HF name, full tensor)`` for every parameter of ``model``.

    Under ZeRO-3 each parameter is gathered from its shards (a collective: every rank must iterate
    in the same order) and copied, since the gathered storage is released when the next one is
    gathered; the engine's bucket size bounds how many copies are alive at once.
    """
    for name, param in model.named_parameters():
        if zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([param]):
                yield name, param.detach().clone()
        else:
            yield name, param.detach()


def probe_prompts(trajectories: Sequence[Trajectory], max_tokens: int) -> list[list[int]]:
    """The token sequence for the check: this step's first sample, cut to ``max_tokens``.

    Always exactly one sequence per rank: under ZeRO-3 the trainer's forward is a collective, so
    every rank must run the same number of them.
    """
    for traj in trajectories:
        for sample in traj.samples:
            if len(sample.token_ids) >= 2:
                return [list(sample.token_ids[: max(2, max_tokens)])]
    return [[0, 0]]  # no sample at all (cannot happen in training): still one forward


@torch.no_grad()
def trainer_logprobs(
    model: torch.nn.Module, prompts: Sequence[list[int]], device: torch.device
) -> list[torch.Tensor]:
    """Log-prob (``T = 1``) of every token after the first, per prompt, under the trainer's weights."""
    out = []
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        logits = model(input_ids=x, use_cache=False).logits[:, :-1]  # (1, L-1, V)
        out.append(token_logprobs(logits, x[:, 1:], 1.0)[0].float().cpu())
    return out


def logprob_gap(
    engine: Engine, model: torch.nn.Module, prompts: Sequence[list[int]], device: torch.device
) -> float:
    """Mean |engine log-prob - trainer log-prob| over the tokens of ``prompts`` (0 without prompts)."""
    if not prompts:
        return 0.0
    ours = trainer_logprobs(model, prompts, device)
    theirs = engine.prompt_logprobs([list(p) for p in prompts])
    diffs = [(torch.tensor(t) - o).abs() for t, o in zip(theirs, ours)]
    return float(torch.cat(diffs).mean())


#: Default post-sync tolerance (mean nats per token) by the dtype engine and trainer run in.
#: Measured on the default model with vLLM's CPU build (docs/engines.md): in float32 the kernels
#: agree to ~9e-6, and one layer left stale after a 1e-3 relative weight change shows a gap of
#: 4e-4 to 1.4e-3, so 1e-4 catches it; bfloat16 kernels alone differ by ~1e-2.
SYNC_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05, "float16": 0.05}


def sync_tolerance(configured: float | None, dtype: str) -> float:
    """``configured`` (``engine.sync_tolerance``), or the default for ``dtype``."""
    return configured if configured is not None else SYNC_TOLERANCE.get(dtype, 0.05)
