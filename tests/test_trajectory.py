"""The trajectory reader keeps its promise on any input: it never raises, returns every valid record
of a file and names the file, line and field of every record it skips. Property-based (Hypothesis)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from replay_fixtures import make_step  # noqa: E402

from agentrl.rollout.trajectory import (  # noqa: E402
    MAX_DEPTH,
    RecordError,
    Trajectory,
    dumps,
    parse_record,
    read_jsonl,
    write_jsonl,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Real records as the trainer writes them: multi-turn sokoban and single-turn countdown episodes,
#: train (with advantages, token text) and eval (advantages null), one with token_text null.
RECORDS: list[Trajectory] = make_step(1, "train", 2, 2, 3) + make_step(3, "eval", 2, 1, 3)
RECORDS[1].samples[0].token_text = None
LINES: list[str] = [dumps(t) for t in RECORDS]
#: The same records read back (equal to RECORDS field for field: see the round-trip test); compared
#: with ``==``, which is much cheaper than ``to_dict`` in the loops below.
BACK: list[Trajectory] = [Trajectory.from_dict(json.loads(line)) for line in LINES]


# ------------------------------------------------------------------ an independent schema oracle
# docs/trajectories.md written out as data: the tests judge the reader by this, not by its own code.

SPAN = "span"
OPTIONAL = type(None)
TURN = {
    "observation": str,
    "reply": str,
    "actions": [str],
    "reward": float,
    "format_ok": bool,
    "format_error": (str, OPTIONAL),
    "info": dict,
    "sample": int,
    "prompt_span": SPAN,
    "response_span": SPAN,
    "finish_reason": str,
}
SAMPLE = {
    "token_ids": [int],
    "loss_mask": [int],
    "logprobs": [float],
    "advantages": ([float], OPTIONAL),
    "token_text": ([str], OPTIONAL),
}
RECORD = {
    "env": str,
    "seed": int,
    "group": int,
    "turns": [TURN],
    "samples": [SAMPLE],
    "reset_info": dict,
    "end_reason": str,
    "success": bool,
    "step": int,
    "split": str,
    "episode_id": int,
    "error": (str, OPTIONAL),
}
REQUIRED = {(): {"env", "seed", "group"}, ("turns",): {"observation"}}


def leaves(record: dict) -> list[tuple[tuple, object]]:
    """Every typed position of a record: ``(path, schema type)``, list elements included."""
    out: list[tuple[tuple, object]] = []

    def walk(value, kind, path):
        out.append((path, kind))
        if isinstance(kind, dict):
            for key, sub in kind.items():
                if key in value:
                    walk(value[key], sub, (*path, key))
        elif isinstance(kind, list) and value:
            for i, item in enumerate(value):
                walk(item, kind[0], (*path, i))
        elif isinstance(kind, tuple) and isinstance(kind[0], list) and value is not None:
            for i, item in enumerate(value):
                walk(item, kind[0][0], (*path, i))

    for key, kind in RECORD.items():
        walk(record[key], kind, (key,))
    return out


def accepts(kind, value) -> bool:
    """Whether the documented type ``kind`` admits ``value`` (ints count as floats, bools as nothing else)."""
    if isinstance(kind, tuple):
        return any(accepts(k, value) for k in kind)
    if kind is OPTIONAL:
        return value is None
    if kind is SPAN:
        return isinstance(value, list) and len(value) == 2 and all(accepts(int, v) for v in value)
    if isinstance(kind, list):
        return isinstance(value, list)
    if isinstance(kind, dict) or kind is dict:
        return isinstance(value, dict)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def usable(traj: Trajectory) -> bool:
    """What the viewer and the trainer rely on, checked directly on the objects."""
    if not (isinstance(traj.env, str) and type(traj.seed) is int and type(traj.group) is int):
        return False
    for s in traj.samples:
        n = len(s.token_ids)
        if len(s.loss_mask) != n or len(s.logprobs) != n or any(m not in (0, 1) for m in s.loss_mask):
            return False
        if any(x is not None and len(x) != n for x in (s.advantages, s.token_text)):
            return False
    for t in traj.turns:
        if not (0 <= t.sample < len(traj.samples) and isinstance(t.reward, float)):
            return False
        n = len(traj.samples[t.sample].token_ids)
        if not all(0 <= a <= b <= n for a, b in (t.prompt_span, t.response_span)):
            return False
    return True


def field_name(path: tuple) -> str:
    """A path as the reader's warnings spell it: ``turns[1].reward``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def get(record, path):
    for p in path:
        record = record[p]
    return record


def put(record, path, value):
    get(record, path[:-1])[path[-1]] = value


def read_lines(tmp_path: Path, lines: list[str | bytes], name: str = "step_000001.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return read_jsonl(path)


def assert_read(trajs, warnings, good: list[int], bad: list[int], name: str = "step_000001.jsonl") -> None:
    """``good`` are the indices into LINES expected back in order; ``bad`` the 1-based lines warned."""
    assert trajs == [BACK[i] for i in good]
    assert len(warnings) == len(bad), warnings
    for w, lineno in zip(warnings, bad):
        assert w.startswith(f"{name}:{lineno}: skipped a malformed record: "), w


# ------------------------------------------------------------------ the cases, one by one


def test_real_records_round_trip_with_no_warning(tmp_path):
    trajs, warnings = read_jsonl(write_jsonl(tmp_path / "s.jsonl", RECORDS))
    assert warnings == [] and [t.to_dict() for t in trajs] == [t.to_dict() for t in RECORDS]
    assert trajs == BACK and [t.to_dict() for t in BACK] == [t.to_dict() for t in RECORDS]
    assert Trajectory.from_dict(RECORDS[0].to_dict()).to_dict() == RECORDS[0].to_dict()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("42", "expected object, got int"),
        ("[1, 2]", "expected object, got array"),
        ("null", "expected object, got null"),
        ('"text"', "expected object, got str"),
        ('{"env": "sokoban", "seed": 1', "not JSON"),
        ('{"env": "sokoban", "seed": 1, "group": 0, "reset_info": {"a": ' + "[" * 100_000, "nested too deep"),
        (b'{"env": "sok\xffban", "seed": 1, "group": 0}', "not valid UTF-8"),
    ],
    ids=["int", "array", "null", "string", "truncated", "deep", "not-utf8"],
)
def test_lines_that_are_not_records_are_skipped_between_good_ones(tmp_path, line, reason):
    trajs, warnings = read_lines(tmp_path, [LINES[0], line, LINES[1]])
    assert_read(trajs, warnings, good=[0, 1], bad=[2])
    assert reason in warnings[0]


def test_wrong_types_name_the_field(tmp_path):
    d = json.loads(LINES[0])
    d["turns"][1]["reward"] = "1.0"  # the 500 from Trajectory.reward
    e = json.loads(LINES[2])
    e["samples"][0]["loss_mask"][3] = 2
    trajs, warnings = read_lines(tmp_path, [json.dumps(d), LINES[1], json.dumps(e)])
    assert_read(trajs, warnings, good=[1], bad=[1, 3])
    assert "turns[1].reward: expected float, got str" in warnings[0]
    assert "samples[0].loss_mask: holds values other than 0 and 1" in warnings[1]


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["turns"][0].update(response_span=[0, 10**6]), "turns[0].response_span"),
        (lambda d: d["turns"][0].update(prompt_span=[5, 2]), "turns[0].prompt_span"),
        (lambda d: d["turns"][0].update(sample=3), "turns[0].sample"),
        (lambda d: d["samples"][0]["logprobs"].pop(), "samples[0].logprobs"),
        (lambda d: d["samples"][0]["loss_mask"].append(0), "samples[0].loss_mask"),
        (lambda d: d["samples"][0]["advantages"].pop(), "samples[0].advantages"),
        (lambda d: d["samples"][0]["token_text"].pop(), "samples[0].token_text"),
        (lambda d: d.pop("samples"), "turns[0].sample"),
        (lambda d: d.pop("seed"), "seed"),
        (lambda d: d["turns"][1].pop("observation"), "turns[1].observation"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_spans_and_lengths_outside_the_tokens_are_skipped(tmp_path, edit, field):
    d = json.loads(LINES[0])
    edit(d)
    trajs, warnings = read_lines(tmp_path, [LINES[1], json.dumps(d)])
    assert_read(trajs, warnings, good=[1], bad=[2])
    assert f"malformed record: {field}: " in warnings[0]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 900, 5_000])
def test_deep_values_are_skipped_and_shallow_ones_kept(tmp_path, depth):
    d = json.loads(LINES[0])
    d["reset_info"]["deep"] = json.loads("[" * 50 + "]" * 50)  # deep enough for any real env
    ok = json.dumps(d)
    d["turns"][0]["info"]["deep"] = "[" * depth + "]" * depth  # a string: harmless
    line = json.dumps(d).replace('"' + "[" * depth + "]" * depth + '"', "[" * depth + "]" * depth)
    trajs, warnings = read_lines(tmp_path, [ok, line])
    assert len(trajs) == 1 and trajs[0].reset_info["deep"] == d["reset_info"]["deep"]
    assert len(warnings) == 1 and ":2: skipped a malformed record:" in warnings[0]
    assert "turns[0].info: nested deeper than" in warnings[0] or "nested too deep" in warnings[0]


def test_non_finite_numbers_json_writes_are_still_read(tmp_path):
    """Python's json writes NaN and Infinity (a NaN reward, a -inf log-prob); the old reader read them."""
    RECORDS[0].turns[0].reward = float("nan")
    try:
        trajs, warnings = read_lines(tmp_path, [dumps(RECORDS[0]).replace("-0.", "-Infinity, -0.", 0)])
    finally:
        RECORDS[0].turns[0].reward = json.loads(LINES[0])["turns"][0]["reward"]
    assert warnings == [] and math.isnan(trajs[0].turns[0].reward)


def test_parse_record_takes_text_or_bytes_and_raises_only_record_errors():
    assert parse_record(LINES[0]) == parse_record(LINES[0].encode()) == BACK[0]
    for bad in ("", b"\xff", "{}", "[" * 10_000):
        with pytest.raises(RecordError):
            parse_record(bad)


def test_from_dict_rejects_what_is_not_a_record():
    for bad in (42, None, [1], "x", {"env": "x", "seed": "1", "group": 0}):
        with pytest.raises(RecordError):
            Trajectory.from_dict(bad)


@pytest.mark.slow  # many property-based examples
def test_truncation_at_every_byte_of_a_real_step_file(tmp_path):
    """A run killed mid-write, at every possible byte: the complete records back, the cut one warned."""
    first, second = 5, 2  # the two countdown episodes: a real file, and a short one (one read per byte)
    data = f"{LINES[first]}\n{LINES[second]}\n".encode()
    ends = [len(LINES[first].encode()), len(data) - 1]  # where each record's JSON ends
    path = tmp_path / "step_000007.jsonl"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        trajs, warnings = read_jsonl(path)
        complete = sum(cut >= end for end in ends)
        partial = cut not in (0, ends[0], ends[0] + 1, ends[1], len(data))
        assert trajs == [BACK[first], BACK[second]][:complete], cut
        assert len(warnings) == partial, (cut, warnings)
        if partial:
            assert warnings[0].startswith(f"step_000007.jsonl:{complete + 1}: skipped a malformed"), cut


# ------------------------------------------------------------------ fuzzing

#: Any JSON value; objects never carry "env", so none of them can be a valid record by chance.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8).filter(lambda k: k != "env"), inner, max_size=4)
    ),
    max_leaves=20,
)
#: Values of every JSON type, to put where the schema wants another.
SWAPS = [None, True, 7, 1.5, "text", [], [1, 2], {}, {"a": 1}]


@FUZZ
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=4), where=st.lists(st.integers(0, 3), max_size=4))
@pytest.mark.slow  # many property-based examples
def test_random_json_values_never_raise_and_never_hide_good_records(tmp_path_factory, values, where):
    lines: list[str] = list(LINES)
    for k, value in enumerate(values):
        pos = min(where[k] if k < len(where) else 0, len(lines))
        lines.insert(pos, json.dumps(value))
    bad = [i + 1 for i, line in enumerate(lines) if line not in LINES]
    trajs, warnings = read_lines(tmp_path_factory.mktemp("fuzz"), lines)
    assert_read(trajs, warnings, good=list(range(len(LINES))), bad=bad)


@FUZZ
@given(blob=st.binary(max_size=200).filter(lambda b: b"\n" not in b and b"env" not in b))
def test_random_bytes_never_raise(tmp_path_factory, blob):
    trajs, warnings = read_lines(tmp_path_factory.mktemp("bytes"), [LINES[3], blob, LINES[2]])
    assert_read(trajs, warnings, good=[3, 2], bad=[2] if blob.strip() else [])


@FUZZ
@given(data=st.data())
@pytest.mark.slow  # many property-based examples
def test_a_type_swap_anywhere_is_skipped_naming_its_field(tmp_path_factory, data):
    i = data.draw(st.integers(0, len(LINES) - 1), label="record")
    record = json.loads(LINES[i])
    path, kind = data.draw(st.sampled_from(leaves(record)), label="field")
    value = data.draw(st.sampled_from([v for v in SWAPS if not accepts(kind, v)]), label="value")
    put(record, path, value)
    trajs, warnings = read_lines(tmp_path_factory.mktemp("swap"), [LINES[i - 1], json.dumps(record)])
    assert_read(trajs, warnings, good=[i - 1], bad=[2])
    # The reader names the swapped field, or a field inside it (a list's first bad element).
    named = re.search(r"malformed record: ([^ ]+): ", warnings[0]).group(1)
    assert named.startswith(field_name(path)), (named, path)


@FUZZ
@given(data=st.data())
@pytest.mark.slow  # many property-based examples
def test_a_deleted_field_either_defaults_or_is_skipped(tmp_path_factory, data):
    i = data.draw(st.integers(0, len(LINES) - 1), label="record")
    record = json.loads(LINES[i])
    objects = [((), record)] + [(("turns", k), t) for k, t in enumerate(record["turns"])]
    objects += [(("samples", k), s) for k, s in enumerate(record["samples"])]
    where, obj = data.draw(st.sampled_from(objects), label="object")
    key = data.draw(st.sampled_from(sorted(obj)), label="key")
    del obj[key]
    trajs, warnings = read_lines(tmp_path_factory.mktemp("del"), [json.dumps(record), LINES[i - 1]])
    required = key in REQUIRED.get(where[:1], set())
    if required:
        assert_read(trajs, warnings, good=[i - 1], bad=[1])
        assert f"malformed record: {field_name((*where, key))}: missing" in warnings[0]
    elif warnings:  # e.g. no samples left for the turns to point at
        assert_read(trajs, warnings, good=[i - 1], bad=[1])
    else:  # the field took its documented default
        assert len(trajs) == 2 and usable(trajs[0]) and trajs[1] == BACK[i - 1]


@FUZZ
@given(record=st.sampled_from(LINES), value=JSON_VALUES, key=st.sampled_from(["info", "reset_info"]))
def test_any_json_in_free_form_fields_is_kept(tmp_path_factory, record, value, key):
    d = json.loads(record)
    target = d["turns"][0]["info"] if key == "info" and d["turns"] else d["reset_info"]
    target["x"] = value
    trajs, warnings = read_lines(tmp_path_factory.mktemp("free"), [json.dumps(d)])
    assert warnings == [] and len(trajs) == 1 and usable(trajs[0])
