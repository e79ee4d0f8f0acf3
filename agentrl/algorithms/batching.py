"""Samples into micro-batches: :func:`pack_micro_batches` groups samples (their per-token advantages
already written by :mod:`agentrl.algorithms.credit`) into padded tensors of at most ``max_tokens``
tokens, shifted for next-token prediction. Pure data plumbing, no model.

May import: :mod:`agentrl.rollout.trajectory`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from agentrl.rollout.trajectory import Sample


@dataclass
class MicroBatch:
    """Right-padded tensors of a few samples, already shifted for next-token prediction.

    ``input_ids`` (B, L); ``targets``, ``mask``, ``old_logprobs``, ``advantages`` (B, L-1): position
    ``t`` of these holds token ``t+1`` and what the rollout recorded for it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    sample_index: list[int]
    """Index of each row in the list given to :func:`pack_micro_batches`."""
    samples: list[Sample] = field(default_factory=list)
    """The sample of each row."""

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> MicroBatch:
        return MicroBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.targets, self.mask)),
            self.old_logprobs.to(device),
            self.advantages.to(device),
            self.sample_index,
            self.samples,
        )


def _collate(samples: Sequence[Sample], index: list[int], pad_id: int) -> MicroBatch:
    width = max(len(s.token_ids) for s in samples)
    n = len(samples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    logp = torch.zeros((n, width), dtype=torch.float32)
    adv = torch.zeros((n, width), dtype=torch.float32)
    for i, s in enumerate(samples):
        k = len(s.token_ids)
        ids[i, :k] = torch.tensor(s.token_ids)
        attn[i, :k] = 1
        mask[i, :k] = torch.tensor(s.loss_mask, dtype=torch.float32)
        logp[i, :k] = torch.tensor(s.logprobs, dtype=torch.float32)
        adv[i, :k] = torch.tensor(s.advantages or [0.0] * k, dtype=torch.float32)
    return MicroBatch(ids, attn, ids[:, 1:], mask[:, 1:], logp[:, 1:], adv[:, 1:], index, list(samples))


def pack_micro_batches(samples: Sequence[Sample], max_tokens: int, pad_id: int) -> list[MicroBatch]:
    """Group samples into micro-batches of at most ``max_tokens`` padded tokens (longest first).

    A sample longer than ``max_tokens`` gets a micro-batch of its own.
    """
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i].token_ids))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = len(samples[current[0]].token_ids) if current else len(samples[i].token_ids)
        if current and (len(current) + 1) * width > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return [_collate([samples[i] for i in b], b, pad_id) for b in batches]
