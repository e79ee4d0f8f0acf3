"""Run output: TensorBoard scalars and text, ``metrics.jsonl``, the console progress bar. Rank 0 only.

May import: curriculum, distributed (in agentrl.training), and config, algorithms, replay, rollout,
envs, models, suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from agentrl.rollout.trajectory import Trajectory

#: The numbers shown on the progress bar, in order, with their short labels.
PROGRESS_KEYS = (
    ("train/reward", "reward"),
    ("train/success_rate", "success"),
    ("train/format_valid_rate", "format"),
    ("train/kl", "kl"),
)
#: The step's phase times on the progress bar (seconds), with their short labels.
PHASE_KEYS = (
    ("timing/rollout_s", "roll"),
    ("timing/update_s", "upd"),
    ("timing/sync_s", "sync"),
    ("timing/eval_s", "eval"),
)


def progress_text(last: dict[str, float], step_phases: dict[str, float]) -> str:
    """The progress bar's postfix: key numbers, the latest eval success with its 95% interval,
    and this step's phase times, e.g. ``reward=1.2 success=0.25 eval=0.31[0.14,0.56] | roll 31s upd 40s``."""
    parts = [f"{label}={last[key]:.3g}" for key, label in PROGRESS_KEYS if key in last]
    if "eval/success_rate" in last:
        text = f"eval={last['eval/success_rate']:.2f}"
        if "eval/success_ci_low" in last:
            text += f"[{last['eval/success_ci_low']:.2f},{last['eval/success_ci_high']:.2f}]"
        parts.append(text)
    phases = " ".join(f"{label} {step_phases[key]:.0f}s" for key, label in PHASE_KEYS if key in step_phases)
    return " ".join(parts) + (f" | {phases}" if phases else "")


class RunLogger:
    """Writes one step's metrics to TensorBoard (``tb/``) and ``metrics.jsonl``, and drives the bar.

    On ranks other than 0 every method does nothing, so callers never branch on the rank.
    """

    def __init__(
        self, run_dir: Path, total_steps: int, first_step: int, enabled: bool = True, progress: bool = True
    ):
        self.enabled = enabled
        self.run_dir = run_dir
        self._writer = None
        self._bar = None
        self._last: dict[str, float] = {}
        self._phases: dict[str, float] = {}
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir / "tb"))
        self._metrics_file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total_steps, initial=first_step - 1, desc="train", unit="step", dynamic_ncols=True
            )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        for key, value in clean.items():
            self._writer.add_scalar(key, value, step)
        self._metrics_file.write(json.dumps({"step": step, **clean}) + "\n")
        self._metrics_file.flush()
        self._last.update(clean)
        self._phases = {k: v for k, v in clean.items() if k.startswith("timing/")}

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            # TensorBoard renders text as markdown: indent to show it verbatim.
            self._writer.add_text(tag, "    " + text.replace("\n", "\n    "), step)

    def advance(self, step: int) -> None:
        """Move the bar to ``step`` and show the latest key numbers on it."""
        if self._bar is None:
            return
        self._bar.set_postfix_str(progress_text(self._last, self._phases), refresh=False)
        self._bar.update(step - self._bar.n)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._writer.close()
        self._metrics_file.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (a cut last line is skipped)."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def render_sample(traj: Trajectory) -> str:
    """One episode as plain text for the log's ``samples/*`` entries: each turn's observation and reply."""
    lines = [
        f"env {traj.env} seed {traj.seed} reward {traj.reward:+.2f} success {traj.success} end {traj.end_reason}"
    ]
    for i, turn in enumerate(traj.turns):
        lines += [f"--- turn {i} observation", turn.observation, "--- reply", turn.reply]
        lines.append(f"actions {turn.actions} reward {turn.reward:+.2f} {turn.format_error or ''}")
    return "\n".join(lines)
