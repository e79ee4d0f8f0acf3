"""HF engine: prefill shared by the rows of a group vs every row prefilled, in the same process.

A GRPO step's first turn sends each env's prompt ``--group-size`` times. With ``share_prompts`` the
engine prefills each distinct prompt once and copies its KV cache; the samples are the same (per-row
seeds), only the time changes. Prints both times and their ratio (baseline / shared; > 1 is faster).

    python scripts/bench_hf_engine.py                       # default model, 4 groups of 4, 330-token prompts
    python scripts/bench_hf_engine.py --model tiny-random   # quick check
"""

from __future__ import annotations

import argparse
import time

import torch

from agentrl.models import load_model, load_tokenizer, resolve_model_path
from agentrl.rollout.engines.base import SamplingParams
from agentrl.rollout.engines.hf import HFEngine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=330, help="about the Sokoban system prompt + grid")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of each (best kept), after a warm-up")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = resolve_model_path(args.model)
    model, tok = load_model(path), load_tokenizer(path)
    gen = torch.Generator().manual_seed(0)
    vocab = min(len(tok), model.config.vocab_size)
    groups = [
        torch.randint(0, vocab, (args.prompt_tokens + g,), generator=gen).tolist() for g in range(args.groups)
    ]
    prompts = [p for p in groups for _ in range(args.group_size)]
    sampling = SamplingParams(
        max_new_tokens=args.new_tokens, temperature=1.0, row_seeds=list(range(len(prompts)))
    )
    engines = {
        "every row prefilled": HFEngine(model, tok.pad_token_id, share_prompts=False),
        "shared prefill": HFEngine(model, tok.pad_token_id, share_prompts=True),
    }
    outputs, best = {}, {}
    for name, engine in engines.items():
        outputs[name] = engine.generate(prompts, sampling)  # warm-up
    for _ in range(args.repeats):  # alternate, so load on the machine hits both alike
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.generate(prompts, sampling)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
    a, b = outputs.values()
    same = all(x.token_ids == y.token_ids for x, y in zip(a, b))
    drift = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.logprobs, y.logprobs))
    print(
        f"{len(prompts)} prompts ({args.groups} groups x {args.group_size}), ~{args.prompt_tokens} tokens, "
        f"{args.new_tokens} new tokens"
    )
    for name, seconds in best.items():
        print(f"{name:>20}: {seconds:.2f} s")
    base, shared = best["every row prefilled"], best["shared prefill"]
    print(
        f"ratio (baseline / shared): {base / shared:.2f}x | same tokens: {same} | max log-prob diff {drift:.1e}"
    )


if __name__ == "__main__":
    main()
