"""The architecture holds: import-linter's contracts (pyproject.toml, docs/architecture.md), ruff's
function size limits, and no test reaching into a private name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
)


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS, "--no-cache", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_contracts_are_kept():
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The check can fail: config placed above the cli (which imports it) breaks the contract."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        """
[tool.importlinter]
root_packages = ["agentrl"]

[[tool.importlinter.contracts]]
name = "upside down"
type = "layers"
containers = ["agentrl"]
layers = ["config", "cli"]
""",
        encoding="utf-8",
    )
    proc = lint_imports("--config", str(config))
    assert proc.returncode != 0
    assert "agentrl.cli -> agentrl.config" in proc.stdout, proc.stdout


def test_functions_stay_within_the_size_limits():
    """ruff's complexity, branch, argument and statement limits (pyproject.toml), in CI too."""
    pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e '.[test]'")
    rules = "C901,PLR0912,PLR0913,PLR0915"
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", rules, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------
# Tests use public names only
# ------------------------------------------------------------------------------------------------

PACKAGES = ("agentrl", "agentrl_envs")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> set[str]:
    """``module._name`` for each private name of agentrl or agentrl_envs that ``source`` imports
    (``from agentrl.x import _y``) or reads from an imported module (``x._y``)."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name -> module
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top in PACKAGES:  # `import a.b as c` binds c to a.b; `import a.b` binds a
                    modules[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                if _private(alias.name):
                    found.add(f"{node.module}.{alias.name}")
                else:
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            dotted = []
            while isinstance(value, ast.Attribute):
                dotted.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                found.add(".".join([modules[value.id], *reversed(dotted), node.attr]))
    return found


def test_private_uses_are_found():
    source = """
import agentrl.envs.registry as reg
import agentrl
from agentrl.training import trainer
from agentrl.training.trainer import LoopState, _collapse_guard
from agentrl_envs import math_problems
x = reg._plugins_loaded
y = math_problems._level1
z = agentrl.training.trainer._stage_settings
ok = math_problems.LEVELS, trainer.train, reg.__name__, self._private, os._exit
"""
    assert private_uses(source) == {
        "agentrl.training.trainer._collapse_guard",
        "agentrl.envs.registry._plugins_loaded",
        "agentrl_envs.math_problems._level1",
        "agentrl.training.trainer._stage_settings",
    }


def test_tests_use_public_names_only():
    uses = {
        (path.name, name)
        for path in sorted(ROOT.glob("tests/*.py"))
        for name in private_uses(path.read_text())
    }
    assert uses == set(), "test through a public function, or make a real building block public"


# ------------------------------------------------------------------------------------------------
# The suite's own disk check (tests/conftest.py)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slow", "short_gb", "stops"), [(True, 1, True), (True, -1, False), (False, 1, True), (False, -1, False)]
)
def test_the_suite_stops_before_its_first_test_when_the_disk_cannot_hold_it(
    monkeypatch, tmp_path, slow, short_gb, stops
):
    """``short_gb``: how far the free space falls short of what the selected tests need."""
    import re
    import shutil
    from types import SimpleNamespace

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    import conftest

    need = conftest.DISK_GB["with slow tests" if slow else "without"]
    free_gb = need - short_gb
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=free_gb * 1e9))
    # A --basetemp whose folder does not exist yet: the nearest existing folder's disk counts.
    config = SimpleNamespace(getoption={"collectonly": False, "basetemp": str(tmp_path / "new" / "base")}.get)
    items = [
        SimpleNamespace(get_closest_marker=lambda name, s=s: name == "slow" and s) for s in (False, slow)
    ]
    if not stops:
        conftest.pytest_collection_modifyitems(None, config, items)
        return
    where = re.escape(str((tmp_path / "new").resolve()))
    with pytest.raises(
        pytest.exit.Exception, match=rf"only {free_gb:.1f} GB free under {where}.*about {need:.0f} GB"
    ):
        conftest.pytest_collection_modifyitems(None, config, items)
