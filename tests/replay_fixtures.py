"""Realistic run directories for the replay viewer's tests (and the README screenshot).

``make_run`` writes what the trainer writes: config.yaml, metrics.jsonl, trajectories/ and eval/
step files via ``agentrl.rollout.trajectory.write_jsonl``, with sokoban episodes played by a tiny
simulator (so boards, rewards and success are consistent) and single-turn countdown episodes.
Tokens come from a toy word-piece tokenizer in the chat-template shape the rollout manager uses:
one growing sample per episode, prompt tokens masked 0, sampled reply tokens masked 1.

Options add hostile content (XSS payloads in replies, observations, token text, infos and the
config) and a step file whose last line is cut, as when a run is killed mid-write.

``python tests/replay_fixtures.py docs/img/replay.png`` regenerates the README screenshot.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

from agentrl.rollout.trajectory import Sample, Trajectory, Turn, step_filename, write_jsonl

XSS_REPLY = (
    '<think>try <script>alert(1)</script> first</think><answer><img src=x onerror="alert(2)"></answer>'
)
XSS_OBS = 'Numbers: [2, 3] <img src=x onerror="document.body.dataset.pwned=1"> Target: 6'
XSS_TOKEN = "<b onmouseover=alert(5)>"

SOKOBAN_INSTRUCTIONS = "Push every box (X) onto a target (O). Answer with Up, Down, Left or Right."
COUNTDOWN_INSTRUCTIONS = "Combine the numbers with + - * / to reach the target. Answer with one expression."

# (board, a shortest solution); '#' wall, '_' floor, 'O' target, 'X' box, 'P' player.
LEVELS = [
    ("#######\n#_____#\n#_PX_O#\n#_____#\n#######", ["Right", "Right"]),
    ("######\n#_O__#\n#____#\n#_X__#\n#_P__#\n######", ["Up", "Up"]),
    ("########\n#______#\n#O_X_P_#\n#______#\n########", ["Left", "Left", "Left"]),
    ("#######\n##_O__#\n#__X__#\n#_XP#_#\n#__O__#\n#######", ["Up", "Left", "Down", "Left", "Down", "Right"]),
]
MOVES = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}


class Sokoban:
    """Just enough Sokoban to play the fixture levels (gym-sokoban's rewards)."""

    def __init__(self, board: str) -> None:
        rows = [list(r) for r in board.split("\n")]
        self.walls = {(y, x) for y, r in enumerate(rows) for x, c in enumerate(r) if c == "#"}
        self.targets = {(y, x) for y, r in enumerate(rows) for x, c in enumerate(r) if c in "O√S"}
        self.boxes = {(y, x) for y, r in enumerate(rows) for x, c in enumerate(r) if c in "X√"}
        self.player = next((y, x) for y, r in enumerate(rows) for x, c in enumerate(r) if c in "PS")
        self.shape = (len(rows), max(len(r) for r in rows))

    def render(self) -> str:
        out = []
        for y in range(self.shape[0]):
            row = ""
            for x in range(self.shape[1]):
                t = (y, x) in self.targets
                if (y, x) in self.walls:
                    row += "#"
                elif (y, x) == self.player:
                    row += "S" if t else "P"
                elif (y, x) in self.boxes:
                    row += "√" if t else "X"
                else:
                    row += "O" if t else "_"
            out.append(row)
        return "\n".join(out)

    @property
    def solved(self) -> bool:
        return self.boxes <= self.targets

    def step(self, action: str) -> tuple[float, bool]:
        dy, dx = MOVES[action]
        y, x = self.player
        nxt, beyond = (y + dy, x + dx), (y + 2 * dy, x + 2 * dx)
        reward = -0.1
        if nxt in self.walls:
            return reward, False
        if nxt in self.boxes:
            if beyond in self.walls or beyond in self.boxes:
                return reward, False
            self.boxes.remove(nxt)
            self.boxes.add(beyond)
            reward += (beyond in self.targets) - (nxt in self.targets)
        self.player = nxt
        if self.solved:
            reward += 10.0
        return reward, True


class ToyTokenizer:
    """Splits text into word pieces (leading space kept, as BPE does) with stable ids."""

    _piece = re.compile(r"<\|[a-z_]+\|>|\n| ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]|\s+")

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        pieces = self._piece.findall(text)
        ids = [self.vocab.setdefault(p, 100 + len(self.vocab)) for p in pieces]
        return ids, pieces


def _episode(
    tok: ToyTokenizer,
    rng: random.Random,
    env: str,
    instructions: str,
    turns: list[tuple[str, str, list[str], float, bool, str | None, dict, str]],
) -> tuple[Sample, list[Turn]]:
    """One full-context sample and its turns; ``turns`` = (obs, reply, actions, reward, ok, error, info, finish)."""
    sample = Sample(token_text=[])
    built: list[Turn] = []
    for k, (obs, reply, actions, reward, ok, err, info, finish) in enumerate(turns):
        head = f"<|im_start|>system\n{instructions}<|im_end|>\n" if k == 0 else "<|im_end|>\n"
        ids, text = tok.encode(f"{head}<|im_start|>user\n{obs}<|im_end|>\n<|im_start|>assistant\n")
        prompt_span = sample.extend(ids, sampled=False)
        sample.token_text += text
        ids, text = tok.encode(reply)
        lps = [round(-abs(rng.gauss(0.0, 0.6)) - (0.02 if len(t) > 2 else 0.2), 4) for t in text]
        response_span = sample.extend(ids, sampled=True, logprobs=lps)
        sample.token_text += text
        built.append(
            Turn(
                observation=obs,
                reply=reply,
                actions=actions,
                reward=reward,
                format_ok=ok,
                format_error=err,
                info=info,
                sample=0,
                prompt_span=prompt_span,
                response_span=response_span,
                finish_reason=finish,
            )
        )
    return sample, built


def _sokoban(tok: ToyTokenizer, rng: random.Random, level: int, skill: float, max_turns: int = 6):
    board, solution = LEVELS[level]
    game = Sokoban(board)
    plan = list(solution) if rng.random() < skill else []
    turns = []
    follows: list[bool | None] = []  # the env's verdict per turn: the plan's moves follow the thought
    end_reason = "max_turns"
    for k in range(max_turns):
        obs = f"Turn {k + 1}. Push every box onto a target.\n{game.render()}"
        if rng.random() < 0.08:  # a reply without an answer: format penalty, env not stepped
            reply = "<think>I am not sure which way to go.</think>I will move the box."
            turns.append((obs, reply, [], -0.1, False, "no_answer_tag", {}, "stop"))
            follows.append(None)
            continue
        follows.append(bool(plan))
        action = plan.pop(0) if plan else rng.choice(list(MOVES))
        think = rng.choice(
            [
                f"The box is near the target. Moving {action.lower()} should help.",
                f"I need to get behind the box first, so {action.lower()}.",
                f"Walls block the other way. Try {action.lower()}.",
            ]
        )
        if rng.random() < 0.05:  # cut at max tokens: no answer, so no action either
            plan.insert(0, action)
            reply = f"<think>{think} Let me double check the walls"
            turns.append((obs, reply, [], -0.1, False, "no_answer_tag", {}, "length"))
            follows[-1] = None
            continue
        reward, moved = game.step(action)
        info = {
            "action_is_valid": moved,
            "success": game.solved,
            "boxes_on_target": len(game.boxes & game.targets),
        }
        reply = f"<think>{think}</think><answer>{action}</answer>"
        turns.append((obs, reply, [action], reward, True, None, info, "stop"))
        if game.solved:
            end_reason = "terminated"
            break
    sample, built = _episode(tok, rng, "sokoban", SOKOBAN_INSTRUCTIONS, turns)
    for turn, verdict in zip(built, follows):
        turn.follows_thought = verdict
    return sample, built, game.solved, end_reason, {"level": level, "solution": solution}


def _countdown(tok: ToyTokenizer, rng: random.Random, numbers: list[int], target: int, skill: float):
    a, b, c = numbers
    solution = f"{a} * {b} + {c}"  # the target is built as a * b + c
    good = rng.random() < skill
    expr, value = (solution, a * b + c) if good else (f"{a} + {b} + {c}", a + b + c)
    obs = f"Using the numbers {numbers}, make {target}. Use each number at most once."
    reply = f"<think>{numbers[0]} * {numbers[1]} = {numbers[0] * numbers[1]}. Then add {numbers[2]}? That gives {numbers[0] * numbers[1] + numbers[2]}.</think><answer>{expr}</answer>"
    ok = value == target
    info = {"action_is_valid": True, "success": ok, "value": value}
    sample, built = _episode(
        tok,
        rng,
        "countdown",
        COUNTDOWN_INSTRUCTIONS,
        [(obs, reply, [expr], float(ok), True, None, info, "stop")],
    )
    return sample, built, ok, "terminated", {"numbers": numbers, "target": target, "solution": solution}


def _with_advantages(group: list[Trajectory]) -> None:
    """GRPO: (reward - group mean) / group std on every sampled token."""
    rewards = [t.reward for t in group]
    mu = sum(rewards) / len(rewards)
    sd = math.sqrt(sum((r - mu) ** 2 for r in rewards) / len(rewards)) or 1.0
    for t in group:
        a = round((t.reward - mu) / sd, 4)
        for s in t.samples:
            s.advantages = [a * m for m in s.loss_mask]


def make_step(
    step: int, split: str, n_groups: int, group_size: int, total_steps: int, seed: int = 0
) -> list[Trajectory]:
    """One step's batch: alternating sokoban and countdown groups; skill grows over training."""
    rng = random.Random(f"{seed}-{split}-{step}")
    tok = ToyTokenizer()
    skill = 0.15 + 0.7 * step / max(1, total_steps)
    out: list[Trajectory] = []
    for g in range(n_groups):
        # Eval seeds repeat at every eval step, so eval steps line up seed by seed.
        env_seed = 1000 + g if split == "eval" else 10_000 * step + g
        grng = random.Random(env_seed)
        numbers = [grng.randint(2, 9), grng.randint(2, 9), grng.randint(1, 20)]
        group: list[Trajectory] = []
        for a in range(group_size):
            if g % 2 == 0:
                sample, turns, ok, end, truth = _sokoban(tok, rng, grng.randrange(len(LEVELS)), skill)
                env = "sokoban"
            else:
                target = numbers[0] * numbers[1] + numbers[2]
                sample, turns, ok, end, truth = _countdown(tok, rng, numbers, target, skill)
                env = "countdown"
            group.append(
                Trajectory(
                    env=env,
                    seed=env_seed,
                    group=g,
                    turns=turns,
                    samples=[sample],
                    reset_info=truth,
                    end_reason=end,
                    success=ok,
                    step=step,
                    split=split,
                    episode_id=g * group_size + a,
                )
            )
        if split == "train":
            _with_advantages(group)
        out += group
    return out


def _add_xss(trajs: list[Trajectory]) -> None:
    """Hostile text where model output and env text can carry it."""
    cd = [t for t in trajs if t.env == "countdown"]
    t = cd[0]
    t.turns[0].reply = XSS_REPLY + "\u2028line separator\u2029"
    t.turns[0].actions = ['<img src=x onerror="alert(2)">']
    t.turns[0].info["note"] = "<svg onload=alert(3)>"
    t.samples[0].token_text[t.turns[0].response_span[0]] = XSS_TOKEN
    cd[1].turns[0].observation = XSS_OBS
    cd[1].samples[0].token_text = None  # the viewer falls back to token ids


def make_run(
    root: Path,
    name: str = "demo",
    steps: int = 3,
    n_groups: int = 4,
    group_size: int = 4,
    eval_every: int = 3,
    xss: bool = True,
    truncate_step: int | None = 2,
) -> Path:
    """Write a run directory under ``root``; return its path."""
    run = Path(root) / name
    (run / "tb").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    config = (
        f"# resolved config of run {name}\n"
        "env: {name: sokoban, max_turns: 6}\n"
        "model: {name: HuggingFaceTB/SmolLM2-135M-Instruct}\n"
        f"rollout: {{n_groups: {n_groups}, group_size: {group_size}, context: full}}\n"
        "algo: {advantage: grpo, loss: grpo, kl_coef: 0.0, lr: 1.0e-6}\n"
    )
    if xss:
        config += 'notes: "</pre><script>alert(4)</script>"\n'
    (run / "config.yaml").write_text(config, encoding="utf-8")
    rows = []
    for step in range(0, steps + 1):
        if step % eval_every == 0:
            trajs = make_step(step, "eval", n_groups, 2, steps)
            write_jsonl(run / "eval" / step_filename(step), trajs)
            eval_row = {
                "eval/success_rate": sum(t.success for t in trajs) / len(trajs),
                "eval/reward": sum(t.reward for t in trajs) / len(trajs),
            }
        else:
            eval_row = {}
        if step == 0:
            rows.append({"step": 0, **eval_row})
            continue
        trajs = make_step(step, "train", n_groups, group_size, steps)
        if xss and step == 1:
            _add_xss(trajs)
        path = write_jsonl(run / "trajectories" / step_filename(step), trajs)
        if step == truncate_step:
            # A run killed mid-write: the last record cut in the middle, no newline.
            line = json.dumps(trajs[0].to_dict())
            with open(path, "a", encoding="utf-8") as f:
                f.write(line[: len(line) // 2])
        n = len(trajs)
        rows.append(
            {
                "step": step,
                "train/reward": sum(t.reward for t in trajs) / n,
                "train/success_rate": sum(t.success for t in trajs) / n,
                "train/response_length": sum(t.num_sampled_tokens for t in trajs) / n,
                "train/format_valid_rate": sum(t.format_valid for t in trajs) / n,
                "train/kl": float("nan") if step == 1 else 0.001 * step,
                **eval_row,
            }
        )
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 99, "train/rew')  # the logger was killed mid-line too
    return run


def screenshot(out: Path) -> None:
    """Regenerate the README screenshot from a 40-step demo run."""
    import tempfile
    import threading

    from playwright.sync_api import sync_playwright

    from agentrl.replay import make_server

    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(
            Path(tmp),
            name="sokoban-grpo-demo",
            steps=40,
            n_groups=8,
            group_size=6,
            eval_every=10,
            xss=False,
            truncate_step=None,
        )
        (run / "metrics.jsonl").write_text(
            "\n".join(
                line for line in (run / "metrics.jsonl").read_text().splitlines() if '"step": 99' not in line
            )
        )
        server = make_server(run)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1440, "height": 1180}, device_scale_factor=1)
            # A solved sokoban episode with several turns, shown mid-way, a token hovered.
            eps = server.data.step("train", 36)["episodes"]
            ep = max((e for e in eps if e["env"] == "sokoban" and e["success"]), key=lambda e: e["turns"])
            page.goto(server.url + f"#train/36/{ep['i']}")
            page.wait_for_selector("#slot-A canvas.board")
            page.check("#show-tokens")
            for _ in range(ep["turns"] // 2):
                page.keyboard.press("ArrowRight")
            page.locator("#slot-A .tokens .tok.trained").nth(6).hover()
            page.wait_for_timeout(3500)  # one index poll, so the status line shows the live state
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
        server.shutdown()


if __name__ == "__main__":
    import sys

    screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img/replay.png"))
