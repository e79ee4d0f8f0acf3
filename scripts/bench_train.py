"""Update-phase throughput: agentrl's trainer against a bare PyTorch training step over the same tokens.

The script

1. builds a synthetic but realistic rollout batch: ``--trajectories`` one-sample episodes of about
   ``--tokens`` tokens each (lengths spread +-1/3 around it), laid out as a multi-turn episode would
   be: a prompt (loss mask 0), then replies (mask 1) and templated observations (mask 0) in turns.
   Token ids are random; the "rollout" log-probs are the model's own (one no-grad forward), so the
   PPO ratio starts at 1 as on-policy; advantages are a nonzero value per episode (+-0.5 to +-1.5),
   spread over its sampled tokens;
2. builds the policy through the trainer's own code path (``agentrl.training.policy.build_policy``: the
   model wrapped in DeepSpeed ZeRO-``--zero-stage`` with AdamW, grad clipping 1.0) and times
   ``agentrl.training.update.update`` (one optimizer step over the batch: PPO-clip loss, token-mean);
3. times a bare PyTorch step on a separate copy of the same weights over the *same* micro-batches
   (``pack_micro_batches`` with the same token budget and padding): forward, ``log_softmax`` gather of
   the targets, loss ``sum(-logp * adv * mask) / n_masked``, backward per micro-batch, then
   ``clip_grad_norm_(1.0)`` and ``AdamW.step()``; twice: in float32, and under
   ``torch.autocast(bfloat16)`` over the same float32 weights (what ``train.autocast`` does);
4. runs one untimed warm-up of each (AdamW allocates its state on the first step), then
   ``--repeats`` of each, alternating, and reports the best time of each, and the ratios: agentrl
   against bare PyTorch in agentrl's own precision, and bare bf16 against bare fp32.

agentrl's update runs in the precision ``train.autocast`` picks (``--autocast``, default ``auto``:
bfloat16 on a CPU with bf16 instructions).

Tokens are counted the same way for both: the non-pad input tokens of the micro-batches (what the
forward passes process). The masked (trained) token count is printed too.

Usage::

    python scripts/bench_train.py                          # default model, ZeRO-0, CPU
    python scripts/bench_train.py --zero-stage 2
    python scripts/bench_train.py --model tiny-random      # quick check
    python scripts/bench_train.py --profile                # + cProfile of one agentrl update
    python scripts/bench_train.py --with-vllm              # + the update with a vLLM engine resident

``--with-vllm`` then starts a vLLM engine in the same process (as a run does), generates once, and
times agentrl's update again: the ratio says whether an idle vLLM slows the trainer (its CPU
worker pins torch to one thread unless agentrl restores the count).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import time

import torch

from agentrl.algorithms.batching import pack_micro_batches
from agentrl.config import load_config
from agentrl.models import load_model, resolve_model_path
from agentrl.rollout.trajectory import Sample, Trajectory, Turn
from agentrl.training.distributed import init_distributed
from agentrl.training.policy import build_policy, quiet_libraries
from agentrl.training.update import update


def synthetic_batch(n: int, tokens: int, vocab: int, seed: int) -> list[Trajectory]:
    """``n`` one-sample multi-turn episodes of about ``tokens`` tokens (mask 1 on the replies)."""
    rng = random.Random(seed)
    trajectories = []
    for e in range(n):
        length = rng.randint(max(8, tokens * 2 // 3), max(9, tokens * 4 // 3))
        prompt = max(2, length * 3 // 10)
        sample = Sample()
        sample.extend([rng.randrange(vocab) for _ in range(prompt)], sampled=False)
        turns = []
        adv = rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)
        while len(sample.token_ids) < length:
            left = length - len(sample.token_ids)
            reply = min(left, rng.randint(32, 96))
            start, end = sample.extend(
                [rng.randrange(vocab) for _ in range(reply)], sampled=True, logprobs=[0.0] * reply
            )
            turns.append(Turn(observation=f"obs {e}.{len(turns)}", response_span=(start, end), reward=adv))
            left = length - len(sample.token_ids)
            if left > 0:
                obs = min(left, rng.randint(40, 80))
                sample.extend([rng.randrange(vocab) for _ in range(obs)], sampled=False)
        sample.advantages = [adv if m else 0.0 for m in sample.loss_mask]
        trajectories.append(
            Trajectory(env="synthetic", seed=e, group=e // 4, turns=turns, samples=[sample], episode_id=e)
        )
    return trajectories


@torch.no_grad()
def fill_rollout_logprobs(model: torch.nn.Module, trajectories: list[Trajectory], micro_tokens: int) -> None:
    """Set each sampled token's "rollout" log-prob to the model's own (PPO ratio 1 at the start)."""
    samples = [s for t in trajectories for s in t.samples]
    for b in pack_micro_batches(samples, micro_tokens, 0):
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(b.sample_index):
            s = samples[i]
            s.logprobs = [0.0] + [
                float(v) if m else 0.0 for v, m in zip(logp[row, : len(s.token_ids) - 1], s.loss_mask[1:])
            ]


class BareStep:
    """Plain PyTorch: the same micro-batches, a simple policy-gradient loss, AdamW."""

    def __init__(
        self, model: torch.nn.Module, lr: float, weight_decay: float, grad_clip: float, bf16: bool = False
    ):
        self.bf16 = bf16
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.grad_clip = grad_clip

    def __call__(self, micro) -> None:
        n_tok = max(1, sum(int(b.mask.sum()) for b in micro))
        self.opt.zero_grad(set_to_none=True)
        for b in micro:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(
                    input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False
                ).logits
            logp = (
                torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, b.targets.unsqueeze(-1)).squeeze(-1)
            )
            loss = -(logp * b.advantages * b.mask).sum() / n_tok
            loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--trajectories", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=450, help="mean tokens per trajectory (spread +-1/3)")
    ap.add_argument("--micro-batch-tokens", type=int, default=4096, help="train.micro_batch_tokens")
    ap.add_argument("--repeats", type=int, default=3, help="timed updates of each (after one warm-up)")
    ap.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also cProfile one agentrl update")
    ap.add_argument("--with-vllm", action="store_true", help="also time the update with vLLM resident")
    ap.add_argument(
        "--autocast", default="auto", choices=["auto", "bfloat16", "off"], help="agentrl's train.autocast"
    )
    args = ap.parse_args()

    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once in a log file
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_libraries()
    torch.manual_seed(args.seed)
    cfg = load_config(
        env="sokoban",
        model=args.model,
        overrides=[
            "train.device=cpu",
            f"train.zero_stage={args.zero_stage}",
            f"train.micro_batch_tokens={args.micro_batch_tokens}",
            f"train.seed={args.seed}",
            "train.steps=1000",
            f"train.autocast={args.autocast}",
        ],
    )
    world = init_distributed("cpu")
    policy = build_policy(cfg, torch.device("cpu"))
    bare_model = load_model(resolve_model_path(cfg.model.path), dtype="float32", device="cpu")
    bare = BareStep(bare_model, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip)
    bare16_model = load_model(resolve_model_path(cfg.model.path), dtype="float32", device="cpu")
    bare16 = BareStep(bare16_model, cfg.train.lr, cfg.train.weight_decay, cfg.train.grad_clip, bf16=True)
    ours_label = "bf16 autocast" if policy.autocast is not None else "fp32"
    pad_id = policy.tokenizer.pad_token_id

    trajectories = synthetic_batch(args.trajectories, args.tokens, len(policy.tokenizer), args.seed)
    fill_rollout_logprobs(bare_model, trajectories, cfg.train.micro_batch_tokens)
    samples = [s for t in trajectories for s in t.samples]
    micro = pack_micro_batches(samples, cfg.train.micro_batch_tokens, pad_id)
    input_tokens = sum(int(b.attention_mask.sum()) for b in micro)
    padded_tokens = sum(b.input_ids.numel() for b in micro)
    masked_tokens = sum(b.num_tokens for b in micro)
    n_params = sum(p.numel() for p in bare_model.parameters())
    print(
        f"model {cfg.model.path or 'SmolLM2-135M-Instruct'} ({n_params / 1e6:.1f}M params, fp32 weights; "
        f"agentrl in {ours_label}) | "
        f"ZeRO-{args.zero_stage} | torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"batch: {len(trajectories)} trajectories, {input_tokens} input tokens ({padded_tokens} padded) "
        f"in {len(micro)} micro-batches of <= {cfg.train.micro_batch_tokens} tokens, {masked_tokens} masked"
    )

    def run_ours(step: int) -> float:
        start = time.perf_counter()
        out = update(cfg, policy, trajectories, step, world, temperature=1.0)
        elapsed = time.perf_counter() - start
        if int(out["train/trained_tokens"]) != masked_tokens:
            raise RuntimeError(
                f"agentrl trained {out['train/trained_tokens']} tokens, expected {masked_tokens}"
            )
        return elapsed

    def run_bare(step: BareStep) -> float:
        start = time.perf_counter()
        step(micro)
        return time.perf_counter() - start

    warm = run_ours(1), run_bare(bare), run_bare(bare16)
    print(f"warm-up: agentrl {warm[0]:.2f} s, bare fp32 {warm[1]:.2f} s, bare bf16 {warm[2]:.2f} s")
    ours, base, base16 = [], [], []
    for r in range(args.repeats):
        ours.append(run_ours(r + 2))
        base.append(run_bare(bare))
        base16.append(run_bare(bare16))
        print(
            f"repeat {r + 1}: agentrl {ours[-1]:.2f} s, bare fp32 {base[-1]:.2f} s, bare bf16 {base16[-1]:.2f} s"
        )

    t_ours, t_bare, t_bare16 = min(ours), min(base), min(base16)
    print()
    print("| | best update time | input tokens/s | masked tokens/s |")
    print("| --- | --- | --- | --- |")
    for name, t in (
        (f"agentrl `update` ({ours_label})", t_ours),
        ("bare PyTorch fp32", t_bare),
        ("bare PyTorch bf16 autocast", t_bare16),
    ):
        print(f"| {name} | {t:.2f} s | {input_tokens / t:.1f} | {masked_tokens / t:.1f} |")
    same = t_bare16 if policy.autocast is not None else t_bare
    print(f"ratio agentrl/bare in the same precision (tokens/s): {same / t_ours:.3f}")
    print(f"ratio agentrl ({ours_label}) / bare fp32 (tokens/s): {t_bare / t_ours:.3f}")
    print(f"ratio bare bf16 / bare fp32 (tokens/s): {t_bare / t_bare16:.3f}")

    if args.with_vllm:
        from agentrl.rollout.engines import SamplingParams
        from agentrl.rollout.engines.vllm import VLLMEngine

        engine = VLLMEngine(
            resolve_model_path(cfg.model.path),
            dtype="float32",
            max_model_len=2048,
            kv_cache_memory_bytes=1 << 30,
        )
        engine.generate([samples[0].token_ids[:64]], SamplingParams(max_new_tokens=16))
        resident = []
        for r in range(args.repeats):
            resident.append(run_ours(args.repeats + 2 + r))
            print(f"repeat {r + 1} with vLLM resident: agentrl {resident[-1]:.2f} s")
        print(
            f"| agentrl `update`, vLLM resident | {min(resident):.2f} s | {input_tokens / min(resident):.1f} | "
            f"{masked_tokens / min(resident):.1f} |"
        )
        print(f"ratio update with / without vLLM resident (time): {min(resident) / t_ours:.3f}")
        engine.close()

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        update(cfg, policy, trajectories, args.repeats + 2, world, temperature=1.0)
        prof.disable()
        stats = pstats.Stats(prof).sort_stats("cumulative")
        stats.print_stats(30)
        stats.sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
