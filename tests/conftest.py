"""Shared fixtures: the tiny random model (real SmolLM2 tokenizer and chat template), its tokenizer,
and the scripts of scripts/ as modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    from agentrl.models import tiny_model_dir

    return str(tiny_model_dir())


@pytest.fixture(scope="session")
def tokenizer(tiny_model_path):
    from agentrl.models import load_tokenizer

    return load_tokenizer(tiny_model_path)


@pytest.fixture()
def tiny_model(tiny_model_path):
    """A fresh copy of the tiny model for each test (tests may train it)."""
    from agentrl.models import load_model

    return load_model(tiny_model_path)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("eval_table")``: a script of ``scripts/`` imported as a module, to test its functions."""
    import importlib.util
    import sys
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


#: What the selected tests hold under pytest's temporary folder at their peak, with a margin. A passed
#: test's folder goes when it ends (pyproject.toml), so the peak is the largest test's: 4.2 GB for the
#: whole suite (2026-12-02, sampled every 3 s), the 4.1 GB of checkpoints of
#: tests/test_train_vllm.py's two steps of the default model; 1.1 GB without the slow tests.
DISK_GB = {"with slow tests": 6.0, "without": 2.0}


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Stop before the first test where the selected tests cannot fit on the disk: a full disk fails
    the end-to-end runs half-way, and has hung the real-vLLM tests until CI's time ran out."""
    import tempfile
    from pathlib import Path

    from agentrl.training.run import free_disk_gb

    if not items or config.getoption("collectonly"):
        return
    basetemp = config.getoption("basetemp")
    root = Path(basetemp).resolve().parent if basetemp else Path(tempfile.gettempdir()).resolve()
    need = DISK_GB["with slow tests" if any(i.get_closest_marker("slow") for i in items) else "without"]
    free = free_disk_gb(root)  # --basetemp may name a folder not created yet
    if free < need:
        pytest.exit(
            f"only {free:.1f} GB free under {root}; these tests write up to about {need:.0f} GB "
            f"there (checkpoints of training runs). Free some space (old run folders, "
            f"{root}/pytest-of-*) or point TMPDIR at a larger disk.",
            returncode=4,
        )
