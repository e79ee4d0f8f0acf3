""" "Did you mean ...?": the closest valid name to a mistyped one, for error messages.

Every lookup by name (config keys and choices, env names, model names, advantage estimators,
losses, engines) words its hint with these functions, so a typo gets the same help everywhere;
:func:`lookup` is the one lookup of a name registry.
Imports nothing from agentrl: any module may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

__all__ = ["closest", "did_you_mean", "lookup", "not_one_of"]

T = TypeVar("T")


def closest(
    name: str, choices: Iterable[str], *, cutoff: float = 0.6, ignore_case: bool = False
) -> str | None:
    """The choice most like ``name`` (``difflib``'s ratio at least ``cutoff``), or ``None``.

    With ``ignore_case`` the comparison is on lower-cased text and the choice comes back as spelled
    in ``choices``.

    >>> closest("sokobn", ["countdown", "sokoban"])
    'sokoban'
    >>> closest("GRPO", ["grpo", "rloo"]) is None
    True
    >>> closest("GRPO", ["grpo", "rloo"], ignore_case=True)
    'grpo'
    >>> closest("Ppo_Clip", ["PPO_clip", "reinforce"], ignore_case=True)
    'PPO_clip'
    >>> closest("xyz", ["grpo", "rloo"]) is None
    True
    """
    choices = list(choices)
    if not ignore_case:
        found = difflib.get_close_matches(str(name), choices, n=1, cutoff=cutoff)
        return found[0] if found else None
    by_lower = {c.lower(): c for c in reversed(choices)}  # the first spelling wins on a tie
    found = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=cutoff)
    return by_lower[found[0]] if found else None


def did_you_mean(
    name: str,
    choices: Iterable[str],
    *,
    prefix: str = "",
    quote: bool = True,
    cutoff: float = 0.6,
    ignore_case: bool = False,
) -> str:
    """``" Did you mean 'x'?"`` naming the choice closest to ``name`` (see :func:`closest`), or ``""``.

    The text starts with a space, so it goes right after a sentence: ``f"no env {name!r}.{hint}"``.
    ``prefix`` goes before the choice (a dotted config section); ``quote=False`` leaves out the quotes
    (config keys are written bare, choices as ``repr``).

    >>> did_you_mean("sokobn", ["countdown", "sokoban"])
    " Did you mean 'sokoban'?"
    >>> did_you_mean("coeff", ["coef", "estimator"], prefix="algo.kl.", quote=False)
    ' Did you mean algo.kl.coef?'
    >>> did_you_mean("xyz", ["grpo", "rloo"])
    ''
    """
    found = closest(name, choices, cutoff=cutoff, ignore_case=ignore_case)
    if found is None:
        return ""
    shown = prefix + found
    return f" Did you mean {shown!r}?" if quote else f" Did you mean {shown}?"


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """Return ``registry[name]``; for an unknown name raise ``ValueError`` listing the valid ones.

    ``what`` names the kind of thing in the message (``"advantage estimator"``...); the hint ignores
    case. The one lookup of every name registry (estimators, losses, KL estimators, engines).

    >>> lookup({"grpo": 1, "rloo": 2}, "rloo", "advantage estimator")
    2
    >>> lookup({"grpo": 1, "rloo": 2}, "GRPO", "advantage estimator")
    Traceback (most recent call last):
    ...
    ValueError: unknown advantage estimator 'GRPO'. Did you mean 'grpo'? Valid: grpo, rloo.
    """
    try:
        return registry[name]
    except KeyError:
        valid = sorted(registry)
        hint = did_you_mean(str(name), valid, ignore_case=True)
        raise ValueError(f"unknown {what} {name!r}.{hint} Valid: {', '.join(valid)}.") from None


def not_one_of(key: str, value: str, choices: Iterable[str]) -> str | None:
    """The message for a setting ``key`` whose ``value`` is not among ``choices`` (``None``: it is).

    >>> not_one_of("rollout.context_mode", "windw", ["full", "window"])
    "rollout.context_mode='windw' is not one of ['full', 'window']. Did you mean 'window'?"
    >>> not_one_of("rollout.context_mode", "full", ["full", "window"]) is None
    True
    """
    choices = sorted(choices)
    if value in choices:
        return None
    return f"{key}={value!r} is not one of {choices}.{did_you_mean(value, choices)}"
