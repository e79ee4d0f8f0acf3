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
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
