#!/usr/bin/env bash
# Learning demonstration on CPU with the default model (SmolLM2-135M-Instruct): base model, RL alone,
# warm start alone and warm start + RL, evaluated greedily on the same held-out seeds (eval seeds
# 0..N-1, never trained on).
#
#   ENV=sokoban bash scripts/learning_demo.sh rl        # RL alone         -> runs/demo-ENV-rl
#   ENV=sokoban bash scripts/learning_demo.sh sft       # warm start       -> runs/demo-ENV-sft
#   ENV=sokoban bash scripts/learning_demo.sh sft-rl    # warm start + RL  -> runs/demo-ENV-sft-rl
#   python scripts/eval_table.py runs/demo-sokoban-rl runs/demo-sokoban-sft-rl
#
# The base model is the RL run at step 0; the warm start alone is the warm-start + RL run at step 0.
# ENV is sokoban (6x6, one box), sokoban-pos (the same with the positions written under the grid),
# countdown (3-4 numbers) or knights_knaves (3 people). Every arm of an
# env shares its rollout settings: RAGEN's pre-filled <think> and open-r1-style partial format credit.
# Each arm uses one CPU thread, so two arms run side by side on a 2-core machine.
# The README's first Sokoban table (runs/demo-rl, demo-sft, demo-sft-rl) came from an earlier version
# of this script: 64 demonstrations, one epoch at lr 2e-5, and `rollout.vary_format_example=false`.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV="${ENV:-sokoban}"
COMMON=(--set train.num_threads=1 --set run.progress=false
        --set rollout.reply_prefix='<think>' --set rollout.format_tag_credit=0.5)
case "$ENV" in
  sokoban|sokoban-pos)
    STEPS="${STEPS:-4}"
    COMMON+=(--set eval.episodes=16 --set rollout.max_turns=2 --set rollout.max_new_tokens=64
             --set rollout.max_context_tokens=1024)
    # sokoban-pos: the positions also written under the grid (env.kwargs.describe_positions).
    if [ "$ENV" = sokoban-pos ]; then
      COMMON+=(--set env.kwargs.describe_positions=true --set rollout.max_new_tokens=96)
    fi ;;
  countdown)
    STEPS="${STEPS:-6}"
    COMMON+=(--set eval.episodes=32 --set rollout.max_new_tokens=96) ;;
  knights_knaves)
    STEPS="${STEPS:-6}"
    COMMON+=(--set eval.episodes=32 --set rollout.max_new_tokens=192) ;;
  *) echo "ENV must be sokoban, sokoban-pos, countdown or knights_knaves, got '$ENV'" >&2; exit 2 ;;
esac
ENV_NAME="${ENV%-pos}"
# Warm start: BFS plans / solver / brute-force solutions with short true thoughts, 2 epochs at a
# fine-tuning learning rate (RL's 2e-5 barely moves the model in 12 updates).
SFT=(--set sft.episodes="${SFT_EPISODES:-96}" --set sft.epochs=2 --set train.lr=1e-4 --set eval.every=0)
case "${1:-}" in
  rl)
    agentrl train --env "$ENV_NAME" --name "demo-$ENV-rl" "${COMMON[@]}" \
      --set train.steps="$STEPS" --set eval.every="$STEPS" ;;
  sft)
    agentrl sft --env "$ENV_NAME" --name "demo-$ENV-sft" "${COMMON[@]}" "${SFT[@]}" ;;
  sft-rl)
    # Sampling at T=1 knocks the lightly fine-tuned 135M model off its format; T=0.7 keeps it.
    agentrl train --env "$ENV_NAME" --name "demo-$ENV-sft-rl" --init "runs/demo-$ENV-sft" "${COMMON[@]}" \
      --set train.steps="$STEPS" --set eval.every="$STEPS" --set rollout.temperature=0.7 ;;
  all)
    "$0" rl && "$0" sft && "$0" sft-rl ;;
  *) echo "usage: ENV=sokoban|sokoban-pos|countdown|knights_knaves $0 rl|sft|sft-rl|all" >&2; exit 2 ;;
esac
