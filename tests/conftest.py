"""Shared fixtures: the tiny random model (real SmolLM2 tokenizer and chat template) and its tokenizer."""

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
