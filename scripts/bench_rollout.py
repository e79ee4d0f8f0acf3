"""Rollout throughput: raw vLLM, agentrl's rollout manager over vLLM, and over the HF engine.

One command measures, on the same workload (``--groups x --group-size`` episodes of ``--env``,
``--turns`` turns, ``--new-tokens`` per reply, a fixed sampling seed), for each engine and dtype:

* **manager**: the rollout manager playing the real env (templating, parsing, env steps, trajectory
  bookkeeping) around the engine's ``generate`` calls, which a wrapper records;
* **adapter**: exactly those calls replayed on agentrl's engine (same prompts, params and seeds);
* **raw vLLM** (vLLM only): the same requests straight into ``vllm.LLM.generate``, with the request
  objects built before the clock starts.

On vLLM the three alternate ``--repeats`` times (best of each is kept); the manager's own time
(outside ``generate``) is printed too: it is the robust measure of agentrl's overhead.

Each (engine, dtype) runs in a child process of this command (vLLM holds process-wide state) one
after the other, and the parent prints generated tokens per second and the ratios: manager over
vLLM / raw vLLM (agentrl's overhead) and vLLM / HF at the same dtype. vLLM runs a warm-up manager
pass first (first-call kernel set-up), HF needs none. Also printed: vLLM's start-up time.

Usage::

    python scripts/bench_rollout.py                          # hf and vllm, float32 and bfloat16
    python scripts/bench_rollout.py --engines vllm --dtypes float32 --groups 4
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import torch

from agentrl.models import load_tokenizer, resolve_model_path
from agentrl.rollout.engines import EngineSetup, start_engine
from agentrl.rollout.manager import RolloutConfig, RolloutManager


class Recorder:
    """Engine wrapper that records every call and its generated token count."""

    def __init__(self, inner):
        self.inner = inner
        self.capabilities = inner.capabilities
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
    )
    start = time.perf_counter()
    mgr = RolloutManager(rec, tokenizer, args.env, cfg)
    trajs = mgr.rollout(list(range(args.seed, args.seed + args.groups)), sampling_seed=args.seed)
    mgr.close()
    elapsed = time.perf_counter() - start
    tokens = sum(t.num_sampled_tokens for t in trajs)
    return elapsed, tokens, rec


def run_adapter(engine, calls) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = sum(
        len(g.token_ids) for prompts, sampling, _ in calls for g in engine.generate(prompts, sampling)
    )
    return time.perf_counter() - start, tokens


def run_raw_vllm(engine, calls) -> tuple[float, int]:
    """The same requests straight into ``vllm.LLM.generate`` (request objects built beforehand)."""
    from vllm.inputs import TokensPrompt

    requests = []
    for prompts, sampling, _ in calls:
        reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        params = [engine._sampling_params(sampling, i) for i in range(len(prompts))]
        requests.append((reqs, params))
    start = time.perf_counter()
    tokens = 0
    for reqs, params in requests:
        outs = engine.llm.generate(reqs, params, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    return time.perf_counter() - start, tokens


def child(args) -> dict:
    """Measure one engine at one dtype; return the figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    setup = EngineSetup(
        model_path=path,
        pad_token_id=tokenizer.pad_token_id,
        dtype=args.dtype,
        seed=args.seed,
        max_context_tokens=args.max_context,
        max_sequences=args.groups * args.group_size,
    )
    t0 = time.perf_counter()
    engine, note = start_engine(args.engine, setup, {"hf": {}, "vllm": {}})
    result = {"engine": args.engine, "dtype": args.dtype, "start_s": time.perf_counter() - t0, "note": note}
    if args.engine == "vllm":
        result["warmup_s"] = run_manager(engine, tokenizer, args)[0]
    # Alternate manager / adapter / raw ``--repeats`` times and keep the best of each: the machine's
    # load swings single runs by 20-30%.
    for _ in range(args.repeats if args.engine == "vllm" else 1):
        t, tokens, rec = run_manager(engine, tokenizer, args)
        if t < result.get("manager_s", float("inf")):
            result.update(manager_s=t, tokens=tokens, manager_generate_s=rec.gen_time, calls=len(rec.calls))
        t, adapter_tokens = run_adapter(engine, rec.calls)
        if t < result.get("adapter_s", float("inf")):
            result.update(adapter_s=t, adapter_tokens=adapter_tokens)
        if args.engine == "vllm":
            t, raw_tokens = run_raw_vllm(engine, rec.calls)
            if t < result.get("raw_s", float("inf")):
                result.update(raw_s=t, raw_tokens=raw_tokens)
    engine.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--env", default="sokoban")
    ap.add_argument("--groups", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--max-context", type=int, default=2048)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating repeats on vLLM (HF: 1, it is slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--engine", help=argparse.SUPPRESS)  # child mode: one engine
    ap.add_argument("--dtype", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.engine:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    print(
        f"env {args.env}: {args.groups} groups x {args.group_size}, {args.turns} turns, {args.new_tokens} "
        f"new tokens, T={args.temperature}; machine: {torch.get_num_threads()} torch threads",
        flush=True,
    )
    passthrough = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("engines", "dtypes", "engine", "dtype")
    ]
    results = {}
    for dtype in args.dtypes.split(","):
        for engine in args.engines.split(","):
            cmd = [sys.executable, __file__, *passthrough, "--engine", engine, "--dtype", dtype]
            done = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(f"{engine} {dtype}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            r = json.loads(line[7:])
            results[(engine, dtype)] = r
            text = f"{engine:5s} {dtype:9s} manager {r['tokens'] / r['manager_s']:7.1f} tok/s"
            text += f" | adapter {r['adapter_tokens'] / r['adapter_s']:7.1f} tok/s"
            if "raw_s" in r:
                text += f" | raw vLLM {r['raw_tokens'] / r['raw_s']:7.1f} tok/s | start {r['start_s']:.0f} s"
            own = r["manager_s"] - r["manager_generate_s"]
            text += f" ({r['tokens']} tokens, {r['calls']} calls; manager's own time {own:.2f} s)"
            print(text, flush=True)

    for dtype in args.dtypes.split(","):
        v, h = results.get(("vllm", dtype)), results.get(("hf", dtype))
        if v:
            ratio = (v["tokens"] / v["manager_s"]) / (v["raw_tokens"] / v["raw_s"])
            print(f"ratio manager over vLLM / raw vLLM ({dtype}): {ratio:.3f}")
        if v and h:
            ratio = (v["tokens"] / v["manager_s"]) / (h["tokens"] / h["manager_s"])
            print(f"ratio vLLM / HF engine, rollout manager ({dtype}): {ratio:.2f}")


if __name__ == "__main__":
    main()
