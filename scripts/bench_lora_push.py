"""LoRA weight push to vLLM: merged full weights vs the plain full-weight push, in the same process.

A LoRA policy reaches vLLM as full weights with its adapters merged in (``W + (alpha / r) * B @ A``
per adapted layer, computed as vLLM reads each one: ``agentrl.rollout.weight_sync.policy_weights``). This
times that push against the full-weight push of a model without adapters into the same engine,
alternating the two, and prints the best time of each, their ratio (merged / full), the merge alone
(the generator consumed without vLLM), the process's peak memory (RSS) above its level before each
push, and the post-push log-prob gap against the trainer's adapted model.

``--lora-request`` also tries the other way (vLLM's own LoRA support, ``enable_lora=True``): a second
engine loads the adapter from a folder per step (``LoRARequest``), and the script prints the time to
save and load it and the decode time with and without the adapter.

    python scripts/bench_lora_push.py                      # default model, r=32, alpha=64
    python scripts/bench_lora_push.py --model tiny-random-h128 --lora-request   # quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from agentrl.models import load_model, resolve_model_path, tiny_model_dir
from agentrl.rollout.engines.vllm import VLLMEngine
from agentrl.rollout.weight_sync import logprob_gap, policy_weights


def rss_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of this process, from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def timed_push(engine: VLLMEngine, weights) -> tuple[float, float, int]:
    """Wall and CPU seconds of one push, and the peak RSS above the level before it (the peak is
    reset first). CPU time (all of the process's threads; vLLM runs in-process) is the steadier
    figure on a machine other jobs share."""
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = rss_bytes("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    engine.update_weights(weights)
    return time.perf_counter() - t0, time.process_time() - c0, rss_bytes("VmHWM") - before


def lora_model(path: str, r: int, alpha: int) -> torch.nn.Module:
    """The model with LoRA adapters on every linear layer, B random (peft starts it at zero)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(path), LoraConfig(r=r, lora_alpha=alpha, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 1e-3)
    return model.eval()


def bench_merged_push(args: argparse.Namespace, path: str) -> None:
    plain, peft_model = load_model(path).eval(), lora_model(path, args.r, args.alpha)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    engine = VLLMEngine(path, dtype="float32", max_model_len=1024, kv_cache_memory_bytes=256 << 20)
    cpu = torch.device("cpu")
    prompt = [[1, *range(200, 456)]]
    times: dict[str, list[float]] = {"full": [], "merged": []}
    cpu_times: dict[str, list[float]] = {"full": [], "merged": []}
    peaks: dict[str, list[int]] = {"full": [], "merged": []}
    merge_only, merge_cpu = [], []
    try:
        for model in (plain, peft_model):  # warm-up
            engine.update_weights(policy_weights(model, 0))
        for _ in range(args.repeats):  # alternate, so load on the machine hits both alike
            for name, model in (("full", plain), ("merged", peft_model)):
                seconds, cpu_seconds, peak = timed_push(engine, policy_weights(model, 0))
                times[name].append(seconds)
                cpu_times[name].append(cpu_seconds)
                peaks[name].append(peak)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in policy_weights(peft_model, 0):
                pass
            merge_only.append(time.perf_counter() - t0)
            merge_cpu.append(time.process_time() - c0)
        gap = logprob_gap(engine, peft_model, prompt, cpu)  # the last push was the merged one
    finally:
        engine.close()
    best = {k: min(v) for k, v in times.items()}
    best_cpu = {k: min(v) for k, v in cpu_times.items()}
    print(f"model {path}: LoRA r={args.r} alpha={args.alpha}, {trainable / 1e6:.2f}M trainable parameters")
    for name in ("full", "merged"):
        print(
            f"  {name:6s} push: wall best {best[name]:.3f} s (median {statistics.median(times[name]):.3f}), "
            f"CPU best {best_cpu[name]:.3f} s, peak RSS +{max(peaks[name]) / 2**20:.0f} MiB"
        )
    print(f"  merge alone (no vLLM): wall best {min(merge_only):.3f} s, CPU best {min(merge_cpu):.3f} s")
    print(
        f"  ratio merged / full push: wall {best['merged'] / best['full']:.2f}x, "
        f"CPU {best_cpu['merged'] / best_cpu['full']:.2f}x"
    )
    print(f"  post-push gap vs the adapted trainer: {gap:.2e} nats/token")


def bench_lora_request(args: argparse.Namespace, path: str) -> None:
    """vLLM's own LoRA: save the adapter, load it by request, decode with and without it."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    peft_model = lora_model(path, args.r, args.alpha)
    engine = VLLMEngine(
        path,
        dtype="float32",
        max_model_len=1024,
        kv_cache_memory_bytes=256 << 20,
        enable_lora=True,
        max_lora_rank=max(8, args.r),
        max_loras=1,
    )
    prompts = [TokensPrompt(prompt_token_ids=[1, *range(200 + i, 456 + i)]) for i in range(4)]
    one = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    many = SamplingParams(max_tokens=args.decode_tokens, temperature=0.0, ignore_eos=True, detokenize=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            saves, loads = [], []
            for step in range(1, args.repeats + 1):
                folder = Path(tmp) / f"step{step}"
                t0 = time.perf_counter()
                peft_model.save_pretrained(folder)
                saves.append(time.perf_counter() - t0)
                request = LoRARequest(f"policy{step}", step, str(folder), load_inplace=True)
                t0 = time.perf_counter()
                engine.llm.generate(prompts[:1], one, lora_request=request, use_tqdm=False)
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                engine.llm.generate(prompts[:1], one, lora_request=request, use_tqdm=False)
                loads.append(first - (time.perf_counter() - t0))
            decode = {}
            for name, req in (("base", None), ("adapter", request)):
                t0 = time.perf_counter()
                engine.llm.generate(prompts, many, lora_request=req, use_tqdm=False)
                decode[name] = time.perf_counter() - t0
    finally:
        engine.close()
    print(f"  LoRARequest: save adapter best {min(saves):.3f} s, load by request best {min(loads):.3f} s")
    print(
        f"  decode {len(prompts)} x {args.decode_tokens} tokens: base {decode['base']:.2f} s, "
        f"with adapter {decode['adapter']:.2f} s ({decode['adapter'] / decode['base']:.2f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or path (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--r", type=int, default=32, help="LoRA rank (configs/lora_countdown.yaml: 32)")
    ap.add_argument("--alpha", type=int, default=64)
    ap.add_argument(
        "--repeats", type=int, default=5, help="timed pushes of each (best kept), after a warm-up"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--lora-request", action="store_true", help="also time vLLM's own LoRA (enable_lora)")
    ap.add_argument(
        "--decode-tokens", type=int, default=64, help="tokens per reply in the --lora-request decode"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # vLLM's CPU attention needs heads of 32 or more: the tiny test model's are 16 wide.
    path = (
        str(tiny_model_dir(hidden_size=128))
        if args.model == "tiny-random-h128"
        else resolve_model_path(args.model)
    )
    bench_merged_push(args, path)
    if args.lora_request:
        bench_lora_request(args, path)


if __name__ == "__main__":
    main()
