"""Knights and Knaves (Logic-RL): decide who always tells the truth and who always lies. Single step.

Each of ``n_people`` inhabitants makes one statement built from leaves ("Mia is a knight",
"Mia is a knave"; "I am a knave" only inside a compound) combined with not, and, or, if-then and
if-and-only-if, nested at most ``max_depth`` levels; the two sides of a binary connective are
about different people, so no statement is a bare tautology. A knight's statement is true and
a knave's is false, so person i is a knight exactly when statement i holds. The generator checks
all 2^n assignments and keeps only puzzles with exactly one consistent assignment, redrawing
the statements otherwise.

The answer names every inhabitant once as a knight or a knave, ideally one per line::

    (1) Mia is a knight
    (2) Noah is a knave

Parsing is tolerant (see :func:`parse_answer`). Rewards (Logic-RL's answer scores, configurable):
``reward_correct`` 2.0 for a full match, ``reward_wrong`` -1.5 for a parsable mismatch,
``reward_unparsable`` -2.0 when not every inhabitant is assigned.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentrl import TextEnv

__all__ = [
    "NAMES",
    "KnightsKnavesEnv",
    "Statement",
    "check_assignment",
    "count_solutions",
    "evaluate",
    "generate_puzzle",
    "parse_answer",
    "render_statement",
    "solutions",
]

#: The names inhabitants are drawn from. "Alice" and "Bob" are kept out: the instructions'
#: example uses them, so an echoed example never names a real inhabitant.
NAMES: tuple[str, ...] = (
    "Mia", "Noah", "Emma", "Liam", "Olivia", "Ethan", "Ava", "Lucas", "Sophia", "Mason",
    "Isabella", "Logan", "Harper", "James", "Evelyn", "Henry", "Abigail", "Jack", "Emily", "Owen",
    "Ella", "Samuel", "Grace", "David", "Chloe", "Joseph", "Zoey", "Daniel", "Lily", "Oliver",
    "Aria", "Jacob", "Scarlett", "Leo", "Nora", "Wyatt", "Hazel", "Caleb", "Ruby", "Isaac",
)  # fmt: skip
MIN_PEOPLE, MAX_PEOPLE = 2, 8
#: Statement draws tried before giving up (a 3-person puzzle is unique about a third of the time).
MAX_GENERATION_ATTEMPTS = 100_000
#: Longer answers are rejected unread.
MAX_ANSWER_CHARS = 8192

# A statement is a nested tuple:
#   ("is", person_index, True)  "X is a knight"      ("is", person_index, False)  "X is a knave"
#   ("not", s)   ("and", s1, s2)   ("or", s1, s2)   ("implies", s1, s2)   ("iff", s1, s2)
Statement = tuple[Any, ...]
_BINARY = ("and", "or", "implies", "iff")


def evaluate(statement: Statement, knights: Sequence[bool]) -> bool:
    """Truth of ``statement`` when ``knights[i]`` says whether person i is a knight."""
    op = statement[0]
    if op == "is":
        return knights[statement[1]] == statement[2]
    if op == "not":
        return not evaluate(statement[1], knights)
    a, b = evaluate(statement[1], knights), evaluate(statement[2], knights)
    if op == "and":
        return a and b
    if op == "or":
        return a or b
    if op == "implies":
        return (not a) or b
    if op == "iff":
        return a == b
    raise ValueError(f"unknown statement operator {op!r}")


def solutions(statements: Sequence[Statement]) -> list[tuple[bool, ...]]:
    """Every assignment (True = knight) under which each speaker's statement is true iff they are a knight."""
    n = len(statements)
    return [
        knights
        for knights in itertools.product((True, False), repeat=n)
        if all(evaluate(s, knights) == knights[i] for i, s in enumerate(statements))
    ]


def count_solutions(statements: Sequence[Statement]) -> int:
    """How many consistent assignments ``statements`` admit (a well-posed puzzle has exactly 1)."""
    return len(solutions(statements))


def _random_statement(
    rng: np.random.Generator, speaker: int, n: int, depth: int, max_depth: int
) -> Statement:
    # Inside a compound a speaker may talk about themself ("I am a knave and Noah is a knight": the
    # classic form; with two people nothing else gives a unique solution). A bare "I am a knight"
    # says nothing and a bare "I am a knave" is a paradox, so the top level is about others.
    others = [i for i in range(n) if i != speaker] if depth == 0 else list(range(n))
    # Leaves get likelier as depth grows, so statements stay readable; the top level is compound
    # half the time.
    if depth >= max_depth or rng.random() < (0.5 if depth == 0 else 0.7):
        return ("is", int(others[int(rng.integers(len(others)))]), bool(rng.random() < 0.5))
    op = ("not",) + _BINARY
    choice = op[int(rng.integers(len(op)))]
    if choice == "not":
        return ("not", _random_statement(rng, speaker, n, depth + 1, max_depth))
    # The two sides talk about different people: "if Mia is a knave then Mia is a knave" is a
    # tautology that says nothing. With too few people for that, fall back to a leaf.
    for _ in range(8):
        left = _random_statement(rng, speaker, n, depth + 1, max_depth)
        right = _random_statement(rng, speaker, n, depth + 1, max_depth)
        if _people(left).isdisjoint(_people(right)):
            return (choice, left, right)
    return ("is", int(others[int(rng.integers(len(others)))]), bool(rng.random() < 0.5))


def _people(statement: Statement) -> set[int]:
    if statement[0] == "is":
        return {statement[1]}
    return set().union(*(_people(s) for s in statement[1:]))


def generate_puzzle(
    rng: np.random.Generator, n_people: int, max_depth: int = 2
) -> tuple[list[Statement], tuple[bool, ...]]:
    """Draw statements from ``rng`` until exactly one assignment is consistent; return (statements, solution)."""
    if not MIN_PEOPLE <= n_people <= MAX_PEOPLE:
        raise ValueError(f"n_people={n_people} must lie within {MIN_PEOPLE}..{MAX_PEOPLE}")
    for _ in range(MAX_GENERATION_ATTEMPTS):
        statements = [_random_statement(rng, i, n_people, 0, max_depth) for i in range(n_people)]
        found = solutions(statements)
        if len(found) == 1:
            return statements, found[0]
    raise RuntimeError(f"no unique Knights and Knaves puzzle in {MAX_GENERATION_ATTEMPTS} draws")


def render_statement(
    statement: Statement, names: Sequence[str], speaker: int | None = None, top: bool = True
) -> str:
    """English for ``statement`` as said by person ``speaker`` (who says "I am ...").

    Compound parts are parenthesised so the reading is unambiguous.
    """
    op = statement[0]
    if op == "is":
        role = "knight" if statement[2] else "knave"
        return f"I am a {role}" if statement[1] == speaker else f"{names[statement[1]]} is a {role}"
    if op == "not":
        text = f"it is not the case that {render_statement(statement[1], names, speaker, top=False)}"
    else:
        a = render_statement(statement[1], names, speaker, top=False)
        b = render_statement(statement[2], names, speaker, top=False)
        text = {
            "and": f"{a} and {b}",
            "or": f"{a} or {b}",
            "implies": f"if {a} then {b}",
            "iff": f"{a} if and only if {b}",
        }[op]
    return text if top else f"({text})"


def parse_answer(text: str, names: Sequence[str]) -> list[bool] | None:
    """The assignment (True = knight, in ``names`` order) that ``text`` states, or ``None``.

    Tolerant: finds every "<Name> is a knight/knave" phrase anywhere (case-insensitive; "is",
    "a"/"an", punctuation such as ":" or "-" between are optional, so "(1) Mia is a knight",
    "mia: knave" and "Mia - Knight." all count). Every name must be assigned; a name assigned both
    roles, a missing name, or a text longer than :data:`MAX_ANSWER_CHARS` gives ``None``. "Mia is not
    a knight" matches nothing (negations are not guessed at).
    """
    if not isinstance(text, str) or len(text) > MAX_ANSWER_CHARS or not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(
        rf"\b({alternatives})\b[\s:=\-,.]*(?:(?:is|was)\s+)?(?:(?:a|an)\s+)?(knight|knave)s?\b",
        re.IGNORECASE,
    )
    lower = {n.lower(): i for i, n in enumerate(names)}
    roles: list[set[bool]] = [set() for _ in names]
    for match in pattern.finditer(text):
        roles[lower[match.group(1).lower()]].add(match.group(2).lower() == "knight")
    if any(len(r) != 1 for r in roles):
        return None
    return [next(iter(r)) for r in roles]


def format_answer(names: Sequence[str], knights: Sequence[bool]) -> str:
    """The canonical answer text: ``(1) Mia is a knight`` lines in ``names`` order."""
    return "\n".join(
        f"({i + 1}) {name} is a {'knight' if k else 'knave'}"
        for i, (name, k) in enumerate(zip(names, knights))
    )


INSTRUCTIONS = (
    "Solve a Knights and Knaves puzzle. Every inhabitant of the island is either a knight, who always "
    "tells the truth, or a knave, who always lies. From what each inhabitant says, work out who is a "
    "knight and who is a knave. Exactly one answer is consistent with the statements.\n"
    "Answer with one line per inhabitant, numbered in the order they are introduced. For example, "
    "if the inhabitants were Alice and Bob, an answer would be:\n"
    "(1) Alice is a knave\n(2) Bob is a knight"
)


class KnightsKnavesEnv(TextEnv):
    """Knights and Knaves (Logic-RL): who is a knight (always truthful), who a knave (always lies). Single step.

    Constructor arguments:
        n_people: inhabitants per puzzle (2..8).
        max_depth: how deeply statements nest (0: single "X is a knight" claims; default 2).
        reward_correct, reward_wrong, reward_unparsable: see the module docstring.
        render_mode: ``"ansi"`` (render returns the puzzle text) or ``None``.

    ``reset(options={"n_people": k})`` generates a puzzle with k people. Reset info: ``names``,
    ``solution`` (``"knight"``/``"knave"`` in name order), ``statements`` (their text). Step info
    adds ``reason`` (``correct``, ``wrong``, ``unparsable``), ``parsed`` (the roles read from the
    answer, or ``None``) and ``num_correct`` (how many people the answer got right).
    """

    instructions = INSTRUCTIONS
    example_answer = "(1) Alice is a knave\n(2) Bob is a knight"

    def __init__(
        self,
        n_people: int = 3,
        max_depth: int = 2,
        reward_correct: float = 2.0,
        reward_wrong: float = -1.5,
        reward_unparsable: float = -2.0,
        render_mode: str | None = "ansi",
    ):
        super().__init__(render_mode=render_mode)
        if not MIN_PEOPLE <= int(n_people) <= MAX_PEOPLE:
            raise ValueError(f"n_people={n_people} must lie within {MIN_PEOPLE}..{MAX_PEOPLE}")
        if not 0 <= int(max_depth) <= 4:
            raise ValueError(f"max_depth={max_depth} must lie within 0..4")
        self.n_people = int(n_people)
        self.max_depth = int(max_depth)
        self.reward_correct = float(reward_correct)
        self.reward_wrong = float(reward_wrong)
        self.reward_unparsable = float(reward_unparsable)
        self.invalid_action_penalty = self.reward_unparsable
        self.names: list[str] = []
        self.statements: list[Statement] = []
        self.solution: tuple[bool, ...] = ()
        self._problem = ""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        n = int(options.get("n_people", self.n_people)) if options else self.n_people
        rng = self.np_random
        self.names = [NAMES[int(i)] for i in rng.choice(len(NAMES), size=n, replace=False)]
        self.statements, self.solution = generate_puzzle(rng, n, self.max_depth)
        said = [
            f'{name} says: "{_capitalise(render_statement(s, self.names, speaker=i))}."'
            for i, (name, s) in enumerate(zip(self.names, self.statements))
        ]
        listing = ", ".join(self.names[:-1]) + f" and {self.names[-1]}"
        self._problem = (
            "A very special island is inhabited only by knights and knaves. Knights always tell the "
            f"truth, and knaves always lie. You meet {n} inhabitants: {listing}.\n"
            + "\n".join(said)
            + "\nSo who is a knight and who is a knave?"
        )
        info = {
            "success": False,
            "action_is_valid": True,
            "names": list(self.names),
            "solution": [_role(k) for k in self.solution],
            "statements": said,
            "n_people": n,
        }
        return self._problem, info

    def score(self, action: str) -> tuple[float, dict[str, Any]]:
        """Reward and info for ``action`` against the current puzzle; never raises, bounded time."""
        parsed = parse_answer(action, self.names)
        if parsed is None:
            info = {"success": False, "action_is_valid": False, "reason": "unparsable", "parsed": None}
            return self.reward_unparsable, {**info, "num_correct": 0}
        num_correct = sum(p == s for p, s in zip(parsed, self.solution))
        ok = num_correct == len(self.solution)
        info = {
            "success": ok,
            "action_is_valid": True,
            "reason": "correct" if ok else "wrong",
            "parsed": [_role(k) for k in parsed],
            "num_correct": num_correct,
        }
        return (self.reward_correct if ok else self.reward_wrong), info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if not self.names:
            raise RuntimeError("call reset() before step()")
        reward, info = self.score(action)
        obs = {
            "correct": "Correct: every inhabitant is identified.",
            "wrong": f"Wrong: {info['num_correct']} of {len(self.names)} inhabitants are identified correctly.",
            "unparsable": "Invalid: the answer must say for every inhabitant whether they are a knight or a knave.",
        }[info["reason"]]
        info["solution"] = [_role(k) for k in self.solution]
        return obs, float(reward), True, False, info

    def render(self) -> str:
        return self._problem

    def oracle_thought(self) -> str:
        """A short, true note for warm-start demonstrations: the answer checked statement by statement."""
        return check_assignment(self.statements, self.names, self.solution)

    def oracle_actions(self) -> list[str] | None:
        """The correct answer in the canonical format."""
        return [format_answer(self.names, self.solution)] if self.names else None


def check_assignment(statements: Sequence[Statement], names: Sequence[str], knights: Sequence[bool]) -> str:
    """Each speaker's statement checked under ``knights``, in words (a true thought when it is the solution).

    >>> check_assignment([("is", 1, False), ("is", 0, False)], ["Mia", "Noah"], (True, False))
    'Suppose Mia is a knight and Noah is a knave. Mia says Noah is a knave: true, which fits a knight. Noah says Mia is a knave: false, which fits a knave.'
    """
    roles = [f"{name} is a {_role(k)}" for name, k in zip(names, knights)]
    parts = [
        f"Suppose {', '.join(roles[:-1])} and {roles[-1]}." if len(roles) > 1 else f"Suppose {roles[0]}."
    ]
    for i, statement in enumerate(statements):
        truth = evaluate(statement, knights)
        fits = (
            f"which fits a {_role(knights[i])}"
            if truth == knights[i]
            else f"which a {_role(knights[i])} cannot say"
        )
        claim = render_statement(statement, names, speaker=None)
        parts.append(f"{names[i]} says {claim}: {'true' if truth else 'false'}, {fits}.")
    return " ".join(parts)


def _role(knight: bool) -> str:
    return "knight" if knight else "knave"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]
