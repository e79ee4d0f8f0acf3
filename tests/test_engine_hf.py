"""HFEngine: seeding, greedy decoding, stop tokens, dropping finished rows, top-k, log-probs, edge cases."""

from __future__ import annotations

import pytest
import torch

from agentrl.rollout.engines.base import Engine, SamplingParams
from agentrl.rollout.engines.hf import HFEngine
from agentrl.rollout.logprobs import token_logprobs

PROMPTS = [[100, 200, 300], [1000, 2000], [5000, 6000, 7000, 8000, 9000]]


@pytest.fixture()
def engine(tiny_model, tokenizer):
    return HFEngine(tiny_model, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture()
def chain_engine(tiny_model, tokenizer):
    """The tiny model with its output head rolled by one row: greedy decoding after token ``x`` picks
    ``x + 1`` (the residual stream of a random 2-layer model is dominated by the input embedding), so
    each row walks a known, distinct chain of tokens and stop tokens can end rows at chosen steps."""
    model = tiny_model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(
        torch.roll(model.model.embed_tokens.weight.detach().clone(), 1, 0)
    )
    return HFEngine(model, pad_token_id=tokenizer.pad_token_id)


def test_is_an_engine(engine):
    assert isinstance(engine, Engine)


def test_empty_prompt_list(engine):
    assert engine.generate([], SamplingParams(max_new_tokens=4)) == []


def test_empty_prompt_is_refused(engine):
    with pytest.raises(ValueError, match="at least one token"):
        engine.generate([[1, 2], []], SamplingParams(max_new_tokens=2))


def test_same_seed_same_samples(engine, tiny_model, tokenizer):
    sp = SamplingParams(max_new_tokens=6, temperature=1.0, seed=123)
    a = engine.generate(PROMPTS, sp)
    b = engine.generate(PROMPTS, sp)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.logprobs for g in a] == [g.logprobs for g in b]
    c = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=1.0, seed=124))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    # Without a per-call seed, two engines seeded alike draw alike.
    e1 = HFEngine(tiny_model, tokenizer.pad_token_id, seed=7)
    e2 = HFEngine(tiny_model, tokenizer.pad_token_id, seed=7)
    sp = SamplingParams(max_new_tokens=4, temperature=1.0)
    assert [g.token_ids for g in e1.generate(PROMPTS, sp)] == [g.token_ids for g in e2.generate(PROMPTS, sp)]


def _argmax_decode(model, prompt, n):
    ids = list(prompt)
    out, lps = [], []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            tok = int(logits.argmax())
            out.append(tok)
            lps.append(float(torch.log_softmax(logits, -1)[tok]))
            ids.append(tok)
    return out, lps


def test_greedy_equals_argmax(chain_engine):
    model = chain_engine.model
    gens = chain_engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=0))
    for prompt, gen in zip(PROMPTS, gens):
        toks, lps = _argmax_decode(model, prompt, 5)
        assert gen.token_ids == toks
        assert gen.finish_reason == "length"
        # greedy log-probs are those of the untempered distribution (T = 1)
        assert gen.logprobs == pytest.approx(lps, abs=1e-4)


def test_top_k_1_equals_greedy(engine):
    greedy = engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=0))
    topk = engine.generate(PROMPTS, SamplingParams(max_new_tokens=5, temperature=1.0, top_k=1, seed=3))
    assert [g.token_ids for g in topk] == [g.token_ids for g in greedy]
    # at T = 1 the log-probs (before truncation) agree too
    for a, b in zip(topk, greedy):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_stop_tokens_end_rows_and_finished_rows_are_dropped(chain_engine):
    """Rows stop at different steps (stop token included); live rows go on, alone in the batch."""
    model = chain_engine.model
    free = chain_engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0))
    chains = [g.token_ids for g in free]
    assert all(len(set(c)) == 8 for c in chains)  # distinct tokens along each chain
    stop = [chains[0][1], chains[1][4]]  # row 0 stops after 2 tokens, row 1 after 5, row 2 never
    assert not set(stop) & set(chains[2]) and chains[0][1] not in chains[1]

    batch_sizes = []
    hook = model.register_forward_hook(
        lambda mod, args, kwargs, out: batch_sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        gens = chain_engine.generate(
            PROMPTS, SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=stop)
        )
    finally:
        hook.remove()
    assert gens[0].token_ids == chains[0][:2] and gens[0].finish_reason == "stop"
    assert gens[1].token_ids == chains[1][:5] and gens[1].finish_reason == "stop"
    assert gens[2].token_ids == chains[2] and gens[2].finish_reason == "length"
    assert [len(g.logprobs) for g in gens] == [2, 5, 8]
    for g, f in zip(gens, free):
        assert g.logprobs == pytest.approx(f.logprobs[: len(g.logprobs)], abs=1e-5)
    # prefill with 3 rows, then 3, 2, 2, 2, 1, 1, 1 rows as rows finish
    assert batch_sizes == [3, 3, 2, 2, 2, 1, 1, 1]


def test_stop_on_first_token(chain_engine):
    first = chain_engine.generate([[100, 200]], SamplingParams(max_new_tokens=3, temperature=0))[0].token_ids[
        0
    ]
    gen = chain_engine.generate(
        [[100, 200]], SamplingParams(max_new_tokens=3, temperature=0, stop_token_ids=[first])
    )
    assert gen[0].token_ids == [first] and gen[0].finish_reason == "stop"


def test_sampled_logprobs_match_a_forward_pass(engine):
    """Left-padded batched sampling at T=0.7 returns log_softmax(logits / T) of the sampled tokens."""
    model = engine.model
    gens = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.9, seed=5))
    with torch.no_grad():
        for prompt, gen in zip(PROMPTS, gens):
            ids = torch.tensor([prompt + gen.token_ids])
            logits = model(ids).logits
            lp = token_logprobs(logits[:, :-1], ids[:, 1:], 0.7)[0, len(prompt) - 1 :]
            assert torch.allclose(lp, torch.tensor(gen.logprobs), atol=1e-4)


def test_max_batch_size_splits(tiny_model, tokenizer):
    small = HFEngine(tiny_model, tokenizer.pad_token_id, max_batch_size=2)
    big = HFEngine(tiny_model, tokenizer.pad_token_id)
    sp = SamplingParams(max_new_tokens=4, temperature=0)
    assert [g.token_ids for g in small.generate(PROMPTS, sp)] == [
        g.token_ids for g in big.generate(PROMPTS, sp)
    ]


def test_restores_training_mode(engine):
    engine.model.train()
    engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=1))
    assert engine.model.training


def test_shared_prefill_gives_the_same_samples_as_prefilling_every_row(tiny_model, tokenizer):
    """Two groups of 3 identical prompts and a lone one of another length, per-row seeds and a stop
    token: copying a prompt's KV cache to its rows changes nothing but the time."""
    a, b, c = [5, 6, 7, 8, 9], [11, 12, 13], [21, 22, 23, 24, 25, 26, 27]
    prompts = [a, a, a, b, b, b, c]
    sampling = SamplingParams(
        max_new_tokens=12, temperature=1.0, row_seeds=[3, 4, 5, 6, 7, 8, 9], stop_token_ids=[200, 300, 400]
    )
    shared = HFEngine(tiny_model, tokenizer.pad_token_id).generate(prompts, sampling)
    each = HFEngine(tiny_model, tokenizer.pad_token_id, share_prompts=False).generate(prompts, sampling)
    assert [g.token_ids for g in shared] == [g.token_ids for g in each]
    assert [g.finish_reason for g in shared] == [g.finish_reason for g in each]
    for x, y in zip(shared, each):
        torch.testing.assert_close(torch.tensor(x.logprobs), torch.tensor(y.logprobs), rtol=0, atol=1e-5)
    assert shared[0].token_ids != shared[1].token_ids  # rows of a group still sample independently
