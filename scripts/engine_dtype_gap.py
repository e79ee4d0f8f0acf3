"""How far a bfloat16 vLLM engine's log-probs are from the trainer's, token class by token class.

Scores the episodes of a run file with the trainer's model (float32 weights, plain and under bf16
autocast) and with vLLM in bfloat16 (loaded from the same folder, and once more as the base model
given these weights by agentrl's weight push), then prints the mean absolute gap in nats per token
over the tokens the model sampled and over the rest (prompt, observations). docs/engines.md, "Dtype".

    python scripts/engine_dtype_gap.py runs/ws2/warm_start/checkpoints/step_000032/hf runs/ws2/eval/step_000000.jsonl
    python scripts/engine_dtype_gap.py ~/.cache/agentrl/models/SmolLM2-135M-Instruct \\
        runs/table-knights_knaves-rl/trajectories/step_000001.jsonl
"""

from __future__ import annotations

import argparse

import torch

from agentrl.models import default_model_dir, load_model
from agentrl.rollout.engines.vllm import VLLMEngine
from agentrl.rollout.trajectory import read_jsonl
from agentrl.rollout.weight_sync import trainer_logprobs


def scored(model: torch.nn.Module, prompts: list[list[int]], autocast: bool) -> list[torch.Tensor]:
    """The trainer's log-probs of ``prompts`` (the post-sync check's own scoring), in float32 or
    under bf16 autocast as the update runs."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return trainer_logprobs(model, prompts, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="an HF model folder (a run's checkpoints/step_N/hf, or the base model)")
    parser.add_argument("episodes", help="eval/step_N.jsonl or trajectories/step_N.jsonl of a run")
    parser.add_argument("--count", type=int, default=12, help="episodes scored (their first sample each)")
    args = parser.parse_args()

    episodes, _ = read_jsonl(args.episodes)
    samples = [e.samples[0] for e in episodes[: args.count]]
    prompts = [list(s.token_ids) for s in samples]
    sampled = [torch.tensor(s.loss_mask[1:], dtype=torch.bool) for s in samples]  # per scored token
    model = load_model(args.model, dtype="float32").eval()
    fp32, autocast = scored(model, prompts, False), scored(model, prompts, True)

    def row(name: str, theirs: list[torch.Tensor], ours: list[torch.Tensor]) -> None:
        gaps = [(t - o).abs() for t, o in zip(theirs, ours)]
        on = torch.cat([g[m] for g, m in zip(gaps, sampled)])
        off = torch.cat([g[~m] for g, m in zip(gaps, sampled)])
        print(
            f"| {name} | {on.mean():.4f} ({len(on)} tokens) | {off.mean():.4f} ({len(off)} tokens) |",
            flush=True,
        )

    print("| engine vs trainer | sampled tokens | prompt and observations |\n| --- | --- | --- |")
    row("trainer fp32 vs trainer bf16 autocast", autocast, fp32)
    engine = VLLMEngine(args.model, dtype="bfloat16", max_model_len=4096, kv_cache_memory_bytes=1 << 30)
    loaded = [torch.tensor(x) for x in engine.prompt_logprobs(prompts)]
    engine.close()
    row("vLLM bf16, loaded, vs trainer bf16 autocast", loaded, autocast)
    row("vLLM bf16, loaded, vs trainer fp32", loaded, fp32)
    engine = VLLMEngine(
        str(default_model_dir()), dtype="bfloat16", max_model_len=4096, kv_cache_memory_bytes=1 << 30
    )
    engine.update_weights(model.named_parameters())
    pushed = [torch.tensor(x) for x in engine.prompt_logprobs(prompts)]
    engine.close()
    row("vLLM bf16, base + weight push, vs trainer bf16 autocast", pushed, autocast)


if __name__ == "__main__":
    main()
