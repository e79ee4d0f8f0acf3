"""Countdown (TinyZero): reach a target with + - * / over the given numbers, each used exactly once.

A single-step text env. Puzzles are generated procedurally and are always solvable: the
generator draws the numbers, enumerates every value reachable under TinyZero's rules
(integral intermediate results, non-negative subtraction, exact division) and picks the target
uniformly among the reachable values inside ``target_range``; draws with none are redrawn.

The answer is checked without ``eval``: :func:`evaluate_expression` whitelists characters, caps
length and nesting, parses with ``ast.parse(mode="eval")`` and walks the tree with exact
:class:`fractions.Fraction` arithmetic, admitting only ``+ - * /``, unary minus and integer literals.

Rewards (TinyZero's, configurable):

- ``reward_correct`` (1.0): the expression uses exactly the given numbers (as a multiset) and its
  value equals the target exactly;
- ``reward_format`` (0.1): a well-formed arithmetic expression with a value, but the wrong value
  or the wrong numbers (TinyZero gives its format score in both cases);
- ``reward_unparsable`` (0.0): anything else, including division by zero.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from agentrl import TextEnv

__all__ = [
    "CountdownEnv",
    "InvalidExpression",
    "evaluate_expression",
    "parse_expression",
    "reachable",
    "solve",
]

#: Longer answers are rejected unread, so any action costs O(1) past this point.
MAX_EXPRESSION_CHARS = 256
#: Deeper parenthesis nesting is rejected before ``ast.parse`` (which recurses and can overflow).
MAX_PAREN_DEPTH = 32
#: Numbers per puzzle the solver-based generator supports (the reachable set grows fast).
MIN_NUMBERS, MAX_NUMBERS = 2, 5
#: Number draws tried before the generator gives up on a configuration.
MAX_GENERATION_ATTEMPTS = 10_000

_ALLOWED_CHARS = frozenset("0123456789+-*/() ")
#: An optional trailing "= 16" (models often restate the target) is dropped before parsing.
_TRAILING_RESULT = re.compile(r"=\s*-?\d{1,12}\s*$")


class InvalidExpression(ValueError):
    """The text is not an admissible arithmetic expression (or has no value, e.g. ``1/0``)."""


# --------------------------------------------------------------------------------------------
# Safe evaluation
# --------------------------------------------------------------------------------------------


def parse_expression(text: str) -> tuple[Fraction, list[int]]:
    """Evaluate ``text`` exactly; return ``(value, the integer literals in order of appearance)``.

    Admits only digits, ``+ - * / ( )`` and spaces (tabs and newlines are treated as spaces),
    plus an optional trailing ``= N``. Rejects ``**`` and ``//``, texts longer than
    :data:`MAX_EXPRESSION_CHARS`, nesting deeper than :data:`MAX_PAREN_DEPTH`, any AST node other
    than ``BinOp(Add|Sub|Mult|Div)``, ``UnaryOp(USub)`` and integer constants, and division by zero.
    Raises :class:`InvalidExpression` for all of these and never anything else; runs in bounded time.
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS:
        raise InvalidExpression("not a string or too long")
    text = " ".join(text.split())
    text = _TRAILING_RESULT.sub("", text).strip()
    if not text:
        raise InvalidExpression("empty")
    if not set(text) <= _ALLOWED_CHARS:
        raise InvalidExpression("characters outside digits, + - * / ( ) and spaces")
    if "**" in text or "//" in text:
        raise InvalidExpression("** and // are not allowed")
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_PAREN_DEPTH:
            raise InvalidExpression("nested too deeply")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise InvalidExpression(f"not an expression: {type(exc).__name__}") from None
    numbers: list[int] = []
    try:
        value = _eval_node(tree.body, numbers)
    except RecursionError:
        raise InvalidExpression("nested too deeply") from None
    return value, numbers


def _eval_node(node: ast.AST, numbers: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand, numbers)
    if isinstance(node, ast.BinOp):
        left = _eval_node(node.left, numbers)
        right = _eval_node(node.right, numbers)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise InvalidExpression("division by zero")
            return left / right
    raise InvalidExpression(f"{type(node).__name__} is not allowed")


def solution_steps(text: str) -> list[str]:
    """The binary operations of a valid expression, innermost first: ``["60 - 52 = 8", "8 + 84 = 92"]``.

    Raises :class:`InvalidExpression` for what :func:`parse_expression` rejects.
    """
    parse_expression(text)  # validates (characters, depth, operators) before the tree is walked
    steps: list[str] = []
    symbols = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            value = _eval_node(node, [])
            steps.append(f"{_number(left)} {symbols[type(node.op)]} {_number(right)} = {_number(value)}")
            return value
        return _eval_node(node, [])

    walk(ast.parse(_TRAILING_RESULT.sub("", " ".join(text.split())).strip(), mode="eval").body)
    return steps


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def evaluate_expression(text: str) -> Fraction:
    """The exact value of ``text`` under :func:`parse_expression`'s rules; raises :class:`InvalidExpression`."""
    return parse_expression(text)[0]


# --------------------------------------------------------------------------------------------
# Solver and generator
# --------------------------------------------------------------------------------------------


def reachable(numbers: Sequence[int]) -> dict[int, str]:
    """Every value reachable using *all* of ``numbers`` once each -> one expression for it.

    TinyZero's rules: intermediate results are integers, subtraction never goes negative and
    division is exact (and never by zero). Works over subsets (bitmasks): the value set of a
    subset combines the value sets of each split of it into two non-empty parts.
    """
    n = len(numbers)
    if n == 0:
        return {}
    values: dict[int, dict[int, str]] = {1 << i: {int(x): str(int(x))} for i, x in enumerate(numbers)}
    for mask in range(1, 1 << n):
        if mask in values:
            continue
        out: dict[int, str] = {}
        low = mask & -mask
        # Enumerate splits (a, b) of mask once each: a always holds mask's lowest bit.
        sub = (mask - 1) & mask
        while sub:
            if sub & low:
                rest = mask ^ sub
                for x, ex in values[sub].items():
                    for y, ey in values[rest].items():
                        _combine(x, ex, y, ey, out)
            sub = (sub - 1) & mask
        values[mask] = out
    return {v: _strip_outer(e) for v, e in values[(1 << n) - 1].items()}


def _combine(x: int, ex: str, y: int, ey: str, out: dict[int, str]) -> None:
    out.setdefault(x + y, f"({ex} + {ey})")
    out.setdefault(x * y, f"({ex} * {ey})")
    if x >= y:
        out.setdefault(x - y, f"({ex} - {ey})")
    else:
        out.setdefault(y - x, f"({ey} - {ex})")
    if y != 0 and x % y == 0:
        out.setdefault(x // y, f"({ex} / {ey})")
    if x != 0 and y % x == 0:
        out.setdefault(y // x, f"({ey} / {ex})")


def _strip_outer(expr: str) -> str:
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and i < len(expr) - 1:
                return expr  # the first "(" closes before the end: "(a) * (b)"
        return expr[1:-1]
    return expr


def solve(numbers: Sequence[int], target: int) -> str | None:
    """One expression using each of ``numbers`` exactly once that equals ``target``, or ``None``.

    Searches under TinyZero's rules (see :func:`reachable`), so ``None`` means no solution with
    integral, non-negative intermediate results; the expression always passes :func:`parse_expression`.
    """
    if len(numbers) > MAX_NUMBERS:
        raise ValueError(f"solve() supports at most {MAX_NUMBERS} numbers, got {len(numbers)}")
    return reachable(numbers).get(int(target))


def _as_range(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        lo = hi = int(value)
    else:
        lo, hi = (int(v) for v in value)
    if lo > hi:
        raise ValueError(f"{name}={value!r}: the low end exceeds the high end")
    return lo, hi


# --------------------------------------------------------------------------------------------
# The env
# --------------------------------------------------------------------------------------------

INSTRUCTIONS = (
    "You are playing Countdown. You get a list of numbers and a target number. Write one arithmetic "
    "expression that uses every given number exactly once and evaluates to the target. You may use "
    "+, -, *, / and parentheses; do not use any other number, and do not write an equals sign.\n"
    "Example: for the numbers [3, 5, 2] and the target 16, a correct answer is: (3 + 5) * 2"
)


class CountdownEnv(TextEnv):
    """Countdown (TinyZero): combine the given numbers with + - * / to reach the target. Single step.

    Constructor arguments:
        num_numbers: numbers per puzzle, an int or an inclusive ``(low, high)`` range (2..5).
        number_range: inclusive range each number is drawn from.
        target_range: inclusive range of targets.
        reward_correct, reward_format, reward_unparsable: see the module docstring.
        render_mode: ``"ansi"`` (render returns the problem text) or ``None``.

    ``reset(options={"numbers": [...], "target": n})`` poses that puzzle (it may be unsolvable:
    ``info["solvable"]`` says). Reset info: ``numbers``, ``target``, ``solvable``. Step info adds
    ``reason`` (``correct``, ``wrong_value``, ``wrong_numbers``, ``unparsable``), ``value`` (the
    expression's value as a string, or ``None``) and ``numbers_used``.
    """

    instructions = INSTRUCTIONS
    example_answer = "(3 + 5) * 2"

    def __init__(
        self,
        num_numbers: int | Sequence[int] = (3, 4),
        number_range: Sequence[int] = (1, 99),
        target_range: Sequence[int] = (10, 100),
        reward_correct: float = 1.0,
        reward_format: float = 0.1,
        reward_unparsable: float = 0.0,
        render_mode: str | None = "ansi",
    ):
        super().__init__(render_mode=render_mode)
        self.num_numbers = _as_range(num_numbers, "num_numbers")
        if self.num_numbers[0] < MIN_NUMBERS or self.num_numbers[1] > MAX_NUMBERS:
            raise ValueError(f"num_numbers={num_numbers!r} must lie within {MIN_NUMBERS}..{MAX_NUMBERS}")
        self.number_range = _as_range(number_range, "number_range")
        if self.number_range[0] < 1:
            raise ValueError(f"number_range={number_range!r} must hold positive integers")
        self.target_range = _as_range(target_range, "target_range")
        self.reward_correct = float(reward_correct)
        self.reward_format = float(reward_format)
        self.reward_unparsable = float(reward_unparsable)
        self.invalid_action_penalty = self.reward_unparsable
        self.numbers: list[int] = []
        self.target: int = 0
        self._solution: str | None = None
        self._problem = ""

    # -- puzzle ----------------------------------------------------------------------------------

    def _generate(self) -> tuple[list[int], int, str]:
        rng = self.np_random
        for _ in range(MAX_GENERATION_ATTEMPTS):
            k = int(rng.integers(self.num_numbers[0], self.num_numbers[1] + 1))
            numbers = [int(x) for x in rng.integers(self.number_range[0], self.number_range[1] + 1, size=k)]
            lo, hi = self.target_range
            # Sorted so the choice depends only on the value set, not on dict insertion order.
            candidates = sorted((v, e) for v, e in reachable(numbers).items() if lo <= v <= hi)
            if candidates:
                value, expr = candidates[int(rng.integers(len(candidates)))]
                return numbers, value, expr
        raise RuntimeError(
            f"no solvable Countdown puzzle found in {MAX_GENERATION_ATTEMPTS} draws with "
            f"num_numbers={self.num_numbers}, number_range={self.number_range}, target_range={self.target_range}"
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if options and ("numbers" in options or "target" in options):
            numbers, target = options.get("numbers"), options.get("target")
            if not isinstance(numbers, (list, tuple)) or not numbers or isinstance(target, bool):
                raise ValueError(
                    "options must hold 'numbers' (a non-empty list of ints) and 'target' (an int)"
                )
            self.numbers = [int(x) for x in numbers]
            self.target = int(target)
            self._solution = solve(self.numbers, self.target) if len(self.numbers) <= MAX_NUMBERS else None
        else:
            self.numbers, self.target, self._solution = self._generate()
        self._problem = (
            f"Numbers: {self.numbers}\nTarget: {self.target}\n"
            "Write an expression that uses each number exactly once and equals the target."
        )
        info = {
            "success": False,
            "action_is_valid": True,
            "numbers": list(self.numbers),
            "target": self.target,
            "solvable": self._solution is not None,
        }
        return self._problem, info

    # -- scoring ---------------------------------------------------------------------------------

    def score(self, action: str) -> tuple[float, dict[str, Any]]:
        """Reward and info for ``action`` against the current puzzle; never raises, bounded time."""
        try:
            value, used = parse_expression(action)
        except InvalidExpression:
            return self.reward_unparsable, {
                "success": False,
                "action_is_valid": False,
                "reason": "unparsable",
                "value": None,
                "numbers_used": [],
            }
        info: dict[str, Any] = {"value": str(value), "numbers_used": used}
        if Counter(used) != Counter(self.numbers):
            return self.reward_format, {
                "success": False,
                "action_is_valid": False,
                "reason": "wrong_numbers",
                **info,
            }
        if value != self.target:
            return self.reward_format, {
                "success": False,
                "action_is_valid": True,
                "reason": "wrong_value",
                **info,
            }
        return self.reward_correct, {"success": True, "action_is_valid": True, "reason": "correct", **info}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not self.numbers:
            raise RuntimeError("call reset() before step()")
        reward, info = self.score(action)
        verdicts = {
            "correct": f"Correct: the expression equals {self.target}.",
            "wrong_value": f"Wrong: the expression equals {info['value']}, not {self.target}.",
            "wrong_numbers": f"Wrong: the expression must use exactly the numbers {self.numbers}.",
            "unparsable": "Invalid: the answer is not an arithmetic expression over the given numbers.",
        }
        info.update(numbers=list(self.numbers), target=self.target)
        return verdicts[info["reason"]], float(reward), True, False, info

    def render(self) -> str:
        return self._problem

    def oracle_thought(self) -> str:
        """A short, true note for warm-start demonstrations: the solution's arithmetic, step by step."""
        head = f"I need {self.target} from {', '.join(map(str, self.numbers))}."
        if self._solution is None:
            return head
        return " ".join([head, *(f"{step}." for step in solution_steps(self._solution))])

    def oracle_actions(self) -> list[str] | None:
        """One correct expression for the current puzzle, or ``None`` if it has none."""
        return [self._solution] if self._solution is not None else None
