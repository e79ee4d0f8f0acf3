"""ChatFormat: end-of-turn and tail probes, turn deltas and the append-only probe, on several templates.

The templates are written here as jinja strings over a *copy* of the SmolLM2 tokenizer, with the
special tokens each family uses added to the copy. ``test_rollout.py`` imports the builders.
"""

from __future__ import annotations

import copy

import pytest

from agentrl.rollout.chat import ChatFormat, TemplateError

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
ZEPHYR_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
#: ChatML that drops the <think> block of every assistant message but the last (as Qwen3 / R1 do).
THINK_DROPPING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1] }}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def llama3_tokenizer(base):
    tok = copy.deepcopy(base)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        }
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def gemma_tokenizer(base):
    tok = copy.deepcopy(base)
    tok.add_special_tokens(
        {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        }
    )
    tok.chat_template = GEMMA_TEMPLATE
    return tok


def zephyr_tokenizer(base):
    tok = copy.deepcopy(base)
    tok.add_special_tokens({"eos_token": "</s>"})
    tok.chat_template = ZEPHYR_TEMPLATE
    return tok


def think_dropping_tokenizer(base):
    tok = copy.deepcopy(base)
    tok.chat_template = THINK_DROPPING_TEMPLATE
    return tok


#: name -> builder (None: the SmolLM2 tokenizer's own ChatML template).
TEMPLATES = {"chatml": None, "llama3": llama3_tokenizer, "gemma": gemma_tokenizer, "zephyr": zephyr_tokenizer}


def build(name, base):
    return base if TEMPLATES[name] is None else TEMPLATES[name](base)


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


# ------------------------------------------------------------------------------------------------


def test_chatml_probes(tokenizer):
    fmt = ChatFormat.from_tokenizer(tokenizer)
    assert fmt.eot_ids == ids(tokenizer, "<|im_end|>") == [2]
    assert fmt.tail_ids == tokenizer("\n", add_special_tokens=False)["input_ids"] == [198]
    assert fmt.append_only


def test_chatml_default_system_prompt(tokenizer):
    """SmolLM2's template inserts its own system prompt when there is none; with one, it does not."""
    fmt = ChatFormat.from_tokenizer(tokenizer)
    no_system = fmt.render_text([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert no_system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    with_system = fmt.render_text(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], add_generation_prompt=True
    )
    assert (
        with_system
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    # encode() adds nothing: the template's own special tokens are all there is.
    assert fmt.render([{"role": "system", "content": "S"}], False)[0] == tokenizer.convert_tokens_to_ids(
        "<|im_start|>"
    )


def test_llama3_probes(tokenizer):
    tok = llama3_tokenizer(tokenizer)
    fmt = ChatFormat.from_tokenizer(tok)
    assert fmt.eot_ids == ids(tok, "<|eot_id|>", "<|end_of_text|>")
    assert fmt.tail_ids == []
    assert fmt.append_only
    rendered = fmt.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], True)
    assert rendered[0] == tok.convert_tokens_to_ids("<|begin_of_text|>")
    assert tok.convert_ids_to_tokens(rendered[-2:]) == ["<|end_header_id|>", "ĊĊ"]


def test_gemma_probes(tokenizer):
    tok = gemma_tokenizer(tokenizer)
    fmt = ChatFormat.from_tokenizer(tok)
    assert fmt.eot_ids == ids(tok, "<end_of_turn>", "<eos>")
    assert fmt.tail_ids == [198]
    assert fmt.append_only


def test_zephyr_probes(tokenizer):
    """The template writes EOS itself after each message: EOS is the end-of-turn token."""
    tok = zephyr_tokenizer(tokenizer)
    fmt = ChatFormat.from_tokenizer(tok)
    assert fmt.eot_ids == ids(tok, "</s>")
    assert fmt.tail_ids == [198]
    assert fmt.append_only


def test_think_dropping_template_is_not_append_only(tokenizer):
    tok = think_dropping_tokenizer(tokenizer)
    fmt = ChatFormat.from_tokenizer(tok)
    assert fmt.eot_ids == [2] and fmt.tail_ids == [198]
    assert not fmt.append_only
    history = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "<think>t</think><answer>a</answer>"},
    ]
    with pytest.raises(TemplateError, match="re-renders earlier turns"):
        fmt.turn_delta(history, "U2")


def test_template_dropping_the_reply_is_refused(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(TemplateError, match="drops the assistant"):
        ChatFormat.from_tokenizer(tok)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_turn_delta_extends_the_stream(tokenizer, name):
    """prompt + reply + eot + delta decodes to the template's rendering of the longer conversation."""
    tok = build(name, tokenizer)
    fmt = ChatFormat.from_tokenizer(tok)
    reply = "<think>go left</think><answer>Left</answer>"
    history = [{"role": "system", "content": "Sys"}, {"role": "user", "content": "State 1"}]
    stream = fmt.render(history, add_generation_prompt=True)
    stream += tok(reply, add_special_tokens=False)["input_ids"] + fmt.eot_ids[:1]
    history.append({"role": "assistant", "content": reply})
    delta = fmt.turn_delta(history, "State 2")
    assert delta[: len(fmt.tail_ids)] == fmt.tail_ids
    stream += delta
    expected = fmt.render_text([*history, {"role": "user", "content": "State 2"}], add_generation_prompt=True)
    assert tok.decode(stream) == expected
