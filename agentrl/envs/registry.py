"""The env registry: a plain dict of :class:`EnvSpec` with ``register`` and ``make``.

Envs come from three places, all through :func:`register`:

- code that calls ``agentrl.register("my-env", MyEnv)`` (or ``"my_pkg.envs:MyEnv"``, imported lazily);
- installed packages that declare an entry point in the group ``agentrl.envs`` whose value is a
  zero-argument function (or a module) that calls ``register``. agentrl's own built-in envs are
  declared this way, exactly like a third-party package's;
- each spec may also name a Gymnasium id (``agentrl/Sokoban-v0``), so ``gymnasium.make`` works too.

May import: env (in agentrl.envs), and suggest, seeds (lint-imports checks).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import gymnasium

from agentrl.suggest import did_you_mean

ENTRY_POINT_GROUP = "agentrl.envs"


class UnknownEnvError(KeyError):
    """No env is registered under the name asked for; the message lists the names and the closest one."""


@dataclass
class EnvSpec:
    """One registered env."""

    name: str
    """Short name used by ``make`` and the CLI (``sokoban``)."""
    entry_point: Callable[..., gymnasium.Env] | str
    """A class or factory, or ``"module:attr"`` imported on first use."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Default constructor arguments; ``make(name, **kwargs)`` overrides them."""
    description: str = ""
    """One line shown by ``agentrl envs list``."""
    gym_id: str | None = None
    """Gymnasium id (``agentrl/Sokoban-v0``) under which the env is also registered."""

    def summary(self) -> str:
        """The description, or the first line of the env class's docstring (imports a lazy entry point)."""
        if self.description:
            return self.description
        try:
            return _first_doc_line(self.load())
        except Exception:  # noqa: BLE001 - a listing must not fail on one broken env
            return ""

    def load(self) -> Callable[..., gymnasium.Env]:
        """The env class or factory, importing it if the entry point is a string."""
        if callable(self.entry_point):
            return self.entry_point
        module_name, _, attr = self.entry_point.partition(":")
        if not attr:
            raise ValueError(
                f"entry point {self.entry_point!r} of env {self.name!r} must look like 'module:attr'"
            )
        return getattr(importlib.import_module(module_name), attr)


#: name -> spec. Module state is this dict only; functions take it as their default.
registry: dict[str, EnvSpec] = {}
_plugins_loaded = False


def register(
    name: str,
    entry_point: Callable[..., gymnasium.Env] | str,
    *,
    description: str = "",
    gym_id: str | None = None,
    override: bool = False,
    **kwargs: Any,
) -> EnvSpec:
    """Register an env under ``name``; ``kwargs`` become its default constructor arguments.

    Registering a name twice is an error unless ``override=True`` (a plugin cannot silently
    replace another's env).
    """
    if not name or not isinstance(name, str):
        raise ValueError("env name must be a non-empty str")
    if name in registry and not override:
        existing = registry[name]
        if existing.entry_point == entry_point and existing.kwargs == kwargs:
            return existing  # registering the same thing twice (re-import) is harmless
        raise ValueError(f"env {name!r} is already registered; pass override=True to replace it")
    owner = next((s for s in registry.values() if gym_id is not None and s.gym_id == gym_id), None)
    if owner is not None and owner.name != name and not override:
        raise ValueError(
            f"Gymnasium id {gym_id!r} already belongs to env {owner.name!r}; choose another gym_id "
            "or pass override=True"
        )
    if not description:
        description = _first_doc_line(entry_point)
    previous = registry.get(name)
    if previous is not None and previous.gym_id is not None:
        gymnasium.registry.pop(previous.gym_id, None)  # an override must not leave a stale gym id
    spec = EnvSpec(name, entry_point, dict(kwargs), description, gym_id)
    registry[name] = spec
    if gym_id is not None:
        gymnasium.registry.pop(gym_id, None)  # replacing is deliberate here: no "overriding" warning
        gymnasium.register(id=gym_id, entry_point=entry_point, kwargs=dict(kwargs), disable_env_checker=True)
    return spec


def _first_doc_line(entry_point: Callable[..., Any] | str) -> str:
    if isinstance(entry_point, str):
        return ""  # not imported at registration; EnvSpec.summary() reads it lazily
    doc = (entry_point.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def load_plugins(force: bool = False) -> None:
    """Run every ``agentrl.envs`` entry point once. A broken plugin warns; it never breaks agentrl."""
    global _plugins_loaded
    if _plugins_loaded and not force:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()
            if callable(target):
                target()
        except Exception as exc:  # noqa: BLE001 - a plugin's failure must not take agentrl down
            warnings.warn(
                f"agentrl: the env plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )


def spec(name: str) -> EnvSpec:
    """The spec registered under ``name`` (or its Gymnasium id); a clear error names the closest match.

    ``"my_module:my-env"`` imports ``my_module`` first (as ``gymnasium.make`` does), so an env that a
    module registers on import can be used from the command line without packaging it.
    """
    load_plugins()
    if name in registry:
        return registry[name]
    module_name, sep, short = name.partition(":")
    if sep and module_name and short:
        # Gymnasium's convention "module:name": import the module (which registers), then look up.
        importlib.import_module(module_name)
        return spec(short)
    for s in registry.values():
        if s.gym_id == name:
            return s
    known = sorted(registry)
    hint = did_you_mean(name, known + [s.gym_id for s in registry.values() if s.gym_id])
    raise UnknownEnvError(
        f"no env named {name!r}.{hint} Registered envs: {', '.join(known) or '(none)'}. "
        "Register your own with agentrl.register(name, EnvClass)."
    )


def make(name: str, **kwargs: Any) -> gymnasium.Env:
    """Build the env registered under ``name``; ``kwargs`` override the registered defaults."""
    s = spec(name)
    return s.load()(**{**s.kwargs, **kwargs})


def names() -> list[str]:
    """Registered env names, sorted."""
    load_plugins()
    return sorted(registry)
