#!/usr/bin/env bash
# The GPU checks, in one command on a CUDA machine with no network (docs/benchmarks.md#gpu):
#   1. The tests that train or sample the tiny model (trainer, update, SFT, checkpoint, LoRA, HF
#      engine): on a GPU machine they run on the GPU (train.device=auto), and tests/test_update.py
#      asks for the CPU there, which checks that a CPU run on a GPU machine stays on the CPU.
#   2. RL steps on the GPU: HF engine in bf16, DeepSpeed ZeRO-2 then ZeRO-0, NCCL (one rank), on
#      random weights in Qwen2.5-0.5B's shape; prints perf/rollout_tokens_per_s,
#      perf/train_tokens_per_s and perf/peak_memory_gb averaged over the steps after the first.
#
#   bash scripts/gpu_check.sh [OUT_DIR]     # default runs/gpu-check; everything it prints lands there
#
# About 5 minutes on an H200. Wheels of what the machine lacks may travel in .whl/ (installed into
# /tmp/site first), and AGENTRL_CACHE may point at a cache holding only the default model's tokenizer:
# the tiny and random models are built from it, so no weights need travel.
set -uo pipefail
out="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

{
    nvidia-smi -L
    python3 -c "import sys, torch, transformers, deepspeed; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'deepspeed', \
deepspeed.__version__, 'gpu', torch.cuda.get_device_name(0))"
} 2>&1 | tee "$out/env.txt"

# --- 1. the tests that train or sample the tiny model, on the GPU --------------------------------------
timeout 150 python3 -m pytest -q --tb=short -m "not slow" -p no:cacheprovider \
    tests/test_train.py tests/test_update.py tests/test_sft.py tests/test_checkpoint.py tests/test_lora.py \
    tests/test_engine_hf.py > "$out/pytest.txt" 2>&1
echo "== tests: exit $?"
tail -20 "$out/pytest.txt"

# --- 2. RL steps on the GPU -------------------------------------------------------------------------
# A random model never solves a room, so every group's returns tie: the filters that drop such groups
# are off here, or no token would be trained and the update would go unmeasured.
rl_steps() {  # NAME ZERO_STAGE
    timeout 150 python3 -m agentrl train --env sokoban --model random-qwen2.5-0.5b --name "$1" --set run.root="$out" \
        --set train.zero_stage="$2" --set train.steps=3 --set train.n_groups=4 --set rollout.group_size=8 \
        --set sft.warm_start=false --set eval.at_start=false --set eval.every=0 --set run.save_every=0 \
        --set run.time_budget_min=null --set algo.mixed_success_only=false \
        --set algo.skip_zero_advantage=false --set algo.positive_advantage_only=false > "$out/$1.log" 2>&1
    echo "== $1 (ZeRO-$2): exit $?"
    python3 - "$out/$1" <<'PY'
import sys

from agentrl.training.logger import read_metrics

rows = read_metrics(sys.argv[1])  # a run the timeout cut: its rows so far, the cut last line skipped
print(f"{len(rows)} steps; averaged over steps 2-{len(rows)} (step 1 warms up)")
for key in ("perf/rollout_tokens_per_s", "perf/train_tokens_per_s", "perf/peak_memory_gb",
            "train/trained_tokens", "timing/rollout_s", "timing/update_s"):
    values = [r[key] for r in rows[1:] if key in r]
    print(f"  {key}: {sum(values) / len(values):.4g}" if values else f"  {key}: -")
PY
}
{
    rl_steps gpu-zero2 2
    rl_steps gpu-zero0 0
} 2>&1 | tee "$out/rl.txt"
