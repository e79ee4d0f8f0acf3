"""Chat templating at the token level, for any chat model, with no model-name matching.

Everything here is derived from the tokenizer's own chat template by rendering probe conversations:

- the **end-of-turn tokens**: what the template writes right after an assistant message's content
  (``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3...), so generation stops where a turn ends;
- the **turn delta**: the tokens that follow a sampled reply before the model's next reply
  (the template's tail after the end-of-turn token, the next user message, the generation prompt),
  computed as the difference of two renderings, so sampled tokens are never decoded and re-encoded;
- whether the template is **append-only** (rendering turn k+1 extends rendering turn k token for
  token). Templates that rewrite earlier turns (for example dropping earlier ``<think>`` blocks)
  are not, and the rollout manager then falls back to re-rendering each turn as its own sample.

May import: envs, models, suggest, seeds (the stages below agentrl.rollout; lint-imports checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]

_PROBE_REPLY = "<think>The probe thinks.</think><answer>probe answer</answer>"


class TemplateError(ValueError):
    """The chat template cannot be used as asked; the message says why and what to do."""


@dataclass
class ChatFormat:
    """Token-level view of a tokenizer's chat template."""

    tokenizer: PreTrainedTokenizerBase
    eot_ids: list[int]
    """Tokens that end an assistant turn (generation stops on any of them)."""
    tail_ids: list[int]
    """Tokens the template writes after the end-of-turn token (``\\n`` in ChatML), before the next message."""
    append_only: bool
    """Whether each turn's rendering extends the previous one token for token."""

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> ChatFormat:
        fmt = cls(tokenizer, [], [], True)
        fmt.eot_ids, fmt.tail_ids = fmt._probe_end_of_turn()
        fmt.append_only = fmt._probe_append_only()
        return fmt

    # -- rendering ----------------------------------------------------------------------------
    def render_text(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        # The template's text already holds its special tokens (BOS included where it wants one).
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(self, messages: list[Message], add_generation_prompt: bool) -> list[int]:
        return self.encode(self.render_text(messages, add_generation_prompt))

    # -- probes -------------------------------------------------------------------------------
    def _probe_end_of_turn(self) -> tuple[list[int], list[int]]:
        marker = "Zq7 probe reply"
        msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        text = self.render_text(
            [*msgs, {"role": "assistant", "content": marker}], add_generation_prompt=False
        )
        at = text.rfind(marker)
        if at < 0:
            raise TemplateError("the chat template drops the assistant's reply; agentrl cannot train on it")
        after = self.encode(text[at + len(marker) :])
        special = set(self.tokenizer.all_special_ids) | {
            i for i, t in self.tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)
        }
        if after and after[0] in special:
            eot, tail = after[0], after[1:]
        elif self.tokenizer.eos_token_id is not None:
            # The template writes no special end-of-turn token: the model ends turns with EOS.
            eot, tail = self.tokenizer.eos_token_id, after
        else:
            raise TemplateError(
                "cannot tell how an assistant turn ends: the template writes no special token"
            )
        eot_ids = [eot]
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id != eot:
            eot_ids.append(self.tokenizer.eos_token_id)  # a model may still stop with EOS
        return eot_ids, tail

    def _probe_append_only(self) -> bool:
        msgs: list[Message] = [{"role": "system", "content": "S"}, {"role": "user", "content": "State 1"}]
        for k in range(2, 4):
            msgs.append({"role": "assistant", "content": _PROBE_REPLY})
            try:
                self.turn_delta(msgs, f"State {k}")
            except TemplateError:
                return False
            msgs.append({"role": "user", "content": f"State {k}"})
        return True

    # -- turn deltas --------------------------------------------------------------------------
    def turn_delta(self, history: list[Message], user_text: str) -> list[int]:
        """Tokens between the end-of-turn token of the last assistant message in ``history`` and the
        model's next reply: the template's tail, the new user message, the generation prompt.

        Raises :class:`TemplateError` if the template does not render the longer conversation as an
        extension of the shorter one (then token-exact incremental contexts are impossible).
        """
        before = self.render(history, add_generation_prompt=False)
        after = self.render([*history, {"role": "user", "content": user_text}], add_generation_prompt=True)
        if after[: len(before)] != before:
            raise TemplateError(
                "the chat template re-renders earlier turns differently once a new turn is added "
                "(for example it drops earlier <think> blocks)"
            )
        return self.tail_ids + after[len(before) :]
