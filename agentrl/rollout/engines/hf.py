"""The ``hf`` engine: batched sampling with transformers, in-process, sharing the trainer's model.

A small explicit decoding loop rather than ``model.generate``: it returns the log-prob of every
sampled token under exactly the distribution the trainer recomputes (``log_softmax(logits / T)``),
drops finished rows from the batch (and from the KV cache) as soon as they stop, and seeds each
call's sampling with its own ``torch.Generator`` so a rollout is reproducible.

May import: agentrl.rollout.engines (base, EngineSetup), agentrl.rollout.logprobs, agentrl.models.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache, PreTrainedModel

from agentrl.rollout.engines.base import EngineCapabilities, Generation, SamplingParams
from agentrl.rollout.logprobs import token_logprobs

if TYPE_CHECKING:
    from agentrl.rollout.engines import EngineSetup


def _sample(scaled: torch.Tensor, sampling: SamplingParams, row_gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row from the temperature-scaled logits (B, V), top-k/top-p filtered, each row
    drawing from its generator (one call when all rows share one stream)."""
    probs = _filter_logits(scaled, sampling.top_k, sampling.top_p).softmax(-1).cpu()
    if all(g is row_gens[0] for g in row_gens):  # one shared stream: one call
        return torch.multinomial(probs, 1, generator=row_gens[0]).squeeze(1)
    # each row draws from its own stream
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, row_gens)])


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k / the top-p nucleus with -inf. ``logits``: (B, V), already scaled."""
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class HFEngine:
    """Engine over a transformers causal LM. ``update_weights`` is a no-op: the weights are shared.

    Args:
        model: the policy (the trainer's own module, so updates are seen at once).
        pad_token_id: token used for left padding (never attended to).
        max_batch_size: prompts per forward pass; larger batches are split (memory bound).
        seed: seed of the engine's generator, used when a call gives no seed.
        share_prompts: prefill each distinct prompt of a batch once and copy its KV cache to the rows
            that share it (a GRPO group's first turn); ``False`` prefills every row (the baseline of
            ``scripts/bench_hf_engine.py``).
    """

    capabilities = EngineCapabilities(own_weights=False, same_numerics=True, sleep=False)

    def __init__(
        self,
        model: PreTrainedModel,
        pad_token_id: int,
        max_batch_size: int = 64,
        seed: int = 0,
        share_prompts: bool = True,
    ):
        self.model = model
        self.share_prompts = share_prompts
        self.pad_token_id = pad_token_id
        self.max_batch_size = max_batch_size
        self._generator = torch.Generator(device="cpu").manual_seed(seed)

    @classmethod
    def from_setup(cls, setup: EngineSetup, options: dict[str, Any]) -> HFEngine:
        """Sample from the trainer's module (``setup.model``), or load ``setup.model_path`` when
        there is no trainer (``agentrl eval``). ``options``: ``max_batch_size``, ``share_prompts``."""
        model = setup.model
        if model is None:
            from agentrl.models import load_model

            model = load_model(setup.model_path, dtype=setup.dtype, device=setup.device)
        return cls(model, setup.pad_token_id, seed=setup.seed, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Generation]:
        if not prompts:
            return []
        if sampling.row_seeds is not None:
            if len(sampling.row_seeds) != len(prompts):
                raise ValueError(f"{len(sampling.row_seeds)} row_seeds for {len(prompts)} prompts")
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in sampling.row_seeds]
        else:
            shared = self._generator
            if sampling.seed is not None:
                shared = torch.Generator(device="cpu").manual_seed(sampling.seed)
            generators = [shared] * len(prompts)
        results: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.max_batch_size):
                end = start + self.max_batch_size
                results.extend(self._generate_batch(prompts[start:end], sampling, generators[start:end]))
        finally:
            self.model.train(was_training)
        return results

    @torch.no_grad()
    def _generate_batch(
        self, prompts: list[list[int]], sampling: SamplingParams, generators: list[torch.Generator]
    ) -> list[Generation]:
        device = self.device
        batch = len(prompts)
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        last_logits, cache, attention, positions = self._prefill(prompts)
        greedy = sampling.temperature <= 0
        temperature = 1.0 if greedy else sampling.temperature
        stop = torch.tensor(sorted(set(sampling.stop_token_ids)) or [-1], device=device)

        tokens: list[list[int]] = [[] for _ in range(batch)]
        logprobs: list[list[float]] = [[] for _ in range(batch)]
        reasons = ["length"] * batch
        rows = torch.arange(batch, device=device)  # original index of each row still generating
        next_pos = positions[:, -1:] + 1
        for _ in range(sampling.max_new_tokens):
            scaled = last_logits.float() / temperature  # (b, V)
            logp = torch.log_softmax(scaled, dim=-1)
            chosen = (
                scaled.argmax(-1)
                if greedy
                else _sample(scaled, sampling, [generators[r] for r in rows.tolist()])
            )
            chosen = chosen.to(device)
            chosen_logp = logp.gather(-1, chosen[:, None]).squeeze(1)
            for r, tok, lp in zip(rows.tolist(), chosen.tolist(), chosen_logp.tolist()):
                tokens[r].append(tok)
                logprobs[r].append(lp)
            done = torch.isin(chosen, stop)
            for r in rows[done].tolist():
                reasons[r] = "stop"
            if done.all() or len(tokens[rows[0].item()]) >= sampling.max_new_tokens:
                break
            if done.any():
                # Drop finished rows from the batch and the KV cache: later steps cost only live rows.
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, chosen, attention, next_pos = rows[keep], chosen[keep], attention[keep], next_pos[keep]
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=attention,
                position_ids=next_pos,
                past_key_values=cache,
                use_cache=True,
            )
            last_logits = out.logits[:, -1, :]
            next_pos = next_pos + 1
        return [Generation(tokens[i], logprobs[i], reasons[i]) for i in range(batch)]

    def _prefill(
        self, prompts: list[list[int]]
    ) -> tuple[torch.Tensor, DynamicCache, torch.Tensor, torch.Tensor]:
        """One forward pass over the prompts: the next-token logits (B, V), the KV cache, the
        attention mask and the positions of every row (left-padded, so the next token is at -1)."""
        device = self.device
        # The episodes of a GRPO group start from one prompt: prefill each distinct prompt once, then
        # give every row a copy of its prompt's KV cache (the rows then sample independently).
        distinct: dict[tuple[int, ...], int] = {}
        if self.share_prompts:
            row_prompt = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
            unique = [list(p) for p in distinct]
        else:
            row_prompt, unique = list(range(len(prompts))), prompts
        width = max(len(p) for p in unique)
        # Left padding keeps the next-token position at column -1 for every row.
        input_ids = torch.full((len(unique), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        for i, p in enumerate(unique):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        last_logits = out.logits[:, -1, :]  # (unique, V)
        if len(unique) < len(prompts):
            expand = torch.tensor(row_prompt, device=device)
            cache.batch_select_indices(expand)
            last_logits, attention, positions = last_logits[expand], attention[expand], positions[expand]
        return last_logits, cache, attention, positions

    def update_weights(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to copy: the engine samples from the trainer's own module."""

    def sleep(self) -> None:
        """Nothing to free: the KV cache lives only inside ``generate``."""

    def wake(self) -> None:
        """See :meth:`sleep`."""

    @torch.no_grad()
    def prompt_logprobs(self, prompts: list[list[int]]) -> list[list[float]]:
        """Log-prob (``T = 1``) of every token after the first of each prompt (one forward each)."""
        out = []
        for ids in prompts:
            x = torch.tensor([ids], device=self.device)
            out.append(
                token_logprobs(self.model(input_ids=x, use_cache=False).logits[:, :-1], x[:, 1:])[0].tolist()
            )
        return out

    def close(self) -> None:
        """Nothing to release: the model belongs to the caller."""
