"""What a checkpoint's AdamW momentum alone does to its model: N optimizer steps with zero gradient
from the moments saved beside CKPT/hf, at lr LR, written as a model folder to evaluate.

    python scripts/momentum_drift.py runs/NAME/warm_start/checkpoints/step_000030/hf /tmp/drift --steps 4 --lr 5e-5
    agentrl eval --env sokoban --model /tmp/drift --episodes 128 --out /tmp/drift/eval
    python scripts/paired_eval.py runs/NAME/eval/step_000000.jsonl /tmp/drift/eval/eval.jsonl

Until 2026-12-02 RL carried the warm start's first moments too (`train.init_optimizer_state`), so
its first steps moved the weights along the warm start's last demonstrations: from the Sokoban
recipe's warm start, 4 such steps at RL's lr lose 8 of its 105 held-out rooms and gain none. RL now
starts the first moments at zero (README, "Warm start, curriculum, collapse guard").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from agentrl.models import load_model, load_tokenizer
from agentrl.training.checkpoint import saved_optimizer_state


def drift(model: torch.nn.Module, saved: dict, steps: int, lr: float) -> float:
    """Apply ``steps`` AdamW steps with zero gradients from the ``saved`` optimizer state (both
    moments, step counts) to ``model`` in place; returns the norm of the weights' change."""
    params = [p for p in model.parameters() if p.requires_grad]
    for i, p in enumerate(params):
        moments = saved["state"].get(i)
        if moments is None or tuple(moments["exp_avg"].shape) != tuple(p.shape):
            raise ValueError(
                f"the saved optimizer state is of another model (parameter {i}: {tuple(p.shape)})"
            )
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    state = {
        i: {k: v.clone() if torch.is_tensor(v) else v for k, v in m.items()}
        for i, m in saved["state"].items()
    }
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    before = [p.detach().clone() for p in params]
    for _ in range(steps):
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    return float(sum(((p.detach() - b) ** 2).sum() for p, b in zip(params, before)) ** 0.5)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", type=Path, help="a checkpoint's hf/ folder, with its ds/ state beside it"
    )
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-5)
    args = parser.parse_args()
    saved = saved_optimizer_state(args.checkpoint)
    if saved is None:
        parser.error(
            f"{args.checkpoint} has no single-process optimizer state beside it: give a checkpoint's hf/ "
            "folder trained with train.zero_stage=0, e.g. runs/NAME/warm_start/checkpoints/step_000030/hf"
        )
    model = load_model(str(args.checkpoint), dtype="float32", device="cpu")
    try:
        change = drift(model, saved, args.steps, args.lr)
    except ValueError as e:
        parser.error(f"{args.checkpoint}: {e}; give the hf/ folder of the checkpoint whose ds/ state it is")
    model.save_pretrained(args.out)
    load_tokenizer(str(args.checkpoint)).save_pretrained(args.out)
    print(
        f"{args.steps} zero-gradient AdamW steps at lr {args.lr:g}: weights moved by {change:.4g} (L2); wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
