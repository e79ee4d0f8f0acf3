r"""Single-step math (R1-Zero / simpleRL style): solve a problem, put the answer in ``\boxed{}``.

The answer is the content of the last balanced ``\boxed{...}`` in the action, or the whole action
when it has none. It is compared with the known answer by math-verify, so ``1/2``, ``0.5`` and
``\frac{1}{2}`` are all accepted for one half.

Rewards (simpleRL-Zero's, configurable): ``reward_correct`` +1, ``reward_wrong`` -0.5 for an
answer that parses but is not equivalent, ``reward_no_answer`` -1 when there is nothing to check
(empty, unparsable, refused as too long or too expensive, or verification timed out).

Problems come from the procedural generator in :mod:`agentrl_envs.math_problems` (``level``
1..4), from a JSONL file of ``{"problem": ..., "answer": ..., "solution": ...}`` records
(``data_file=``; ``solution`` optional), or from ``reset(options={"problem": ..., "answer": ...})``
(``"solution"`` optional). :meth:`MathEnv.oracle_thought` is that worked solution (the generator
writes one for each problem), or ``"The answer is <answer>."`` when none is known.

Bounded time. math-verify's own timeouts use ``signal.alarm``, which works only in the main
thread, and the rollout manager steps envs in worker threads; and sympy can spend minutes (or
hours, on ``9^{9^{9}}``) in a single C call that no signal interrupts. So this module:

1. refuses, unread, answers longer than ``max_answer_chars``, nested deeper than
   :data:`MAX_NESTING`, holding control characters, power towers, exponents with five or more
   digits or factorials of five-digit numbers (:func:`refusal_reason`);
2. checks plain numbers (``-3``, ``0.75``, ``7/2``, ``\frac{7}{2}``) in-process with math-verify,
   where parsing and comparison are cheap and safe;
3. sends everything else to a small pool of verifier subprocesses and kills a worker that takes
   longer than ``verify_timeout_s``: a hard bound, whatever sympy does. Workers start lazily,
   are reused, and exit with the parent.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentrl import TextEnv

from .math_problems import LEVELS, generate_worked_problem

__all__ = [
    "MathEnv",
    "check_answer",
    "extract_answer",
    "extract_boxed",
    "load_problems",
    "refusal_reason",
    "verify_answer",
]

#: Actions longer than this are not scanned at all (no answer).
MAX_ACTION_CHARS = 20_000
#: Deeper nesting of (), {} and [] in an answer is refused (sympy recurses; nested fractions blow up).
MAX_NESTING = 12
#: Seconds a verifier subprocess may take to import math-verify and say it is ready.
WORKER_STARTUP_TIMEOUT_S = 120.0
#: Idle verifier subprocesses kept for reuse.
MAX_IDLE_WORKERS = max(2, os.cpu_count() or 2)

# Outcomes of verify_answer().
CORRECT, WRONG, NO_ANSWER, REFUSED, TIMEOUT = "correct", "wrong", "no_answer", "refused", "timeout"


class _DropTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeout is off; here that is deliberate (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutWarning())


# --------------------------------------------------------------------------------------------
# Answer extraction and screening
# --------------------------------------------------------------------------------------------


def extract_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` whose braces balance, or ``None``.

    Nested braces are handled (``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``). One pass matches
    all braces, so the cost is linear in ``len(text)`` however many ``\boxed`` it holds.
    """
    match_of: dict[int, int] = {}
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match_of[stack.pop()] = i
    for m in reversed(list(re.finditer(r"\\boxed\s*\{", text))):
        open_at = m.end() - 1
        if open_at in match_of:
            return text[open_at + 1 : match_of[open_at]]
    return None


def extract_answer(action: str) -> tuple[str, bool]:
    r"""``(answer text, came from \boxed)``: the last balanced ``\boxed{}``'s content, else the whole action.

    Surrounding whitespace and ``$`` signs are stripped. Actions longer than
    :data:`MAX_ACTION_CHARS` (or non-strings) give ``("", False)``.
    """
    if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS:
        return "", False
    boxed = extract_boxed(action)
    text, is_boxed = (boxed, True) if boxed is not None else (action, False)
    return text.strip().strip("$").strip(), is_boxed


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_POWER = re.compile(r"\^|\*\*")
_BIG_LITERAL = re.compile(r"\d{5,}")
_BIG_FACTORIAL = re.compile(r"\d{5,}\s*!|!\s*!\s*!")


def _operand_after(text: str, i: int) -> tuple[str, int]:
    """The exponent operand starting at ``text[i]`` (a braced/parenthesised group or a token) and its end."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] in "{(":
        opener, closer = text[i], "})"["{(".index(text[i])]
        depth = 0
        for j in range(i, len(text)):
            depth += (text[j] == opener) - (text[j] == closer)
            if depth == 0:
                return text[i + 1 : j], j + 1
        return text[i + 1 :], len(text)
    m = re.compile(r"-?\\?[\w.]*").match(text, i)
    end = m.end() if m else i
    return text[i:end], end


def refusal_reason(answer: str, max_chars: int) -> str | None:
    """Why ``answer`` is too risky to hand to sympy, or ``None`` when it may be checked.

    Cheap (linear) and conservative: it refuses only shapes no sensible final answer has.
    """
    if len(answer) > max_chars:
        return f"longer than {max_chars} characters"
    if _CONTROL.search(answer):
        return "control characters"
    depth = 0
    for ch in answer:
        depth += (ch in "({[") - (ch in ")}]")
        if depth > MAX_NESTING:
            return "nested too deeply"
    for m in _POWER.finditer(answer):
        operand, end = _operand_after(answer, m.end())
        if _POWER.search(operand):
            return "power tower"
        if _BIG_LITERAL.search(operand):
            return "exponent too large"
        if _POWER.match(answer[end:].lstrip()):  # a^b^c: right-associative, a tower too
            return "power tower"
    if _BIG_FACTORIAL.search(answer):
        return "factorial too large"
    return None


_NUMBER = r"-?\s*\d{1,40}(?:\.\d{1,40})?"
_SIMPLE_NUMBER = re.compile(
    rf"^(?:{_NUMBER}|-?\s*\d{{1,40}}\s*/\s*\d{{1,40}}|-?\s*\\[dt]?frac\s*\{{\s*-?\d{{1,40}}\s*\}}\s*\{{\s*\d{{1,40}}\s*\}})$"
)


def _is_simple_number(text: str) -> bool:
    return bool(_SIMPLE_NUMBER.match(text.strip().strip("$").strip()))


# --------------------------------------------------------------------------------------------
# Checking: in-process for plain numbers, in a killable subprocess otherwise
# --------------------------------------------------------------------------------------------


def check_answer(gold: str, answer: str, boxed: bool) -> tuple[bool, bool]:
    r"""``(parsed, correct)`` by math-verify, with its signal-based timeouts off (see the module doc).

    ``answer`` is parsed as ``\boxed{answer}`` when it came from a box, else as free text (so
    "the answer is 5" still yields 5). Unbounded in time: call it on screened input only, or
    through :func:`verify_answer`.
    """
    from math_verify import parse, verify

    pred = parse(f"\\boxed{{{answer}}}" if boxed else answer, parsing_timeout=None)
    if not pred:
        return False, False
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if not gold_parsed:
        # A gold answer math-verify cannot read (free text, say): fall back to string equality.
        return True, " ".join(str(gold).split()) == " ".join(answer.split())
    return True, bool(verify(gold_parsed, pred, timeout_seconds=None))


def _serve_verifier() -> None:
    """Body of a verifier subprocess: JSON requests on stdin, one JSON reply per line on stdout."""
    logging.disable(logging.CRITICAL)
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies may reach the pipe
    import math_verify  # noqa: F401 - import before saying ready: startup is not verification time

    replies.write('{"ready": true}\n')
    replies.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            parsed, correct = check_answer(req["gold"], req["answer"], bool(req["boxed"]))
            reply: dict[str, Any] = {"parsed": parsed, "correct": correct}
        except Exception as exc:  # noqa: BLE001 - report, never die on one request
            reply = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


#: The subprocess's program. agentrl is imported first: importing agentrl_envs first would run
#: agentrl's plugin loader on a half-imported agentrl_envs.
_WORKER_MAIN = "import agentrl; from agentrl_envs.math_env import _serve_verifier; _serve_verifier()"


class _Worker:
    """One verifier subprocess (``python -c`` running :func:`_serve_verifier`)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The child must import this package the way the parent did, even from a source tree.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_MAIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env,
        )
        self.ready = False

    def _read_line(self, timeout: float) -> str | None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline() or None

    def request(self, payload: str, timeout: float) -> dict[str, Any] | None:
        """The reply to ``payload``, or ``None`` if the worker failed or took longer than ``timeout``."""
        if not self.ready:
            if self._read_line(WORKER_STARTUP_TIMEOUT_S) is None:
                return None
            self.ready = True
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(payload + "\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._read_line(timeout)
        if line is None:
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - already gone
            pass


class _VerifierPool:
    """Verifier subprocesses shared by all MathEnv instances of this process; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._pid = os.getpid()

    def _take(self) -> _Worker:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's pipes are not ours to use
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return _Worker()

    def _give(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_WORKERS:
                self._idle.append(worker)
                return
        worker.kill()

    def prewarm(self) -> None:
        """Start one worker in the background if none is idle, so the first check need not wait."""
        with self._lock:
            if self._idle or os.getpid() != self._pid:
                return
        self._give(_Worker())

    def run(self, gold: str, answer: str, boxed: bool, timeout: float) -> dict[str, Any] | None:
        worker = self._take()
        reply = worker.request(json.dumps({"gold": gold, "answer": answer, "boxed": boxed}), timeout)
        if reply is None or "error" in reply:
            worker.kill()  # stuck or broken: a fresh one replaces it on the next call
            return None
        self._give(worker)
        return reply

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


_POOL = _VerifierPool()
atexit.register(_POOL.close)
#: The subprocess sandbox needs select() on pipes (POSIX); elsewhere checks run in-process.
_SANDBOX = os.name == "posix"


def verify_answer(
    gold: str, answer: str, boxed: bool, max_answer_chars: int = 1000, timeout_s: float = 3.0
) -> tuple[str, str | None]:
    """Judge ``answer`` against ``gold`` in bounded time: ``(outcome, refusal reason or None)``.

    ``outcome`` is one of ``"correct"``, ``"wrong"``, ``"no_answer"`` (empty or nothing
    math-verify can parse), ``"refused"`` (see :func:`refusal_reason`) or ``"timeout"``.
    """
    if not answer:
        return NO_ANSWER, None
    reason = refusal_reason(answer, max_answer_chars)
    if reason is not None:
        return REFUSED, reason
    if not _SANDBOX or (_is_simple_number(answer) and _is_simple_number(gold)):
        try:
            parsed, correct = check_answer(gold, answer, boxed)
        except Exception:  # noqa: BLE001 - math-verify raising on odd input means: nothing usable
            return NO_ANSWER, None
    else:
        reply = _POOL.run(gold, answer, boxed, timeout_s)
        if reply is None:
            return TIMEOUT, f"verification took longer than {timeout_s}s or failed"
        parsed, correct = bool(reply["parsed"]), bool(reply["correct"])
    if not parsed:
        return NO_ANSWER, None
    return (CORRECT if correct else WRONG), None


# --------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------


def load_problems(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Records ``{"problem": str, "answer": str}`` from a JSONL file, one JSON object per line.

    An optional string ``solution`` (a short worked solution, the oracle's thought) is kept when
    present and not blank; ``null`` counts as absent. Blank lines are skipped; numeric answers are
    turned into strings; other keys are ignored. Raises ``FileNotFoundError`` for a missing file
    and ``ValueError`` naming ``path:line`` for a line that is not a JSON object with a non-empty
    string ``problem`` and a non-empty ``answer``, or whose ``solution`` is not a string.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"math data file {str(path)!r} does not exist")
    records: list[dict[str, str]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object with 'problem' and 'answer'")
            problem, answer = rec.get("problem"), rec.get("answer")
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(f"{where}: 'problem' must be a non-empty string")
            if (
                isinstance(answer, bool)
                or not isinstance(answer, (str, int, float))
                or not str(answer).strip()
            ):
                raise ValueError(f"{where}: 'answer' must be a non-empty string or a number")
            solution = rec.get("solution")
            if solution is not None and not isinstance(solution, str):
                raise ValueError(f"{where}: 'solution' must be a string")
            record = {"problem": problem, "answer": str(answer).strip()}
            if solution is not None and solution.strip():
                record["solution"] = solution.strip()
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no records (expected JSON lines with 'problem' and 'answer')")
    return records


# --------------------------------------------------------------------------------------------
# The env
# --------------------------------------------------------------------------------------------

INSTRUCTIONS = (
    "Solve the math problem. Work it out step by step if you need to, then give the final answer "
    "in \\boxed{}, for example \\boxed{42} or \\boxed{\\frac{3}{4}}. Give an exact value: a "
    "fraction such as \\frac{3}{4} rather than a rounded decimal."
)


class MathEnv(TextEnv):
    r"""Single-step math: answer in ``\boxed{}``, checked by math-verify (R1-Zero / simpleRL).

    Constructor arguments:
        level: generator level 1..4 (see :mod:`agentrl_envs.math_problems`), a list of levels to
            draw from, or ``None`` for all of them.
        data_file: a JSONL file of ``{"problem", "answer"}`` records (optionally with a
            ``"solution"`` string) to draw from instead of the generator; read (and validated)
            here, so a bad record fails at construction.
        reward_correct, reward_wrong, reward_no_answer: see the module docstring.
        max_answer_chars: longer answers are refused (no answer).
        verify_timeout_s: wall-clock bound on one verification in the subprocess sandbox.
        render_mode: ``"ansi"`` (render returns the problem text) or ``None``.

    ``reset(options={"problem": p, "answer": a})`` poses that problem (with an optional
    ``"solution"`` string for :meth:`oracle_thought`); ``options={"level": k}``
    draws one of level k. With a data file the seed picks the record. Reset info: ``problem``,
    ``answer``, ``level`` (``None`` unless generated), ``source`` (``generator``, ``file``,
    ``options``), ``index`` (the record's index in the file, else ``None``). Step info adds
    ``reason`` (``correct``, ``wrong``, ``no_answer``, ``refused``, ``timeout``),
    ``extracted_answer`` and ``answer``.
    """

    instructions = INSTRUCTIONS
    example_answer = "\\boxed{42}"

    def __init__(
        self,
        level: int | Sequence[int] | None = None,
        data_file: str | os.PathLike[str] | None = None,
        reward_correct: float = 1.0,
        reward_wrong: float = -0.5,
        reward_no_answer: float = -1.0,
        max_answer_chars: int = 1000,
        verify_timeout_s: float = 3.0,
        render_mode: str | None = "ansi",
    ):
        super().__init__(render_mode=render_mode)
        if level is None:
            levels = sorted(LEVELS)
        elif isinstance(level, int):
            levels = [level]
        else:
            levels = [int(v) for v in level]
        bad = [v for v in levels if v not in LEVELS]
        if bad or not levels:
            raise ValueError(f"level={level!r}: choose from {sorted(LEVELS)} (or None for all)")
        self.levels = levels
        self.data_file = None if data_file is None else str(data_file)
        self.records = load_problems(data_file) if data_file is not None else None
        self.reward_correct = float(reward_correct)
        self.reward_wrong = float(reward_wrong)
        self.reward_no_answer = float(reward_no_answer)
        self.invalid_action_penalty = self.reward_no_answer
        self.max_answer_chars = int(max_answer_chars)
        self.verify_timeout_s = float(verify_timeout_s)
        self.problem = ""
        self.answer = ""
        self.level: int | None = None
        #: The current problem's worked solution (the oracle's thought), ``None`` when unknown.
        self.solution: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        index: int | None = None
        if options and ("problem" in options or "answer" in options):
            problem, answer = options.get("problem"), options.get("answer")
            if not isinstance(problem, str) or answer is None or not str(answer).strip():
                raise ValueError("options must hold 'problem' (a str) and 'answer' (a str or number)")
            solution = options.get("solution")
            if solution is not None and not isinstance(solution, str):
                raise ValueError("options['solution'] must be a str")
            self.problem, self.answer, self.level, source = problem, str(answer).strip(), None, "options"
            self.solution = solution.strip() if solution is not None and solution.strip() else None
        elif self.records is not None and not (options and "level" in options):
            index = int(rng.integers(len(self.records)))
            rec = self.records[index]
            self.problem, self.answer, self.level, source = rec["problem"], rec["answer"], None, "file"
            self.solution = rec.get("solution")
        else:
            level = int(options["level"]) if options and "level" in options else None
            if level is None:
                level = self.levels[int(rng.integers(len(self.levels)))]
            self.problem, self.answer, self.solution = generate_worked_problem(rng, level)
            self.level, source = level, "generator"
        if _SANDBOX and not _is_simple_number(self.answer):
            _POOL.prewarm()  # this answer will be checked in a subprocess: start one now
        info = {
            "success": False,
            "action_is_valid": True,
            "problem": self.problem,
            "answer": self.answer,
            "level": self.level,
            "source": source,
            "index": index,
        }
        return self.problem, info

    def score(self, action: str) -> tuple[float, dict[str, Any]]:
        """Reward and info for ``action`` against the current problem; never raises, bounded time."""
        answer, boxed = extract_answer(action)
        outcome, why = verify_answer(self.answer, answer, boxed, self.max_answer_chars, self.verify_timeout_s)
        reward = {CORRECT: self.reward_correct, WRONG: self.reward_wrong}.get(outcome, self.reward_no_answer)
        info = {
            "success": outcome == CORRECT,
            "action_is_valid": outcome in (CORRECT, WRONG),
            "reason": outcome,
            "extracted_answer": answer[:200],
        }
        if why is not None:
            info["detail"] = why
        return reward, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not self.answer:
            raise RuntimeError("call reset() before step()")
        reward, info = self.score(action)
        obs = {
            CORRECT: "Correct.",
            WRONG: "Wrong answer.",
            NO_ANSWER: "No answer found: put the final answer in \\boxed{}.",
            REFUSED: "Invalid answer: it could not be checked.",
            TIMEOUT: "Invalid answer: it could not be checked in time.",
        }[info["reason"]]
        info["answer"] = self.answer
        return obs, float(reward), True, False, info

    def render(self) -> str:
        return self.problem

    def oracle_thought(self) -> str:
        """A short, true note for warm-start demonstrations: the worked solution when one is known.

        Generated problems always have one; file records and reset options may supply one
        (``"solution"``); otherwise the thought just states the known answer.
        """
        if self.solution:
            return self.solution
        return f"The answer is {self.answer}."

    def oracle_actions(self) -> list[str] | None:
        r"""One correct answer: the known answer in ``\boxed{}``."""
        return [f"\\boxed{{{self.answer}}}"] if self.answer else None
