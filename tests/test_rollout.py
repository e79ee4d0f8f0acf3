"""RolloutManager: token-exact multi-turn trajectories, loss masks, parsing, end reasons, context modes.

Most tests drive the manager with a *scripted* engine (preset replies, encoded with the tokenizer plus
the end-of-turn token, fake log-probs) so every scenario is exact; one module-scoped rollout runs the
real HFEngine over the tiny model to check token exactness and log-probs against a trainer-side pass.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from test_chat import TEMPLATES, build, think_dropping_tokenizer

import agentrl
from agentrl.envs.env import TextEnv
from agentrl.rollout.chat import ChatFormat
from agentrl.rollout.engines.base import Generation, SamplingParams
from agentrl.rollout.engines.hf import HFEngine
from agentrl.rollout.logprobs import token_logprobs
from agentrl.rollout.manager import RolloutConfig, RolloutManager, parse_reply
from agentrl.rollout.trajectory import read_jsonl, write_jsonl

# ------------------------------------------------------------------------------------------------
# Helpers: engines, a counting test env, stream checks
# ------------------------------------------------------------------------------------------------


class ScriptedEngine:
    """Replies with preset texts: ``script(call, row, prompt) -> str``, a list (per call) of lists (per
    row) of str, or one str for every row. Each reply is encoded with the tokenizer plus the end-of-turn
    token, cut at ``max_new_tokens`` (finish ``length``), with fake log-probs. Records every call."""

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.script = script
        self.calls: list[tuple[list[list[int]], SamplingParams, list[Generation]]] = []

    def _text(self, call, row, prompt):
        if callable(self.script):
            return self.script(call, row, prompt)
        if isinstance(self.script, str):
            return self.script
        return self.script[call][row]

    def generate(self, prompts, sampling):
        out = []
        for row, prompt in enumerate(prompts):
            text = self._text(len(self.calls), row, prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + sampling.stop_token_ids[:1]
            reason = "stop"
            if len(ids) > sampling.max_new_tokens:
                ids, reason = ids[: sampling.max_new_tokens], "length"
            out.append(Generation(ids, [-0.25 - 0.001 * i for i in range(len(ids))], reason))
        self.calls.append(([list(p) for p in prompts], copy.copy(sampling), out))
        return out

    def update_weights(self, named_params):
        pass

    def sleep(self):
        pass

    def wake(self):
        pass


class RecordingEngine:
    """Wraps an engine and records each call's prompts, sampling params and outputs."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = []

    def generate(self, prompts, sampling):
        out = self.inner.generate(prompts, sampling)
        self.calls.append(([list(p) for p in prompts], copy.copy(sampling), out))
        return out

    def update_weights(self, named_params):
        self.inner.update_weights(named_params)

    def sleep(self):
        self.inner.sleep()

    def wake(self):
        self.inner.wake()


class CounterEnv(TextEnv):
    """Test env: the action ``win`` ends the episode with reward 1, ``boom`` raises, anything else
    gives 0. The observation grows with the seed (``pad`` words), so prompt lengths differ per group.
    Counts ``step`` calls across all instances in ``CounterEnv.step_calls``."""

    instructions = "Say win to win. Example answer: win"
    max_actions_per_turn = 3
    step_calls = 0

    def __init__(self, pad_per_seed: int = 0):
        super().__init__()
        self.pad_per_seed = pad_per_seed
        self.t = 0
        self.seed = 0

    def _obs(self):
        return f"seed {self.seed} step {self.t}" + " pad" * (self.seed * self.pad_per_seed)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.seed, self.t = int(seed or 0), 0
        return self._obs(), {"success": False, "action_is_valid": True, "seed": self.seed}

    def step(self, action):
        type(self).step_calls += 1
        if action == "boom":
            raise RuntimeError("kaboom")
        self.t += 1
        win = action == "win"
        return self._obs(), 1.0 if win else 0.0, win, False, {"success": win, "action_is_valid": True}

    def render(self):
        return self._obs()


agentrl.register("test-counter", CounterEnv, override=True)


def reply(*actions, think="ok"):
    body = f"<think>{think}</think>" if think is not None else ""
    return body + "<answer>" + " || ".join(actions) + "</answer>"


def rollout(tokenizer, script, env="sokoban", seeds=(0,), env_kwargs=None, **cfg):
    cfg.setdefault("env_workers", 1)
    engine = ScriptedEngine(tokenizer, script)
    mgr = RolloutManager(engine, tokenizer, env, RolloutConfig(**cfg), env_kwargs=env_kwargs)
    try:
        trajs = mgr.rollout(list(seeds))
    finally:
        mgr.close()
    return trajs, engine, mgr


def check_stream(traj, eot_ids):
    """Spans tile each sample in order (prompt, response, prompt, response...); the loss mask is 1
    exactly on the response spans; log-probs are 0 off the mask; a stopped reply ends with an eot."""
    assert traj.samples, "no tokens"
    for s, sample in enumerate(traj.samples):
        n = len(sample.token_ids)
        assert len(sample.loss_mask) == len(sample.logprobs) == n
        assert sample.token_text is not None and len(sample.token_text) == n
        turns = [t for t in traj.turns if t.sample == s]
        assert turns
        pos, mask = 0, [0] * n
        for t in turns:
            assert t.prompt_span[0] == pos and t.prompt_span[1] > pos
            assert t.response_span[0] == t.prompt_span[1] and t.response_span[1] > t.response_span[0]
            pos = t.response_span[1]
            mask[t.response_span[0] : t.response_span[1]] = [1] * (t.response_span[1] - t.response_span[0])
            last = sample.token_ids[t.response_span[1] - 1]
            assert (last in eot_ids) == (t.finish_reason == "stop")
        assert pos == n
        assert sample.loss_mask == mask
        assert all(lp == 0.0 for lp, m in zip(sample.logprobs, mask) if not m)
        assert all(lp < 0.0 for lp, m in zip(sample.logprobs, mask) if m)


def check_calls(trajs, calls, full=True):
    """Every generate call's (prompt, output) is one turn of one episode: the prompt is that episode's
    sample up to the turn's response (in full mode: the whole stream so far) and the output is exactly
    the sample's response span. Every turn is matched once."""
    unmatched = {(i, k) for i, tr in enumerate(trajs) for k in range(len(tr.turns))}
    for prompts, _sampling, outs in calls:
        for prompt, gen in zip(prompts, outs):
            found = None
            for i, k in sorted(unmatched):
                tr = trajs[i]
                turn = tr.turns[k]
                ids = tr.samples[turn.sample].token_ids
                a, b = turn.response_span
                if ids[:a] == prompt and ids[a:b] == gen.token_ids:
                    assert tr.samples[turn.sample].logprobs[a:b] == pytest.approx(gen.logprobs, abs=1e-5)
                    found = (i, k)
                    break
            assert found is not None, "a generate call's prompt/output is not a prefix of any trajectory"
            unmatched.remove(found)
            if full:
                assert trajs[found[0]].samples[0].token_ids[: len(prompt)] == prompt
    assert not unmatched, f"turns never generated: {sorted(unmatched)}"


def sokoban_plan(seed):
    env = agentrl.make("sokoban")
    env.reset(seed=seed)
    return env.oracle_actions(), env


# ------------------------------------------------------------------------------------------------
# Parsing
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "think", "max_actions", "actions", "error"),
    [
        ("<think>t</think><answer>Up || Left</answer>", True, 3, ["Up", "Left"], None),
        ("<think>t</think><answer> Up </answer>", True, 1, ["Up"], None),
        ("<answer>Up</answer>", False, 3, ["Up"], None),
        ("<answer>Up</answer>", True, 3, [], "no_think_tag"),
        ("<think>t</think> Up", True, 3, [], "no_answer_tag"),
        ("<think>t</think><answer>  </answer>", True, 3, [], "empty_answer"),
        ("<think>t</think><answer> || </answer>", True, 3, [], "empty_answer"),
        (
            "<think>t</think><answer>a || b || c || d</answer>",
            True,
            3,
            ["a", "b", "c", "d"],
            "too_many_actions",
        ),
        ("<think>t</think><answer>a</answer><answer>b</answer>", True, 3, ["b"], None),  # the last counts
        ("<think>t</think><answer>(1 || 2)</answer>", True, 1, ["(1 || 2)"], None),  # one action: no split
        ("<answer>Up</answer><think>late</think>", True, 3, [], "no_think_tag"),
        ("", True, 3, [], "no_answer_tag"),
    ],
)
def test_parse_reply(text, think, max_actions, actions, error):
    parsed = parse_reply(text, think=think, max_actions=max_actions)
    assert parsed.error == error
    assert parsed.actions == actions


def test_parse_reply_valid_actions():
    p = parse_reply("<answer>up || LEFT</answer>", think=False, max_actions=3, valid_actions=["Up", "Left"])
    assert p.error is None and p.actions == ["Up", "Left"]
    p = parse_reply("<answer>up || jump</answer>", think=False, max_actions=3, valid_actions=["Up", "Left"])
    assert p.error == "unknown_action"


def test_parse_reply_hostile_is_fast():
    import time

    # Replies are capped by max_new_tokens; ~1000 answer tags is ~3000 tokens of hostile reply.
    # (The regex is quadratic in the number of unclosed tags: 8192 tags, the MAX_REPLY_CHARS cap, take ~3 s.)
    start = time.perf_counter()
    parsed = parse_reply("<answer>" * 1000 + "<think>" * 1000, think=True, max_actions=3)
    assert parsed.error == "no_answer_tag"
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------------------------------------
# Scripted scenarios
# ------------------------------------------------------------------------------------------------


def test_sokoban_oracle_plan_wins(tokenizer):
    plan, env = sokoban_plan(0)
    assert plan and len(plan) == 5
    expected_reward = sum(env.step(a)[1] for a in plan)
    trajs, engine, mgr = rollout(tokenizer, reply(*plan), seeds=[0], group_size=2, max_actions_per_turn=10)
    assert mgr.max_actions == 10
    for tr in trajs:
        assert tr.end_reason == "terminated" and tr.success
        assert len(tr.turns) == 1 and tr.turns[0].actions == plan and tr.turns[0].format_ok
        assert tr.reward == pytest.approx(expected_reward)
        assert tr.turns[0].info["success"] is True
        assert tr.turns[0].reply == reply(*plan)  # decoded without the end-of-turn token
        check_stream(tr, mgr.chat.eot_ids)
    assert len(engine.calls) == 1
    check_calls(trajs, engine.calls)


def test_malformed_replies_cost_the_penalty_and_do_not_step(tokenizer):
    bad = [
        "<think>t</think>Up",  # no answer tag
        "<answer>Up</answer>",  # no think with think=True
        reply("Up", "Up", "Up", "Up"),  # 4 actions > max_actions_per_turn 3
        reply(" "),  # empty answer
    ]
    errors = ["no_answer_tag", "no_think_tag", "too_many_actions", "empty_answer"]
    script = [[*bad, reply("Right")], [reply("Right")] * 5]
    CounterEnv.step_calls = 0
    trajs, engine, mgr = rollout(tokenizer, script, seeds=[0], group_size=5, max_turns=2)
    first_obs = trajs[0].turns[0].observation
    for tr, err in zip(trajs[:4], errors):
        t0 = tr.turns[0]
        assert not t0.format_ok and t0.format_error == err
        assert t0.reward == pytest.approx(-0.1)
        assert t0.info == {}
        assert tr.turns[1].observation == first_obs  # env state unchanged
        assert not tr.format_valid
    ok = trajs[4]
    assert ok.turns[0].format_ok and ok.turns[0].reward == pytest.approx(-0.1)  # sokoban's step penalty
    assert ok.turns[0].info["moved_player"] and ok.turns[1].observation != first_obs
    for tr in trajs:
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)
    # and a counting env confirms step() is never called for a malformed reply
    trajs, _, _ = rollout(tokenizer, [bad, bad], env="test-counter", seeds=[0], group_size=4, max_turns=2)
    assert CounterEnv.step_calls == 0
    assert [t.format_error for tr in trajs for t in tr.turns] == [e for e in errors for _ in range(2)]


def test_custom_format_penalty_and_no_think(tokenizer):
    trajs, _, _ = rollout(
        tokenizer,
        "<answer>nope",
        env="test-counter",
        max_turns=1,
        group_size=1,
        format_penalty=-0.5,
        think=False,
    )
    assert trajs[0].turns[0].reward == -0.5
    trajs, _, _ = rollout(tokenizer, "<answer>win</answer>", env="test-counter", group_size=1, think=False)
    assert trajs[0].success and trajs[0].end_reason == "terminated"


def test_mixed_lengths_and_early_finishes(tokenizer):
    """Episodes end at turns 1, 2 and max_turns; each generate call holds only the live episodes."""
    short, _ = sokoban_plan(1)  # ['Up']: one move wins
    long_plan, _ = sokoban_plan(0)  # five moves
    assert short == ["Up"] and len(long_plan) == 5
    script = [
        [reply("Up"), "no answer", reply(long_plan[0]), reply(long_plan[0])],  # e0 wins at once
        [reply("Up"), reply(long_plan[1]), "junk"],  # e1 wins at turn 2; e3 is malformed
        [reply(long_plan[2]), reply(long_plan[1])],
    ]
    trajs, engine, mgr = rollout(tokenizer, script, seeds=[1, 0], group_size=2, max_turns=3)
    assert [len(c[0]) for c in engine.calls] == [4, 3, 2]
    assert [len(t.turns) for t in trajs] == [1, 2, 3, 3]
    assert [t.end_reason for t in trajs] == ["terminated", "terminated", "max_turns", "max_turns"]
    assert [t.success for t in trajs] == [True, True, False, False]
    assert [t.seed for t in trajs] == [1, 1, 0, 0] and [t.group for t in trajs] == [0, 0, 1, 1]
    assert [a for t in trajs[2].turns for a in t.actions] == long_plan[:3]
    assert [t.format_ok for t in trajs[3].turns] == [True, False, True]
    for tr in trajs:
        assert len(tr.samples) == 1  # full mode: one stream per episode
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)
    # Later prompts extend earlier ones: the stream only grows.
    calls = engine.calls
    assert calls[1][0][0][: len(calls[0][0][1])] == calls[0][0][1]
    # The token stream of the last turn decodes to the template's rendering of the whole conversation.
    tr = trajs[2]
    sample = tr.samples[0]
    turn1 = tr.turns[1]
    prompt_text = tokenizer.decode(sample.token_ids[turn1.prompt_span[0] : turn1.prompt_span[1]])
    assert prompt_text.startswith("\n<|im_start|>user\n") and prompt_text.endswith("<|im_start|>assistant\n")
    assert tr.turns[1].observation in prompt_text


def test_max_turns(tokenizer):
    trajs, engine, mgr = rollout(
        tokenizer, reply("Left"), env="test-counter", seeds=[0, 1], group_size=2, max_turns=3
    )
    assert all(t.end_reason == "max_turns" and len(t.turns) == 3 for t in trajs)
    assert [len(c[0]) for c in engine.calls] == [4, 4, 4]
    assert [t.observation for t in trajs[0].turns] == ["seed 0 step 0", "seed 0 step 1", "seed 0 step 2"]
    for tr in trajs:
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)


def test_env_error_ends_only_that_episode(tokenizer):
    script = [[reply("boom"), reply("x"), reply("x")], [reply("x"), reply("win")]]
    trajs, engine, mgr = rollout(tokenizer, script, env="test-counter", seeds=[0], group_size=3, max_turns=2)
    assert (
        trajs[0].end_reason == "env_error" and "kaboom" in trajs[0].error and "RuntimeError" in trajs[0].error
    )
    assert len(trajs[0].turns) == 1
    assert [len(c[0]) for c in engine.calls] == [3, 2]
    assert trajs[1].end_reason == "max_turns" and trajs[2].end_reason == "terminated"
    for tr in trajs:
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)


def test_turn_actions_are_the_actions_sent(tokenizer):
    plan, _ = sokoban_plan(1)  # ['Up'] wins at once; 'Left' comes after the win
    trajs, _, _ = rollout(tokenizer, reply("Up", "Left"), seeds=[1], group_size=1)
    assert trajs[0].end_reason == "terminated"
    assert trajs[0].turns[0].actions == ["Up"]


def test_turns_record_whether_the_answer_follows_the_thought(tokenizer):
    env = agentrl.make("sokoban")
    env.reset(seed=0)
    thought, actions = env.oracle_thought(), env.oracle_turn_actions()
    detour = ["Down", *actions]  # a step off the walk the thought names
    assert env.actions_follow_thought(thought, detour) is False
    script = [[reply(*actions, think=thought), reply(*detour, think=thought), reply(*actions)]]
    trajs, _, _ = rollout(tokenizer, script, seeds=[0], group_size=3, max_turns=1, max_actions_per_turn=10)
    assert [t.turns[0].follows_thought for t in trajs] == [True, False, None]  # "ok" names no push
    assert parse_reply(reply("Up", think="I push the box Up"), think=True, max_actions=3).thought == (
        "I push the box Up"
    )
    # A reply the parser refuses is not judged.
    trajs, _, _ = rollout(tokenizer, "<answer>Up</answer>", seeds=[0], group_size=1, max_turns=1)
    assert trajs[0].turns[0].follows_thought is None


def test_reply_prefix_is_prompt_not_sampled(tokenizer):
    """``reply_prefix`` (``<think>`` pre-filled) is shown to the model as prompt tokens (mask 0) and
    the parser sees it: the model then only writes the rest of the think block."""
    trajs, engine, mgr = rollout(
        tokenizer, "ok</think><answer>win</answer>", env="test-counter", group_size=1, reply_prefix="<think>"
    )
    tr = trajs[0]
    t0 = tr.turns[0]
    prefix = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    ids = tr.samples[0].token_ids
    assert ids[t0.prompt_span[1] - len(prefix) : t0.prompt_span[1]] == prefix
    assert engine.calls[0][0][0][-len(prefix) :] == prefix
    assert t0.reply == "<think>ok</think><answer>win</answer>" and t0.format_ok
    assert tr.success
    check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)


def test_env_error_with_worker_threads(tokenizer):
    trajs, _, _ = rollout(
        tokenizer,
        [[reply("x"), reply("boom")] * 2],
        env="test-counter",
        group_size=4,
        max_turns=1,
        env_workers=3,
    )
    assert [t.end_reason for t in trajs] == ["max_turns", "env_error"] * 2


def test_reply_cut_at_max_new_tokens_is_closed_untrained(tokenizer):
    long_reply = "<think>" + "very long thoughts " * 20 + "</think><answer>x</answer>"
    trajs, engine, mgr = rollout(
        tokenizer,
        [[long_reply], [reply("win")]],
        env="test-counter",
        group_size=1,
        max_turns=2,
        max_new_tokens=16,
    )
    tr = trajs[0]
    t0, t1 = tr.turns
    assert t0.finish_reason == "length" and t0.response_span[1] - t0.response_span[0] == 16
    assert t0.format_error == "no_answer_tag"
    sample = tr.samples[0]
    eot = mgr.chat.eot_ids[0]
    # the reply has no eot; the next prompt starts with one that is not trained on
    assert eot not in sample.token_ids[t0.response_span[0] : t0.response_span[1]]
    assert sample.token_ids[t1.prompt_span[0]] == eot and sample.loss_mask[t1.prompt_span[0]] == 0
    assert sample.token_ids[t1.prompt_span[0] + 1 : t1.prompt_span[0] + 2] == mgr.chat.tail_ids
    assert t1.finish_reason == "stop" and tr.end_reason == "terminated"
    assert engine.calls[0][1].max_new_tokens == 16
    check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)


def _first_prompt_len(tokenizer, **cfg):
    trajs, _, _ = rollout(tokenizer, reply("x"), env="test-counter", group_size=1, max_turns=2, **cfg)
    t0, t1 = trajs[0].turns
    return t0.prompt_span[1], t1.prompt_span[1] - t1.prompt_span[0]


def test_context_limit_end(tokenizer):
    p0, delta = _first_prompt_len(tokenizer)
    r = len(tokenizer(reply("x"), add_special_tokens=False)["input_ids"]) + 1
    limit = p0 + r + delta + 40 - 1  # turn 2's prompt fits but not with a full reply budget of 40
    trajs, engine, mgr = rollout(
        tokenizer,
        reply("x"),
        env="test-counter",
        group_size=2,
        max_turns=3,
        max_new_tokens=40,
        max_context_tokens=limit,
    )
    assert len(engine.calls) == 1
    for tr in trajs:
        assert tr.end_reason == "context_limit" and len(tr.turns) == 1
        sample = tr.samples[0]
        assert (
            len(sample.token_ids) == tr.turns[0].response_span[1] == p0 + r
        )  # the dropped turn left nothing
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)
    # At turn 0 already: the episode ends with no turn and no sample.
    trajs, engine, _ = rollout(
        tokenizer, reply("x"), env="test-counter", group_size=1, max_new_tokens=40, max_context_tokens=p0 + 10
    )
    assert engine.calls == [] and trajs[0].end_reason == "context_limit"
    assert trajs[0].turns == [] and trajs[0].samples == []


def test_context_limit_truncate(tokenizer):
    p0, delta = _first_prompt_len(tokenizer)
    r = len(tokenizer(reply("x"), add_special_tokens=False)["input_ids"]) + 1
    limit = p0 + r + delta + 5  # turn 2 may sample only 5 tokens; turn 3 has no room
    long_reply = "<think>" + "thinking " * 30 + "</think><answer>x</answer>"
    script = [[reply("x")] * 2, [long_reply] * 2]
    trajs, engine, mgr = rollout(
        tokenizer,
        script,
        env="test-counter",
        group_size=2,
        max_turns=4,
        max_new_tokens=40,
        max_context_tokens=limit,
        context_overflow="truncate",
    )
    assert [c[1].max_new_tokens for c in engine.calls] == [40, 5]
    for tr in trajs:
        assert tr.end_reason == "context_limit" and len(tr.turns) == 2
        assert tr.turns[1].finish_reason == "length"
        assert len(tr.samples[0].token_ids) == limit
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)


def test_group_seeding(tokenizer):
    trajs, engine, _ = rollout(tokenizer, "junk", seeds=[3, 8], group_size=3, max_turns=1)
    assert [t.seed for t in trajs] == [3, 3, 3, 8, 8, 8]
    assert [t.group for t in trajs] == [0, 0, 0, 1, 1, 1]
    assert [t.episode_id for t in trajs] == list(range(6))
    obs = [t.turns[0].observation for t in trajs]
    assert len(set(obs[:3])) == 1 and len(set(obs[3:])) == 1 and obs[0] != obs[3]
    assert trajs[0].reset_info["seed"] == 3 and trajs[0].reset_info == trajs[2].reset_info
    prompts = engine.calls[0][0]
    assert prompts[0] == prompts[1] == prompts[2] != prompts[3]


def test_rollout_group_size_and_step_override(tokenizer):
    engine = ScriptedEngine(tokenizer, "junk")
    mgr = RolloutManager(
        engine, tokenizer, "test-counter", RolloutConfig(group_size=4, max_turns=1, env_workers=1)
    )
    trajs = mgr.rollout([5], group_size=2, step=7, split="eval")
    assert len(trajs) == 2 and all(t.step == 7 and t.split == "eval" for t in trajs)
    trajs = mgr.rollout([5, 6])
    assert len(trajs) == 8
    mgr.close()


def test_per_call_settings_apply_to_that_call_only(tokenizer):
    """A curriculum stage's limits (``settings=``) bound one call; the manager's config is unchanged."""
    long_reply = "<think>" + "thinking " * 30 + "</think><answer>x</answer>"
    engine = ScriptedEngine(tokenizer, long_reply)
    cfg = RolloutConfig(group_size=4, max_turns=3, max_new_tokens=40, env_workers=1)
    mgr = RolloutManager(engine, tokenizer, "test-counter", cfg)
    trajs = mgr.rollout([5], settings={"max_new_tokens": 6, "group_size": 2, "max_turns": 1})
    assert len(trajs) == 2 and all(len(t.turns) == 1 for t in trajs)
    assert engine.calls[-1][1].max_new_tokens == 6
    assert all(t.turns[0].response_span[1] - t.turns[0].response_span[0] == 6 for t in trajs)
    assert mgr.config.max_new_tokens == 40 and mgr.config.group_size == 4  # untouched
    trajs = mgr.rollout([5])
    assert len(trajs) == 4 and engine.calls[-1][1].max_new_tokens == 40
    # The context limit of the call: a prompt that cannot hold a full reply ends the episode at once.
    trajs = mgr.rollout([5], settings={"max_context_tokens": 20})
    assert all(t.end_reason == "context_limit" and t.turns == [] for t in trajs)
    with pytest.raises(ValueError, match="cannot change between calls"):
        mgr.rollout([5], settings={"think": False})
    mgr.close()


@pytest.mark.parametrize("mode", ["window", "single"])
def test_windowed_modes(tokenizer, mode):
    script = [[reply(f"a{k}")] * 2 for k in range(3)]
    trajs, engine, mgr = rollout(
        tokenizer, script, env="test-counter", group_size=2, max_turns=3, context_mode=mode, history_turns=1
    )
    assert mgr.context_mode == mode
    chat = mgr.chat
    for tr in trajs:
        assert len(tr.samples) == 3 and [t.sample for t in tr.turns] == [0, 1, 2]
        check_stream(tr, chat.eot_ids)
        system = {"role": "system", "content": mgr.system_prompt}
        for k, t in enumerate(tr.turns):
            ids = tr.samples[k].token_ids
            text = tokenizer.decode(ids[: t.prompt_span[1]])
            assert text.startswith(chat.render_text([system], False))
            assert t.observation in text
            past = [tr.turns[j].reply for j in range(k)]
            if mode == "single":
                assert not any(p in text for p in past)
            elif k > 0:
                # history_turns=1: only the previous turn is shown
                assert past[-1] in text and not any(p in text for p in past[:-1])
                assert tr.turns[k - 1].observation in text
    check_calls(trajs, engine.calls, full=False)


def test_window_all_history_equals_full_stream_text(tokenizer):
    """Full mode's stream decodes to the same text as re-rendering the conversation (window, all history)."""
    script = [[reply("a")], [reply("b")], [reply("win")]]
    full, _, _ = rollout(tokenizer, script, env="test-counter", group_size=1, max_turns=3)
    win, _, _ = rollout(
        tokenizer, script, env="test-counter", group_size=1, max_turns=3, context_mode="window"
    )
    assert len(full[0].samples) == 1 and len(win[0].samples) == 3
    assert tokenizer.decode(full[0].samples[0].token_ids) == tokenizer.decode(win[0].samples[2].token_ids)
    # with ChatML and these replies, even the token ids agree
    assert full[0].samples[0].token_ids == win[0].samples[2].token_ids


# ------------------------------------------------------------------------------------------------
# Chat templates
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_loss_mask_under_templates(tokenizer, name):
    tok = build(name, tokenizer)
    chat = ChatFormat.from_tokenizer(tok)
    long_reply = "<think>" + "long " * 40 + "</think><answer>x</answer>"
    script = [[reply("a"), long_reply], [reply("b"), reply("c")], [reply("win"), reply("d")]]
    trajs, engine, mgr = rollout(
        tok, script, env="test-counter", group_size=2, max_turns=3, max_new_tokens=24, env_workers=1
    )
    assert mgr.context_mode == "full" and engine.calls[0][1].stop_token_ids == chat.eot_ids
    eot = chat.eot_ids[0]
    for tr in trajs:
        check_stream(tr, chat.eot_ids)
        sample = tr.samples[0]
        for t in tr.turns:
            a, b = t.response_span
            text = tok.decode(sample.token_ids[a:b])
            if t.finish_reason == "stop":
                assert text == t.reply + tok.convert_ids_to_tokens(eot)
        # every observation's tokens (mask 0) hold the observation text
        for t in tr.turns:
            assert t.observation in tok.decode(sample.token_ids[t.prompt_span[0] : t.prompt_span[1]])
    assert trajs[0].end_reason == "terminated" and len(trajs[0].turns) == 3
    assert trajs[1].turns[0].finish_reason == "length"
    # the cut reply is closed by an eot with mask 0, then the template's tail
    s1, t1 = trajs[1].samples[0], trajs[1].turns[1]
    at = t1.prompt_span[0]
    assert s1.token_ids[at] == eot and s1.loss_mask[at] == 0
    assert s1.token_ids[at + 1 : at + 1 + len(chat.tail_ids)] == chat.tail_ids
    check_calls(trajs, engine.calls)
    # the whole stream decodes to the template's own rendering of the conversation (window mode,
    # all history, re-renders it each turn)
    win, _, _ = rollout(
        tok,
        [[s[0]] for s in script],
        env="test-counter",
        group_size=1,
        max_turns=3,
        max_new_tokens=24,
        context_mode="window",
    )
    assert tok.decode(trajs[0].samples[0].token_ids) == tok.decode(win[0].samples[-1].token_ids)


def test_template_that_is_not_append_only_falls_back_to_window(tokenizer, caplog):
    tok = think_dropping_tokenizer(tokenizer)
    script = [[reply("a")] * 2, [reply("b")] * 2, [reply("c")] * 2]
    with caplog.at_level(logging.WARNING, logger="agentrl.rollout.manager"):
        trajs, engine, mgr = rollout(tok, script, env="test-counter", group_size=2, max_turns=3)
    assert mgr.context_mode == "window"
    assert any("not append-only" in r.getMessage() and "window" in r.getMessage() for r in caplog.records)
    for tr in trajs:
        assert len(tr.samples) == 3 and [t.sample for t in tr.turns] == [0, 1, 2]
        check_stream(tr, mgr.chat.eot_ids)
        # the template dropped earlier <think> blocks from the re-rendered history
        last = tok.decode(tr.samples[2].token_ids[: tr.turns[2].prompt_span[1]])
        assert "<answer>a</answer>" in last and "<think>ok</think><answer>a" not in last
    check_calls(trajs, engine.calls, full=False)


# ------------------------------------------------------------------------------------------------
# A real engine: token exactness and log-probs against the trainer's forward pass
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_rollout(tiny_model_path, tokenizer):
    from agentrl.models import load_model

    model = load_model(tiny_model_path)
    engine = RecordingEngine(HFEngine(model, pad_token_id=tokenizer.pad_token_id))
    cfg = RolloutConfig(
        group_size=2,
        max_turns=3,
        max_new_tokens=8,
        temperature=0.7,
        max_context_tokens=330,
        env_workers=2,
    )
    mgr = RolloutManager(engine, tokenizer, "test-counter", cfg, env_kwargs={"pad_per_seed": 12})
    trajs = mgr.rollout([0, 3, 9], sampling_seed=11)
    mgr.close()
    return model, engine, mgr, trajs


def test_real_engine_is_token_exact(real_rollout):
    model, engine, mgr, trajs = real_rollout
    prompt_lengths = [t.turns[0].prompt_span[1] for t in trajs]
    assert len(set(prompt_lengths)) == 3, prompt_lengths  # prompts of different lengths: left padding
    # episodes of 3, 2 and 1 turns (the longer observations reach the context limit sooner)
    assert [len(t.turns) for t in trajs] == [3, 3, 2, 2, 1, 1]
    assert [t.end_reason for t in trajs] == ["max_turns"] * 2 + ["context_limit"] * 4
    assert [len(c[0]) for c in engine.calls] == [6, 4, 2]  # finished episodes leave the batch
    for tr in trajs:
        check_stream(tr, mgr.chat.eot_ids)
    check_calls(trajs, engine.calls)
    for _prompts, sampling, _ in engine.calls:
        assert sampling.temperature == 0.7 and sampling.stop_token_ids == mgr.chat.eot_ids
    assert len({len(p) for p in engine.calls[0][0]}) == 3 and len({len(p) for p in engine.calls[1][0]}) == 2


def test_real_engine_logprobs_match_trainer(real_rollout):
    model, engine, mgr, trajs = real_rollout
    worst = 0.0
    with torch.no_grad():
        for tr in trajs:
            for sample in tr.samples:
                ids = torch.tensor([sample.token_ids])
                logits = model(ids).logits
                lp = token_logprobs(logits[:, :-1], ids[:, 1:], 0.7)[0]
                mask = torch.tensor(sample.loss_mask[1:], dtype=torch.bool)
                rollout_lp = torch.tensor(sample.logprobs[1:])
                assert mask.sum() > 0
                worst = max(worst, float((lp[mask] - rollout_lp[mask]).abs().max()))
    assert worst < 1e-4, worst


def test_sampling_seed_makes_rollouts_reproducible(real_rollout, tokenizer):
    model, _, _, trajs = real_rollout
    engine = HFEngine(model, pad_token_id=tokenizer.pad_token_id)
    cfg = RolloutConfig(group_size=2, max_turns=1, max_new_tokens=4, temperature=0.7, env_workers=1)
    mgr = RolloutManager(engine, tokenizer, "test-counter", cfg)
    a = mgr.rollout([0, 3], sampling_seed=5)
    b = mgr.rollout([0, 3], sampling_seed=5)
    mgr.close()
    assert [t.samples[0].token_ids for t in a] == [t.samples[0].token_ids for t in b]


# ------------------------------------------------------------------------------------------------
# JSONL
# ------------------------------------------------------------------------------------------------


def test_jsonl_round_trip_and_plain_json(tokenizer, tmp_path):
    plan, _ = sokoban_plan(0)
    script = [[reply(plan[0]), "junk"], [reply(*plan[1:]), reply(*plan)]]
    trajs, _, _ = rollout(tokenizer, script, seeds=[0], group_size=2, max_turns=2, max_actions_per_turn=10)
    trajs[0].samples[0].advantages = [0.5] * len(trajs[0].samples[0].token_ids)
    path = write_jsonl(tmp_path / "trajectories" / "step_000001.jsonl", trajs)
    back, warnings = read_jsonl(path)
    assert warnings == []
    assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]
    assert back[0].turns[0].response_span == trajs[0].turns[0].response_span
    assert isinstance(back[0].turns[0].prompt_span, tuple)
    # plain json, no agentrl
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2
    r = records[0]
    assert r["format_version"] == 1 and r["env"] == "sokoban" and r["success"] is True
    assert r["reward"] == pytest.approx(trajs[0].reward)
    s = r["samples"][0]
    a, b = r["turns"][0]["response_span"]
    assert s["loss_mask"][a:b] == [1] * (b - a) and sum(s["loss_mask"]) == b - a + (
        r["turns"][1]["response_span"][1] - r["turns"][1]["response_span"][0]
    )
    assert len(s["token_text"]) == len(s["token_ids"]) and s["advantages"][0] == 0.5
    assert records[1]["samples"][0]["advantages"] is None
    assert records[1]["turns"][0]["format_error"] == "no_answer_tag"


def test_jsonl_truncated_last_line(tokenizer, tmp_path):
    trajs, _, _ = rollout(tokenizer, "junk", env="test-counter", seeds=[0, 1], group_size=1, max_turns=1)
    path = write_jsonl(tmp_path / "t.jsonl", trajs)
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) - 40], encoding="utf-8")  # killed mid-write
    back, warnings = read_jsonl(path)
    assert len(back) == 1 and back[0].to_dict() == trajs[0].to_dict()
    assert len(warnings) == 1 and "t.jsonl:2" in warnings[0]
