"""Model names: the random-weight shapes used for throughput runs resolve to loadable folders."""

from __future__ import annotations

import shutil

import pytest

from agentrl import models


def test_a_random_shape_resolves_to_a_model_of_that_shape(monkeypatch: pytest.MonkeyPatch):
    shape = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    monkeypatch.setitem(models.RANDOM_SHAPES, "random-test-shape", shape)
    try:
        path = models.resolve_model_path("random-test-shape")
        model = models.load_model(path)
        assert type(model).__name__ == "Qwen2ForCausalLM"
        # The default model's tokenizer and chat template come with it; every id it samples decodes.
        tokenizer = models.load_tokenizer(path)
        assert model.config.hidden_size == 32 and model.config.vocab_size == len(tokenizer)
        assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
        assert models.resolve_model_path("random-test-shape") == path  # built once
    finally:
        shutil.rmtree(models.cache_dir() / "models" / "random-test-shape", ignore_errors=True)


def test_real_shapes_match_the_models_they_stand_for():
    qwen05 = models.RANDOM_SHAPES["random-qwen2.5-0.5b"]
    h, i, n = qwen05["hidden_size"], qwen05["intermediate_size"], qwen05["num_hidden_layers"]
    kv = h // qwen05["num_attention_heads"] * qwen05["num_key_value_heads"]
    # attention (q, k, v with bias; o), MLP (gate, up, down), two norms
    per_layer = h * (h + 2 * kv) + (h + 2 * kv) + h * h + 3 * h * i + 2 * h
    # Qwen2.5-0.5B has 494,032,768 parameters, 151,936 x 896 of them in the (tied) embedding.
    assert n * per_layer + h == 494_032_768 - 151_936 * 896
