"""A procedural generator of math problems with exact answers, for :mod:`agentrl_envs.math_env`.

Levels (harder as they go up):

1. integer arithmetic with precedence: ``Compute 37 + 4 * 12 - 9.``
2. fractions: ``Compute 3/4 + 5/6. Give the answer as a fraction in lowest terms.``
3. linear equations: ``Solve for x: 5x - 3 = 2x + 9.`` (the solution may be a fraction)
4. short word problems (shopping, speed, sharing, ages, work rates) with rational answers

Every draw uses only the given :class:`numpy.random.Generator`, so a seed fixes the problem on any
machine. Answers are exact strings: integers (``"42"``, ``"-7"``) or reduced fractions (``"19/12"``).

Each problem also comes with a short worked solution computed from the same values (one or two
sentences of arithmetic whose last number is the answer, e.g. ``"4 * 12 = 48. 37 + 48 = 85. 85 - 9
= 76."``), used as the truthful thought of warm-start demonstrations: :func:`generate_worked_problem`.
The step writers (:func:`int_expression_steps`, :func:`fraction_steps`, :func:`linear_steps`) and the
generators (:data:`LEVELS`, :data:`WORD_PROBLEMS` by kind) are public, for tests and other envs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np

__all__ = [
    "LEVELS",
    "WORD_PROBLEMS",
    "format_number",
    "fraction_steps",
    "generate_problem",
    "generate_worked_problem",
    "int_expression_steps",
    "linear_steps",
]

#: (problem text, exact answer, worked solution) as drawn by a level's generator.
Worked = tuple[str, Fraction, str]

_PEOPLE = ("Maya", "Omar", "Lena", "Tom", "Priya", "Kenji", "Sara", "Diego", "Nina", "Yusuf")


def format_number(value: Fraction | int) -> str:
    """``"42"`` for integers, ``"-19/12"`` for other rationals (always in lowest terms)."""
    value = Fraction(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _level1(rng: np.random.Generator) -> Worked:
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
    return f"Compute {text}.", Fraction(value), int_expression_steps(terms, ops)


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


def int_expression_steps(terms: list[int], ops: list[str]) -> str:
    """The worked steps of ``terms`` joined by ``ops``: products first, then sums and differences left to right.

    ``[37, 4, 12, 9], ["+", "*", "-"]`` gives ``"4 * 12 = 48. 37 + 48 = 85. 85 - 9 = 76."``.
    """
    steps: list[str] = []
    # Group the factors of each product, as _eval_int_expression folds them.
    groups: list[list[int]] = [[terms[0]]]
    signs: list[str] = []
    for op, t in zip(ops, terms[1:]):
        if op == "*":
            groups[-1].append(t)
        else:
            groups.append([t])
            signs.append(op)
    values: list[int] = []
    for factors in groups:
        value = factors[0]
        for f in factors[1:]:
            steps.append(f"{format_number(value)} * {format_number(f)} = {format_number(value * f)}")
            value *= f
        values.append(value)
    total = values[0]
    for op, v in zip(signs, values[1:]):
        new = total + v if op == "+" else total - v
        steps.append(f"{format_number(total)} {op} {format_number(v)} = {format_number(new)}")
        total = new
    return " ".join(f"{step}." for step in steps)


def _fraction(rng: np.random.Generator) -> Fraction:
    # A proper or improper fraction that is not an integer (redrawn when it reduces to one).
    while True:
        den = _int(rng, 2, 12)
        value = Fraction(_int(rng, 1, den * 2 - 1), den)
        if value.denominator != 1:
            return value


def _level2(rng: np.random.Generator) -> Worked:
    a, b = _fraction(rng), _fraction(rng)
    op = _pick(rng, ("+", "-", "*", "/"))
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    symbol = {"+": "+", "-": "-", "*": "\\times", "/": "\\div"}[op]
    problem = (
        f"Compute $\\frac{{{a.numerator}}}{{{a.denominator}}} {symbol} \\frac{{{b.numerator}}}{{{b.denominator}}}$. "
        "Give the answer as a fraction in lowest terms (or an integer)."
    )
    return problem, value, fraction_steps(a, b, op)


def _over(num: int, den: int) -> str:
    # A fraction as written, not reduced (``"9/12"``): the intermediate form of a worked step.
    return f"{format_number(num)}/{format_number(den)}"


def fraction_steps(a: Fraction, b: Fraction, op: str) -> str:
    """The worked steps of ``a op b`` for ``op`` in ``+ - * /``, ending with the reduced result.

    ``3/4 + 5/6`` gives ``"3/4 + 5/6 = 9/12 + 10/12 = 19/12."``; ``3/4 / 5/6`` gives
    ``"Dividing by 5/6 is multiplying by 6/5: 3/4 * 6/5 = 18/20 = 9/10."``.
    """
    head = ""
    if op in "+-":
        den = a.denominator * b.denominator // math.gcd(a.denominator, b.denominator)
        na, nb = a.numerator * (den // a.denominator), b.numerator * (den // b.denominator)
        num = na + nb if op == "+" else na - nb
        chain = [f"{format_number(a)} {op} {format_number(b)}"]
        if a.denominator != den or b.denominator != den:
            chain.append(f"{_over(na, den)} {op} {_over(nb, den)}")
    else:
        if op == "/":
            head = f"Dividing by {format_number(b)} is multiplying by {format_number(1 / b)}: "
            b = 1 / b
        num, den = a.numerator * b.numerator, a.denominator * b.denominator
        chain = [f"{format_number(a)} * {format_number(b)}"]
    chain.append(_over(num, den))
    result = format_number(Fraction(num, den))
    if result != chain[-1]:
        chain.append(result)
    return head + " = ".join(chain) + "."


def _linear_side(coef: int, const: int) -> str:
    if coef == 0:
        return str(const)
    x = "x" if coef == 1 else ("-x" if coef == -1 else f"{coef}x")
    if const == 0:
        return x
    return f"{x} {'+' if const > 0 else '-'} {abs(const)}"


def _level3(rng: np.random.Generator) -> Worked:
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
    return problem, x, linear_steps(a, b, c, d)


def _x_term(coef: int) -> str:
    return "x" if coef == 1 else ("-x" if coef == -1 else f"{coef}x")


def linear_steps(a: int, b: int, c: int, d: int) -> str:
    """The worked solution of ``a x + b = c x + d`` (``a != c``): x terms to the left, numbers to the right.

    ``5, -3, 2, 9`` gives ``"5x - 2x = 9 + 3, so 3x = 12 and x = 4."``.
    """
    coef, const = a - c, d - b
    x = format_number(Fraction(const, coef))
    collected = f"{_x_term(coef)} = {format_number(const)}"
    if c == 0 and (b == 0 or d == 0):  # already a x = const: nothing to move
        return f"x = {x}." if coef == 1 else f"{collected}, so x = {x}."
    solved = f"x = {x}" if coef == 1 else f"{collected} and x = {x}"
    left = _x_term(a) if c == 0 else f"{_x_term(a)} {'-' if c > 0 else '+'} {_x_term(abs(c))}"
    if b == 0:
        right = format_number(d)
    elif d == 0:
        right = format_number(-b)
    else:
        right = f"{format_number(d)} {'-' if b > 0 else '+'} {format_number(abs(b))}"
    return f"{left} = {right}, so {solved}."


def _word_shopping(rng: np.random.Generator) -> Worked:
    who = _pick(rng, _PEOPLE)
    item = _pick(rng, ("pencils", "apples", "notebooks", "stickers", "oranges"))
    price, count = _int(rng, 2, 9), _int(rng, 3, 12)
    # The next multiple of ten above the cost, sometimes one or two more: change is positive.
    paid = (price * count // 10 + 1 + _int(rng, 0, 2)) * 10
    cost = price * count
    return (
        f"{who} buys {count} {item} at {price} dollars each and pays with {paid} dollars. "
        "How many dollars of change does " + who + " get?",
        Fraction(paid - cost),
        f"{count} {item} at {price} dollars each cost {count} * {price} = {cost} dollars. "
        f"{paid} - {cost} = {paid - cost}.",
    )


def _word_speed(rng: np.random.Generator) -> Worked:
    who = _pick(rng, _PEOPLE)
    speed, hours = _int(rng, 3, 80), _int(rng, 2, 9)
    extra = _int(rng, 1, 30)
    first = speed * hours
    return (
        f"{who} travels at {speed} km per hour for {hours} hours, then another {extra} km. "
        "How many km does " + who + " travel in total?",
        Fraction(first + extra),
        f"{hours} hours at {speed} km per hour is {speed} * {hours} = {first} km. {first} + {extra} = {first + extra}.",
    )


def _word_sharing(rng: np.random.Generator) -> Worked:
    who = _pick(rng, _PEOPLE)
    total, friends = _int(rng, 10, 99), _int(rng, 2, 8)
    share = Fraction(total, friends)
    return (
        f"{who} shares {total} liters of juice equally among {friends} friends. "
        "How many liters does each friend get? Give an exact answer.",
        share,
        f"Each friend gets {total} / {friends} = {format_number(share)} liters.",
    )


def _word_ages(rng: np.random.Generator) -> Worked:
    a, b = _pick(rng, _PEOPLE[:5]), _pick(rng, _PEOPLE[5:])
    young, times, years = _int(rng, 3, 15), _int(rng, 2, 4), _int(rng, 2, 10)
    now = times * young
    return (
        f"{a} is {times} times as old as {b}. {b} is {young} years old. "
        f"How old will {a} be in {years} years?",
        Fraction(now + years),
        f"{a} is now {times} * {young} = {now} years old, so in {years} years {a} will be {now} + {years} = {now + years}.",
    )


def _word_work(rng: np.random.Generator) -> Worked:
    a, b = _pick(rng, _PEOPLE[:5]), _pick(rng, _PEOPLE[5:])
    ta, tb = _int(rng, 2, 12), _int(rng, 2, 12)
    rate = Fraction(1, ta) + Fraction(1, tb)
    hours = 1 / rate
    per_hour = format_number(rate) if rate.denominator == 1 else f"({format_number(rate)})"
    return (
        f"{a} can paint a fence in {ta} hours and {b} can paint it in {tb} hours. "
        "Working together at these rates, how many hours do they need? Give an exact answer.",
        hours,
        f"Together they paint 1/{ta} + 1/{tb} = {format_number(rate)} of the fence per hour, "
        f"so they need 1 / {per_hour} = {format_number(hours)} hours.",
    )


#: Kind of word problem -> its generator (level 4 draws one kind uniformly, in this order).
WORD_PROBLEMS: dict[str, Callable[[np.random.Generator], Worked]] = {
    "shopping": _word_shopping,
    "speed": _word_speed,
    "sharing": _word_sharing,
    "ages": _word_ages,
    "work": _word_work,
}


def _level4(rng: np.random.Generator) -> Worked:
    kinds = list(WORD_PROBLEMS.values())
    return kinds[int(rng.integers(len(kinds)))](rng)


#: Level number -> generator of (problem text, exact answer, worked solution).
LEVELS: dict[int, Callable[[np.random.Generator], Worked]] = {
    1: _level1,
    2: _level2,
    3: _level3,
    4: _level4,
}


def generate_worked_problem(rng: np.random.Generator, level: int) -> tuple[str, str, str]:
    """One ``(problem, answer, solution)`` of the given level (see :data:`LEVELS`), drawn from ``rng``.

    ``solution`` is a short worked solution whose last number is ``answer``.
    """
    if level not in LEVELS:
        raise ValueError(f"level={level!r}: choose one of {sorted(LEVELS)}")
    problem, value, solution = LEVELS[level](rng)
    return problem, format_number(value), solution


def generate_problem(rng: np.random.Generator, level: int) -> tuple[str, str]:
    """One ``(problem, answer)`` pair of the given level (see :data:`LEVELS`), drawn from ``rng``."""
    problem, answer, _ = generate_worked_problem(rng, level)
    return problem, answer
