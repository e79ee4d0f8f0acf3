#!/usr/bin/env bash
# Learning demonstration on CPU with the default model (SmolLM2-135M-Instruct), Sokoban 6x6, one box.
# Arms on the same 16 held-out seeds (eval seeds 0-15, never trained on):
#   base       demo-rl at step 0
#   RL alone   demo-rl (RAGEN's pre-filled <think> and open-r1-style partial format credit)
#   warm start demo-sft-rl at step 0: SFT on 64 BFS-optimal oracle demonstrations (demo-sft)
#   warm start + RL   demo-sft-rl
# Each arm uses one CPU thread so two can run side by side on a 2-core machine:
#   bash scripts/learning_demo.sh rl & bash scripts/learning_demo.sh sft-chain; wait
#   python scripts/eval_table.py runs/demo-rl runs/demo-sft-rl
# The README's first table was made before rollout.vary_format_example existed: add
# `--set rollout.vary_format_example=false` to reproduce it (every episode shows the example "Up || Left").
set -euo pipefail
cd "$(dirname "$0")/.."
COMMON=(--set train.num_threads=1 --set eval.episodes=16 --set run.progress=false
        --set rollout.max_turns=2 --set rollout.max_new_tokens=64 --set rollout.max_context_tokens=1024)
case "${1:-}" in
  rl)
    agentrl train --env sokoban --name demo-rl "${COMMON[@]}" \
      --set train.steps="${STEPS:-12}" --set eval.every=4 \
      --set rollout.reply_prefix='<think>' --set rollout.format_tag_credit=0.5 ;;
  sft-chain)
    agentrl sft --env sokoban --name demo-sft "${COMMON[@]}" --set sft.episodes=64 --set eval.every=0
    # Sampling at T=1 knocks the lightly fine-tuned 135M model off its format; T=0.7 keeps it.
    agentrl train --env sokoban --name demo-sft-rl --init runs/demo-sft "${COMMON[@]}" \
      --set train.steps="${STEPS_SFT_RL:-8}" --set eval.every=4 --set rollout.temperature=0.7 ;;
  sft-rl)
    agentrl train --env sokoban --name demo-sft-rl --init runs/demo-sft "${COMMON[@]}" \
      --set train.steps="${STEPS_SFT_RL:-8}" --set eval.every=4 --set rollout.temperature=0.7 ;;
  *) echo "usage: $0 rl|sft-chain|sft-rl" >&2; exit 2 ;;
esac
