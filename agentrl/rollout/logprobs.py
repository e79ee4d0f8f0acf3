"""The log-probability of each sampled token: one definition for the engines, the weight-sync check
and the trainer's losses, so that behaviour and policy log-probs are computed alike.

May import: torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """The canonical per-token log-prob: ``log_softmax(logits / temperature)`` gathered at ``targets``.

    Args:
        logits: (B, L, V), position ``j`` predicting token ``targets[:, j]`` (for a causal LM pass
            ``logits[:, :-1]`` and ``input_ids[:, 1:]``).
        targets: (B, L) long.
        temperature: the sampling temperature; ``<= 0`` (greedy) means 1, as in the engine contract
            (log-probs of the temperature-scaled distribution, before top-p/top-k).

    Returns:
        (B, L) float32 (float64 if the logits are). Computed as ``logit[target] / T - logsumexp(logits / T)``,
        without materialising the (B, L, V) log-softmax; half-precision logits are upcast to float32
        (one (B, L, V) float32 temporary) so trainer and engine log-probs compare at full precision.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits (B, L, V) {tuple(logits.shape)} do not match targets (B, L) {tuple(targets.shape)}"
        )
    t = float(temperature) if temperature > 0 else 1.0
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    if t != 1.0:
        logits = logits / t
    picked = logits.gather(-1, targets.unsqueeze(-1).long()).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
