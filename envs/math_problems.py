"""A procedural generator of math problems with exact answers, for :mod:`agentrl_envs.math_env`.

Levels (harder as they go up):

1. integer arithmetic with precedence: ``Compute 37 + 4 * 12 - 9.``
2. fractions: ``Compute 3/4 + 5/6. Give the answer as a fraction in lowest terms.``
3. linear equations: ``Solve for x: 5x - 3 = 2x + 9.`` (the solution may be a fraction)
4. short word problems (shopping, speed, sharing, ages, work rates) with rational answers

Every draw uses only the given :class:`numpy.random.Generator`, so a seed fixes the problem on any
machine. Answers are exact strings: integers (``"42"``, ``"-7"``) or reduced fractions (``"19/12"``).
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

__all__ = ["LEVELS", "format_number", "generate_problem"]

_PEOPLE = ("Maya", "Omar", "Lena", "Tom", "Priya", "Kenji", "Sara", "Diego", "Nina", "Yusuf")


def format_number(value: Fraction | int) -> str:
    """``"42"`` for integers, ``"-19/12"`` for other rationals (always in lowest terms)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _level1(rng: np.random.Generator) -> tuple[str, Fraction]:
    # Two or three operators over 1..50; "*" binds tighter, as the reader expects.
    n_ops = _int(rng, 2, 3)
    terms = [_int(rng, 1, 50)]
    ops: list[str] = []
    for _ in range(n_ops):
        op = _pick(rng, ("+", "-", "*"))
        ops.append(op)
        terms.append(_int(rng, 2, 12) if op == "*" else _int(rng, 1, 50))
    text = str(terms[0]) + "".join(f" {op} {t}" for op, t in zip(ops, terms[1:]))
    value = _eval_int_expression(terms, ops)
    return f"Compute {text}.", Fraction(value)


def _eval_int_expression(terms: list[int], ops: list[str]) -> int:
    # Evaluate with precedence without eval(): fold products first, then sums.
    sums: list[int] = [terms[0]]
    signs: list[int] = [1]
    for op, t in zip(ops, terms[1:]):
        if op == "*":
            sums[-1] *= t
        else:
            sums.append(t)
            signs.append(1 if op == "+" else -1)
    return sum(s * v for s, v in zip(signs, sums))


def _fraction(rng: np.random.Generator) -> Fraction:
    # A proper or improper fraction that is not an integer (redrawn when it reduces to one).
    while True:
        den = _int(rng, 2, 12)
        value = Fraction(_int(rng, 1, den * 2 - 1), den)
        if value.denominator != 1:
            return value


def _level2(rng: np.random.Generator) -> tuple[str, Fraction]:
    a, b = _fraction(rng), _fraction(rng)
    op = _pick(rng, ("+", "-", "*", "/"))
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    symbol = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}[op]
    problem = (
        f"Compute $\\frac{{{a.numerator}}}{{{a.denominator}}} {symbol} \\frac{{{b.numerator}}}{{{b.denominator}}}$. "
        "Give the answer as a fraction in lowest terms (or an integer)."
    )
    return problem, value


def _linear_side(coef: int, const: int) -> str:
    if coef == 0:
        return str(const)
    x = "x" if coef == 1 else ("-x" if coef == -1 else f"{coef}x")
    if const == 0:
        return x
    return f"{x} {'+' if const > 0 else '-'} {abs(const)}"


def _level3(rng: np.random.Generator) -> tuple[str, Fraction]:
    # a x + b = c x + d with a != c; half the time the solution is an integer by construction.
    a = _int(rng, -9, 9) or 3
    c = _int(rng, -9, 9)
    if c == a:
        c = a - _int(rng, 1, 5)
    b = _int(rng, -20, 20)
    if rng.random() < 0.5:
        x = Fraction(_int(rng, -12, 12))
        d = int(a * x + b - c * x)
    else:
        d = _int(rng, -20, 20)
        x = Fraction(d - b, a - c)
    problem = f"Solve for $x$: ${_linear_side(a, b)} = {_linear_side(c, d)}$. Give the exact value of $x$."
    return problem, x


def _word_shopping(rng: np.random.Generator) -> tuple[str, Fraction]:
    who = _pick(rng, _PEOPLE)
    item = _pick(rng, ("pencils", "apples", "notebooks", "stickers", "oranges"))
    price, count = _int(rng, 2, 9), _int(rng, 3, 12)
    # The next multiple of ten above the cost, sometimes one or two more: change is positive.
    paid = (price * count // 10 + 1 + _int(rng, 0, 2)) * 10
    return (
        f"{who} buys {count} {item} at {price} dollars each and pays with {paid} dollars. "
        "How many dollars of change does " + who + " get?",
        Fraction(paid - price * count),
    )


def _word_speed(rng: np.random.Generator) -> tuple[str, Fraction]:
    who = _pick(rng, _PEOPLE)
    speed, hours = _int(rng, 3, 80), _int(rng, 2, 9)
    extra = _int(rng, 1, 30)
    return (
        f"{who} travels at {speed} km per hour for {hours} hours, then another {extra} km. "
        "How many km does " + who + " travel in total?",
        Fraction(speed * hours + extra),
    )


def _word_sharing(rng: np.random.Generator) -> tuple[str, Fraction]:
    who = _pick(rng, _PEOPLE)
    total, friends = _int(rng, 10, 99), _int(rng, 2, 8)
    return (
        f"{who} shares {total} liters of juice equally among {friends} friends. "
        "How many liters does each friend get? Give an exact answer.",
        Fraction(total, friends),
    )


def _word_ages(rng: np.random.Generator) -> tuple[str, Fraction]:
    a, b = _pick(rng, _PEOPLE[:5]), _pick(rng, _PEOPLE[5:])
    young, times, years = _int(rng, 3, 15), _int(rng, 2, 4), _int(rng, 2, 10)
    return (
        f"{a} is {times} times as old as {b}. {b} is {young} years old. "
        f"How old will {a} be in {years} years?",
        Fraction(times * young + years),
    )


def _word_work(rng: np.random.Generator) -> tuple[str, Fraction]:
    a, b = _pick(rng, _PEOPLE[:5]), _pick(rng, _PEOPLE[5:])
    ta, tb = _int(rng, 2, 12), _int(rng, 2, 12)
    return (
        f"{a} can paint a fence in {ta} hours and {b} can paint it in {tb} hours. "
        "Working together at these rates, how many hours do they need? Give an exact answer.",
        1 / (Fraction(1, ta) + Fraction(1, tb)),
    )


_WORD_PROBLEMS: tuple[Callable[[np.random.Generator], tuple[str, Fraction]], ...] = (
    _word_shopping,
    _word_speed,
    _word_sharing,
    _word_ages,
    _word_work,
)


def _level4(rng: np.random.Generator) -> tuple[str, Fraction]:
    return _WORD_PROBLEMS[int(rng.integers(len(_WORD_PROBLEMS)))](rng)


#: Level number -> generator of (problem text, exact answer).
LEVELS: dict[int, Callable[[np.random.Generator], tuple[str, Fraction]]] = {
    1: _level1,
    2: _level2,
    3: _level3,
    4: _level4,
}


def generate_problem(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """One ``(problem, answer)`` pair of the given level (see :data:`LEVELS`), drawn from ``rng``."""
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: choose one of {sorted(LEVELS)}")
    problem, value = LEVELS[level](rng)
    return problem, format_number(value)
