"""``RolloutManager``: let a model play text envs in batches, turn after turn, token-exact.

One call to :meth:`RolloutManager.rollout` plays ``len(seeds) x group_size`` episodes (every episode
of a group gets the same env seed) and returns one :class:`~agentrl.rollout.trajectory.Trajectory` each.

Each turn, for all live episodes at once:

1. build each episode's context as token ids (see *context modes* below);
2. generate all replies in one engine call (stop on the template's end-of-turn tokens);
3. parse each reply (``<think>...</think><answer>a1 || a2</answer>``); a reply without usable
   actions costs ``format_penalty`` and does not step the env;
4. step the envs (in worker threads), record rewards and infos, drop finished episodes.

Context modes:

- ``full`` (default): an episode is one token stream. The next turn's context is the previous
  context + the sampled tokens + the template's delta for the new observation, so the tokens
  trained on are exactly the tokens the model saw and sampled. Needs an append-only template
  (:class:`~agentrl.rollout.chat.ChatFormat` probes it); otherwise the manager warns once and uses ``window``.
- ``window``: each turn is rendered afresh from the system prompt, the last ``history_turns`` turns
  (``-1`` = all) and the new observation, and becomes its own sample. Exact too: each sample holds the
  prompt the model saw and the tokens it sampled.
- ``single``: ``window`` with no history (each turn sees only the current observation).

May import: engines, chat, trajectory, logprobs (in agentrl.rollout), and envs, models, suggest,
seeds (lint-imports checks).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium

from agentrl.envs.registry import make
from agentrl.rollout.chat import ChatFormat, Message, TemplateError
from agentrl.rollout.engines.base import Engine, Generation, SamplingParams
from agentrl.rollout.trajectory import Sample, Trajectory, Turn
from agentrl.seeds import episode_sampling_seed, format_example_seed
from agentrl.suggest import not_one_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

#: Longest reply text the parser looks at (a hostile reply cannot make parsing slow).
MAX_REPLY_CHARS = 65536


@dataclass
class RolloutConfig:
    """How episodes are played."""

    group_size: int = 4
    """Episodes per group; a group shares one env seed (one puzzle)."""
    max_turns: int = 5
    """Turns (model replies) per episode at most."""
    max_actions_per_turn: int = 3
    """Actions one reply may hold, joined by ``||`` (capped by the env's own ``max_actions_per_turn``)."""
    max_new_tokens: int = 128
    """Tokens one reply may sample."""
    max_context_tokens: int = 2048
    """Longest context a turn may start from plus its reply."""
    context_overflow: str = "end"
    """When the next turn would not fit: ``end`` the episode, or ``truncate`` the reply budget to fit."""
    context_mode: str = "full"
    """``full`` (one token-exact stream), ``window`` (last ``history_turns`` turns) or ``single``."""
    history_turns: int = -1
    """Turns of history in ``window`` mode (-1: all)."""
    think: bool = True
    """Ask for ``<think>...</think>`` before the answer (and require it when parsing)."""
    reply_prefix: str = ""
    """Text put at the start of every reply as prompt tokens (shown, not sampled, not trained), e.g.
    ``<think>`` as RAGEN does: it starts a small model in the reply format. The parser sees it."""
    answer_format: str = "tags"
    """``tags``: actions come from the last ``<answer>...</answer>``; ``raw``: the whole reply is the
    answer (for envs that parse replies themselves, or models trained without tags)."""
    vary_format_example: bool = True
    """Draw the reply-format example's actions per episode (from the env's ``valid_actions``) instead of
    showing the env's fixed ``example_answer``: copying a fixed example is a policy a small model
    collapses into (the Echo Trap); copying a random one is not."""
    format_penalty: float = -0.1
    """Reward of a turn whose reply gives no usable action (no answer tag, too many actions...)."""
    format_tag_credit: float = 0.0
    """Partial credit for a malformed reply, per format tag it places right (open-r1's tag count):
    the penalty becomes ``format_penalty * (1 - format_tag_credit * tags / 4)``, with ``tags`` the
    number of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` that appear exactly once. 0 = off.
    It gives a model that never writes the format a gradient towards it."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    env_workers: int = 4
    """Threads stepping envs (1: in the calling thread)."""
    show_turn_info: bool = True
    """Tell the model the previous reward and the turns left in each user message."""

    def problems(self, prefix: str = "rollout.") -> list[str]:
        """What is wrong with these settings, each with its fix (empty: nothing). The limits a
        curriculum stage may lower are checked against these by the config (``agentrl.config``)."""
        out = [
            message
            for key, value, choices in (
                ("context_mode", self.context_mode, ["full", "window", "single"]),
                ("answer_format", self.answer_format, ["tags", "raw"]),
                ("context_overflow", self.context_overflow, ["end", "truncate"]),
            )
            if (message := not_one_of(prefix + key, value, choices))
        ]
        out += [
            f"{prefix}{key} must be positive, got {getattr(self, key)}"
            for key in ("group_size", "max_turns", "max_new_tokens")
            if getattr(self, key) <= 0
        ]
        fits = reply_fit_problem(
            f"{prefix}max_new_tokens",
            self.max_new_tokens,
            f"{prefix}max_context_tokens",
            self.max_context_tokens,
        )
        return out + ([fits] if fits else [])


def reply_fit_problem(
    new_key: str, max_new_tokens: int, context_key: str, max_context_tokens: int, where: str = ""
) -> str | None:
    """A full reply budget must leave room for a prompt in the context (the rule for the run's
    ``rollout.*`` and for every curriculum stage's own limits); the message when it does not."""
    if max_new_tokens < max_context_tokens:
        return None
    how = "exceeds" if max_new_tokens > max_context_tokens else "equals"
    return (
        f"{new_key}={max_new_tokens} {how} {context_key}={max_context_tokens}{where}, leaving no room for "
        "the prompt (an episode whose prompt and full reply do not fit ends at once, end reason "
        "context_limit): raise the context or lower the reply budget"
    )


#: The :class:`RolloutConfig` fields one :meth:`RolloutManager.rollout` call may override
#: (``settings=``; a curriculum stage's ``rollout`` mapping): they are read afresh on every call.
#: The others shape what the manager builds once (system prompt, parser, context mode, worker pool)
#: or how the trainer scores samples (``temperature`` has its own argument and a stage key of its own).
PER_CALL_SETTINGS = ("group_size", "max_turns", "max_new_tokens", "max_context_tokens")


# ------------------------------------------------------------------------------------------------
# Reply parsing
# ------------------------------------------------------------------------------------------------


@dataclass
class ParsedReply:
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    """``None`` when usable, else ``no_answer_tag``, ``no_think_tag``, ``empty_answer``,
    ``too_many_actions`` or ``unknown_action``."""
    thought: str = ""
    """The text of the last ``<think>...</think>`` before the answer (empty if none)."""


_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def parse_reply(
    text: str,
    *,
    think: bool,
    max_actions: int,
    separator: str = "||",
    valid_actions: Sequence[str] | None = None,
    answer_format: str = "tags",
) -> ParsedReply:
    """Extract actions from a reply. The last ``<answer>...</answer>`` counts; never raises.

    ``valid_actions`` (case-insensitive), when the env declares them, turns unknown words into a
    format error instead of an env step. With ``answer_format="raw"`` the whole reply is the answer.
    """
    text = text[:MAX_REPLY_CHARS]
    thought = ""
    if answer_format == "raw":
        answer = text
    else:
        # The last complete <answer>...</answer>, found from the right in linear time (a regex over
        # thousands of unclosed tags is quadratic).
        end = text.rfind("</answer>")
        start = text.rfind("<answer>", 0, end) if end >= 0 else -1
        if start < 0:
            return ParsedReply(error="no_answer_tag")
        thoughts = _THINK.findall(text[:start])
        if think and not thoughts:
            return ParsedReply(error="no_think_tag")
        thought = thoughts[-1] if thoughts else ""
        answer = text[start + len("<answer>") : end]
    actions = [a.strip() for a in answer.split(separator)] if max_actions > 1 else [answer.strip()]
    actions = [a for a in actions if a]
    if not actions:
        return ParsedReply(error="empty_answer")
    if len(actions) > max_actions:
        return ParsedReply(actions=actions, error="too_many_actions")
    if valid_actions is not None:
        canon = {v.lower(): v for v in valid_actions}
        if any(a.lower() not in canon for a in actions):
            return ParsedReply(actions=actions, error="unknown_action")
        actions = [canon[a.lower()] for a in actions]
    return ParsedReply(actions=actions, thought=thought)


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def format_tags_placed(text: str) -> int:
    """How many of the four format tags appear exactly once in ``text`` (0..4)."""
    text = text[:MAX_REPLY_CHARS]
    return sum(text.count(tag) == 1 for tag in _TAGS)


def format_instructions(
    think: bool,
    max_actions: int,
    example_answer: str = "",
    separator: str = "||",
    answer_format: str = "tags",
) -> str:
    """The reply-format part of the system prompt (the env's ``instructions`` hold the task).

    The example is concrete on purpose: small models copy placeholders such as ``[your answer]``.
    """
    example = example_answer or "42"
    if answer_format == "raw":
        fmt = f"Reply with your answer only, for example: {example}"
    elif think:
        fmt = (
            "First think step by step inside <think> </think>, then write only your final answer inside "
            "<answer> </answer>.\nExample reply: <think>I look at the state and plan my answer.</think>"
            f"<answer>{example}</answer>"
        )
    else:
        fmt = f"Write only your final answer inside <answer> </answer>.\nExample reply: <answer>{example}</answer>"
    if max_actions > 1:
        fmt += f"\nYou may give up to {max_actions} actions in one answer, separated by {separator}."
    return fmt


# ------------------------------------------------------------------------------------------------
# Episodes in flight
# ------------------------------------------------------------------------------------------------


def episode_seed(sampling_seed: int, e: _Episode, turn: int) -> int:
    """The sampling seed of one episode's turn: a function of the step's seed, the env seed, the
    episode's place in its group and the turn only, so it does not depend on batch composition
    (1 rank or N, which episodes are still alive)."""
    return episode_sampling_seed(sampling_seed, e.traj.seed, e.traj.episode_id % e.group_size, turn)


@dataclass
class _Episode:
    env: gymnasium.Env
    traj: Trajectory
    observation: str
    history: list[Message]
    """Messages so far, actual reply texts included (for template deltas and window contexts)."""
    context: list[int] = field(default_factory=list)
    """Token ids of the next model input (``full`` mode: also the tail of the current sample)."""
    group_size: int = 1
    last_reward: float | None = None
    actions_taken: int = 0
    done: bool = False


class RolloutManager:
    """Plays envs with an engine and returns token-exact trajectories.

    Args:
        engine: anything implementing :class:`~agentrl.rollout.engines.base.Engine`.
        tokenizer: the policy's tokenizer (chat template required).
        env_name: registered env name; ``env_kwargs`` are passed to ``agentrl.make``.
        config: :class:`RolloutConfig`.
    """

    def __init__(
        self,
        engine: Engine,
        tokenizer: PreTrainedTokenizerBase,
        env_name: str,
        config: RolloutConfig | None = None,
        env_kwargs: dict[str, Any] | None = None,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.env_name = env_name
        self.env_kwargs = dict(env_kwargs or {})
        self.config = config or RolloutConfig()
        self.chat = ChatFormat.from_tokenizer(tokenizer)
        self.context_mode = self.config.context_mode
        if self.context_mode == "full" and not self.chat.append_only:
            logger.warning(
                "agentrl: this model's chat template re-renders earlier turns (it is not append-only), so "
                "token-exact full-history contexts are impossible; using context_mode='window' instead: each "
                "turn is rendered afresh and trained as its own sample (still exactly what the model saw)."
            )
            self.context_mode = "window"
        self._envs: list[gymnasium.Env] = []
        probe = make(env_name, **self.env_kwargs)
        self.max_actions = max(
            1, min(self.config.max_actions_per_turn, getattr(probe, "max_actions_per_turn", 1))
        )
        self._instructions = probe.instructions.strip()
        self._valid_actions = tuple(getattr(probe, "valid_actions", None) or ())
        self.system_prompt = self._system_prompt(getattr(probe, "example_answer", ""))
        """The system prompt with the env's own example answer (episodes may get their own example)."""
        self._envs.append(probe)
        self._scripted: Callable[[gymnasium.Env], str] | None = None
        self._prefix_ids = self.chat.encode(self.config.reply_prefix) if self.config.reply_prefix else []
        self._pool = (
            ThreadPoolExecutor(max_workers=self.config.env_workers) if self.config.env_workers > 1 else None
        )

    def _system_prompt(self, example: str) -> str:
        fmt = format_instructions(
            self.config.think, self.max_actions, example, answer_format=self.config.answer_format
        )
        return self._instructions + "\n\n" + fmt

    def _episode_system_prompt(self, seed: int) -> str:
        """The system prompt of an episode. With ``vary_format_example`` and a closed action vocabulary,
        the reply-format example holds actions drawn from the env seed (the same within a group), so
        copying the example is no policy: a small model otherwise learns to answer every state with it
        (RAGEN's Echo Trap, seen here with the fixed example ``Up || Left``)."""
        if not (self.config.vary_format_example and self._valid_actions):
            return self.system_prompt
        rng = random.Random(format_example_seed(seed))
        k = rng.randint(1, min(2, self.max_actions))
        return self._system_prompt(" || ".join(rng.choice(self._valid_actions) for _ in range(k)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for env in self._envs:
            env.close()

    # -- public API ---------------------------------------------------------------------------
    # Keyword-only settings of one call, each with a default: a structure would only rename them.
    def rollout(  # noqa: PLR0913
        self,
        seeds: Sequence[int],
        *,
        step: int = 0,
        split: str = "train",
        sampling_seed: int | None = None,
        group_size: int | None = None,
        temperature: float | None = None,
        reset_options: dict[str, Any] | None = None,
        scripted: Callable[[gymnasium.Env], str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> list[Trajectory]:
        """Play ``len(seeds) x group_size`` episodes; group ``g`` plays env seed ``seeds[g]``.

        ``scripted(env) -> reply text`` replaces the engine (warm-start demonstrations, tests): its
        text, without ``reply_prefix``, is tokenized once and recorded as the "sampled" tokens, so a
        demonstration is templated exactly as the policy's own replies will be.

        ``settings`` overrides :data:`PER_CALL_SETTINGS` of the config for this call only (a
        curriculum stage's ``max_new_tokens``, say); the manager's own config is left as it is.
        """
        if settings:
            return self.with_settings(settings).rollout(
                seeds,
                step=step,
                split=split,
                sampling_seed=sampling_seed,
                group_size=group_size,
                temperature=temperature,
                reset_options=reset_options,
                scripted=scripted,
            )
        self._scripted = scripted
        group_size = group_size or self.config.group_size
        n = len(seeds) * group_size
        while len(self._envs) < n:
            self._envs.append(make(self.env_name, **self.env_kwargs))
        episodes = self._map(
            lambda i: self._start(
                i, seeds[i // group_size], i // group_size, group_size, step, split, reset_options
            ),
            range(n),
        )
        for turn in range(self.config.max_turns):
            live = [e for e in episodes if not e.done]
            if not live:
                break
            self._play_turn(live, turn, step, sampling_seed, temperature)
        for e in episodes:
            if not e.done:
                e.traj.end_reason = "max_turns"
            self._finish_tokens(e)
        return [e.traj for e in episodes]

    def with_settings(self, settings: Mapping[str, Any]) -> RolloutManager:
        """A view of this manager whose config has ``settings`` (keys of :data:`PER_CALL_SETTINGS`)
        replaced. It shares the engine, tokenizer, envs and worker pool; closing it is not needed."""
        unknown = sorted(set(settings) - set(PER_CALL_SETTINGS))
        if unknown:
            raise ValueError(
                f"rollout settings {unknown} cannot change between calls; only {list(PER_CALL_SETTINGS)} can"
            )
        view = copy.copy(self)
        view.config = dataclasses.replace(self.config, **settings)
        return view

    # -- episode life -------------------------------------------------------------------------
    def _map(self, fn, items):
        return list(self._pool.map(fn, items)) if self._pool is not None else [fn(x) for x in items]

    def _start(
        self, i: int, seed: int, group: int, group_size: int, step: int, split: str, options
    ) -> _Episode:
        env = self._envs[i]
        obs, info = env.reset(seed=int(seed), options=options)
        traj = Trajectory(
            env=self.env_name,
            seed=int(seed),
            group=group,
            step=step,
            split=split,
            episode_id=i,
            reset_info=info,
        )
        history: list[Message] = [{"role": "system", "content": self._episode_system_prompt(int(seed))}]
        return _Episode(env=env, traj=traj, observation=obs, history=history, group_size=group_size)

    def _user_text(self, e: _Episode, turn: int) -> str:
        parts = []
        if self.config.show_turn_info and e.last_reward is not None:
            parts.append(f"Reward of your last answer: {e.last_reward:+.2f}")
        parts.append(f"State:\n{e.observation}")
        if self.config.show_turn_info:
            left = self.config.max_turns - turn
            parts.append(f"Turns left: {left} (this one included).")
        return "\n".join(parts)

    def _window_messages(self, e: _Episode, user_text: str) -> list[Message]:
        past = e.history[1:]
        k = self.config.history_turns
        if self.context_mode == "single" or k == 0:
            past = []
        elif k > 0:
            past = past[-2 * k :]
        return [e.history[0], *past, {"role": "user", "content": user_text}]

    def _prepare(self, e: _Episode, turn: int) -> None:
        """Append the new observation to the context (``full``) or render a fresh one (windowed)."""
        user_text = self._user_text(e, turn)
        if self.context_mode == "full":
            if turn == 0:
                ids = self.chat.render(
                    [*e.history, {"role": "user", "content": user_text}], add_generation_prompt=True
                )
                e.traj.samples.append(Sample())
            else:
                sample = e.traj.samples[-1]
                # A reply cut by the token budget has no end-of-turn token: close the turn (not trained).
                closing = [] if sample.token_ids[-1] in self.chat.eot_ids else self.chat.eot_ids[:1]
                try:
                    ids = closing + self.chat.turn_delta(e.history, user_text)
                except TemplateError as exc:
                    raise TemplateError(f"{exc}; set rollout.context_mode=window for this model") from exc
            span = e.traj.samples[-1].extend(ids + self._prefix_ids, sampled=False)
        else:
            ids = self.chat.render(self._window_messages(e, user_text), add_generation_prompt=True)
            e.traj.samples.append(Sample())
            span = e.traj.samples[-1].extend(ids + self._prefix_ids, sampled=False)
        e.traj.turns.append(Turn(observation=e.observation, sample=len(e.traj.samples) - 1, prompt_span=span))
        e.history.append({"role": "user", "content": user_text})
        e.context = e.traj.samples[-1].token_ids

    def _play_turn(
        self, live: list[_Episode], turn: int, step: int, sampling_seed: int | None, temperature: float | None
    ) -> None:
        cfg = self.config
        for e in live:
            self._prepare(e, turn)
        # Context budget: end (or shorten) episodes whose next reply would not fit.
        budgets = []
        ready = []
        for e in live:
            room = cfg.max_context_tokens - len(e.context)
            budget = min(cfg.max_new_tokens, room)
            if budget < cfg.max_new_tokens and (cfg.context_overflow == "end" or budget <= 0):
                self._end(e, "context_limit", drop_last_turn=True)
                continue
            budgets.append(budget)
            ready.append(e)
        if not ready:
            return
        # One engine call per distinct budget (normally exactly one call for the whole batch).
        temp = cfg.temperature if temperature is None else temperature
        for budget in sorted(set(budgets)):
            batch = [e for e, b in zip(ready, budgets) if b == budget]
            sampling = SamplingParams(
                max_new_tokens=budget,
                temperature=temp,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                stop_token_ids=self.chat.eot_ids,
                row_seeds=None
                if sampling_seed is None
                else [episode_seed(sampling_seed, e, turn) for e in batch],
            )
            if self._scripted is not None:
                generations = [self._scripted_generation(e) for e in batch]
            else:
                generations = self.engine.generate([list(e.context) for e in batch], sampling)
            for e, gen in zip(batch, generations):
                self._record_reply(e, gen)
        self._map(self._act, ready)

    def _scripted_generation(self, e: _Episode) -> Generation:
        text = self._scripted(e.env)
        prefix = self.config.reply_prefix
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
        ids = self.chat.encode(text) + self.chat.eot_ids[:1]
        return Generation(ids, [0.0] * len(ids), "stop")

    def _record_reply(self, e: _Episode, gen) -> None:
        sample = e.traj.samples[-1]
        span = sample.extend(list(gen.token_ids), sampled=True, logprobs=list(gen.logprobs))
        ids = gen.token_ids
        body = ids[:-1] if gen.finish_reason == "stop" and ids and ids[-1] in self.chat.eot_ids else ids
        reply = self.config.reply_prefix + self.tokenizer.decode(body, skip_special_tokens=False)
        turn = e.traj.turns[-1]
        turn.reply, turn.response_span, turn.finish_reason = reply, span, gen.finish_reason
        e.history.append({"role": "assistant", "content": reply})

    def _act(self, e: _Episode) -> None:
        """Parse the last reply and step the env with its actions (runs in a worker thread)."""
        turn = e.traj.turns[-1]
        base = getattr(e.env, "unwrapped", e.env)  # a Gymnasium wrapper forwards no attributes
        parsed = parse_reply(
            turn.reply,
            think=self.config.think,
            max_actions=self.max_actions,
            valid_actions=getattr(base, "valid_actions", None),
            answer_format=self.config.answer_format,
        )
        turn.actions = parsed.actions
        if parsed.error is not None:
            turn.format_ok, turn.format_error = False, parsed.error
            credit = self.config.format_tag_credit * format_tags_placed(turn.reply) / 4
            turn.reward = self.config.format_penalty * (1.0 - credit)
            e.last_reward = turn.reward
            return
        judge = getattr(base, "actions_follow_thought", None)
        if judge is not None and self.config.think:
            try:
                verdict = judge(parsed.thought, list(parsed.actions))
                turn.follows_thought = None if verdict is None else bool(verdict)
            except Exception:  # noqa: BLE001 - a judge that breaks leaves the turn unjudged
                turn.follows_thought = None
        reward = 0.0
        turn.actions = []  # from here on: only the actions actually sent
        for action in parsed.actions:
            turn.actions.append(action)
            try:
                obs, r, terminated, truncated, info = e.env.step(action)
            except Exception as exc:  # noqa: BLE001 - one broken env must not stop the batch
                e.traj.error = f"{type(exc).__name__}: {exc}"
                turn.reward = reward
                self._end(e, "env_error")
                return
            reward += float(r)
            e.actions_taken += 1
            e.observation = obs
            turn.info = info
            e.traj.success = bool(info.get("success", False))
            if terminated or truncated:
                turn.reward = reward
                self._end(e, "terminated" if terminated else "truncated")
                return
        turn.reward = reward
        e.last_reward = reward

    def _end(self, e: _Episode, reason: str, drop_last_turn: bool = False) -> None:
        e.done = True
        e.traj.end_reason = reason
        if drop_last_turn:
            # The observation was templated but the model never replied: keep the tokens out of training
            # (mask 0 already) and the turn out of the record.
            turn = e.traj.turns.pop()
            sample = e.traj.samples[turn.sample]
            start = turn.prompt_span[0]
            del sample.token_ids[start:], sample.loss_mask[start:], sample.logprobs[start:]
            if not sample.token_ids:
                e.traj.samples.pop()

    def _finish_tokens(self, e: _Episode) -> None:
        """Fill the viewer's per-token text once the episode is over."""
        for sample in e.traj.samples:
            sample.token_text = self.tokenizer.batch_decode([[t] for t in sample.token_ids])
