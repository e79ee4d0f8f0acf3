"""Rollout-manager overhead: the same generation workload through the raw engine and through the manager.

The manager plays real envs (templating, parsing, env steps, trajectory bookkeeping) around the
engine's ``generate`` calls. To measure what that costs, the script

1. runs the manager (``--groups x --group-size`` episodes of ``--env``, ``--turns`` turns,
   ``--new-tokens`` per reply, a fixed sampling seed) with a recording wrapper around the engine that
   keeps every ``generate`` call's prompts and sampling params;
2. replays exactly those calls on the bare engine (same prompts, same params, same seeds, so the same
   tokens are sampled: the script checks the token counts match);
3. repeats both ``--repeats`` times, alternating, and reports the best time of each as generated
   tokens per second and their ratio (manager / raw; 1.0 means no overhead).

Usage::

    python scripts/bench_rollout.py                     # the default model (SmolLM2-135M-Instruct), CPU
    python scripts/bench_rollout.py --model tiny-random --groups 2 --group-size 2
    python scripts/bench_rollout.py --profile           # cProfile of one manager run (top functions)
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import pstats
import time

import torch

from agentrl.engines.hf import HFEngine
from agentrl.models import load_model, load_tokenizer, resolve_model_path
from agentrl.rollout import RolloutConfig, RolloutManager


class Recorder:
    """Engine wrapper that records every call and its generated token count."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []
        self.gen_time = 0.0

    def generate(self, prompts, sampling):
        start = time.perf_counter()
        out = self.inner.generate(prompts, sampling)
        self.gen_time += time.perf_counter() - start
        self.calls.append(
            ([list(p) for p in prompts], copy.copy(sampling), sum(len(g.token_ids) for g in out))
        )
        return out

    def update_weights(self, named_params):
        self.inner.update_weights(named_params)

    def sleep(self):
        self.inner.sleep()

    def wake(self):
        self.inner.wake()


def run_manager(engine, tokenizer, args):
    rec = Recorder(engine)
    cfg = RolloutConfig(
        group_size=args.group_size,
        max_turns=args.turns,
        max_new_tokens=args.new_tokens,
        max_context_tokens=args.max_context,
        temperature=args.temperature,
        env_workers=args.env_workers,
    )
    start = time.perf_counter()
    mgr = RolloutManager(rec, tokenizer, args.env, cfg)
    trajs = mgr.rollout(list(range(args.seed, args.seed + args.groups)), sampling_seed=args.seed)
    mgr.close()
    elapsed = time.perf_counter() - start
    tokens = sum(t.num_sampled_tokens for t in trajs)
    assert tokens == sum(c[2] for c in rec.calls)
    return elapsed, tokens, rec, trajs


def run_raw(engine, calls):
    start = time.perf_counter()
    tokens = 0
    for prompts, sampling, _ in calls:
        tokens += sum(len(g.token_ids) for g in engine.generate(prompts, sampling))
    return time.perf_counter() - start, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--env", default="sokoban")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--max-context", type=int, default=4096)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--env-workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also cProfile one manager run")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_model(path)
    engine = HFEngine(model, pad_token_id=tokenizer.pad_token_id)
    print(
        f"model {path}\nenv {args.env}: {args.groups} groups x {args.group_size}, {args.turns} turns, "
        f"{args.new_tokens} new tokens, T={args.temperature}; torch threads {torch.get_num_threads()}"
    )

    # Warm-up (first-call costs) and the workload to replay.
    t, _, rec, _ = run_manager(engine, tokenizer, args)
    print(f"warm-up manager run: {t:.1f} s", flush=True)
    calls = rec.calls
    prompt_tokens = sum(len(p) for c in calls for p in c[0])
    print(f"workload: {len(calls)} generate calls, {prompt_tokens} prompt tokens")

    best_mgr = best_raw = float("inf")
    mgr_tokens = raw_tokens = 0
    mgr_gen_time = 0.0
    for r in range(args.repeats):
        t, mgr_tokens, rec, _ = run_manager(engine, tokenizer, args)
        if t < best_mgr:
            best_mgr, mgr_gen_time = t, rec.gen_time
        t, raw_tokens = run_raw(engine, calls)
        best_raw = min(best_raw, t)
        print(
            f"  repeat {r}: manager {mgr_tokens / best_mgr:.1f} tok/s (best so far), raw {raw_tokens / t:.1f} tok/s"
        )
    if mgr_tokens != raw_tokens:
        print(
            f"WARNING: token counts differ (manager {mgr_tokens}, raw {raw_tokens}): sampling is not reproducible"
        )

    raw_tps, mgr_tps = raw_tokens / best_raw, mgr_tokens / best_mgr
    print(f"generated tokens: {mgr_tokens} (manager) / {raw_tokens} (raw)")
    print(f"raw engine   : {best_raw:8.2f} s  {raw_tps:8.1f} tok/s")
    print(f"manager      : {best_mgr:8.2f} s  {mgr_tps:8.1f} tok/s  (of which generate {mgr_gen_time:.2f} s)")
    print(f"ratio manager/raw: {mgr_tps / raw_tps:.3f}")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_manager(engine, tokenizer, args)
        prof.disable()
        stats = pstats.Stats(prof).sort_stats("cumulative")
        stats.print_stats(r"agentrl|envs|tokeniz", 25)


if __name__ == "__main__":
    main()
