"""Stand-in for ``vllm.inputs``: ``TokensPrompt`` is a TypedDict in vLLM, i.e. a plain dict."""

from __future__ import annotations

from typing import TypedDict


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
