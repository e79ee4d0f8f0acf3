"""The replay viewer: data layer, HTTP routes and their security, the export, and the real page in Chromium."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from replay_fixtures import XSS_OBS, XSS_REPLY, make_run  # noqa: E402

from agentrl.replay import RunData, export_html, make_server  # noqa: E402
from agentrl.replay.data import BadRequest, NotFound  # noqa: E402
from agentrl.replay.export import script_safe_json, spread  # noqa: E402
from agentrl.replay.server import STATIC_DIR  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def server(run_dir):
    srv = make_server(run_dir)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


#: Lines a crashed or hand-edited run can hold, with what the warning must say about each. They go
#: into train step 1 of the ``broken`` run after its third record, so line 4 is the first of them.
BAD_LINES: list[tuple[bytes, str]] = [
    (b"42", "expected object, got int"),
    (b"[1, 2]", "expected object, got array"),
    (b"null", "expected object, got null"),
    (b'"text"', "expected object, got str"),
    (b"", ""),  # blank: ignored, no warning
    (b'{"env": "sokoban", "seed": 1, "group": 0, "reset_info": {"a": ' + b"[" * 100_000, "nested too deep"),
    (b'{"env": "sok\xffban", "seed": 1, "group": 0}', "not valid UTF-8"),
    (b'{"env": "sokoban", "seed": 3, "gro', "not JSON"),
]
BROKEN_EPISODES = 16 + 1  # the step's own records, and one whose observation holds a lone surrogate


def broken_line(record: dict, edit) -> bytes:
    d = json.loads(json.dumps(record))
    edit(d)
    return json.dumps(d).encode()


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory) -> Path:
    """A run whose train step 1 holds every kind of bad line between its valid records."""
    run = make_run(tmp_path_factory.mktemp("broken"), name="broken", steps=2, xss=False, truncate_step=None)
    path = run / "trajectories" / "step_000001.jsonl"
    lines = path.read_bytes().splitlines()
    record = json.loads(lines[0])
    edits = [
        (lambda d: d["turns"][0].update(reward="1.0"), "turns[0].reward: expected float, got str"),
        (lambda d: d["turns"][0].update(response_span=[0, 10**6]), "turns[0].response_span: [0, 1000000)"),
        (lambda d: d["samples"][0]["loss_mask"].pop(), "samples[0].loss_mask: "),
    ]
    bad = BAD_LINES + [(broken_line(record, edit), reason) for edit, reason in edits]
    # Valid, but \ud800 cannot be encoded as UTF-8: the server must not fail on it.
    surrogate = broken_line(record, lambda d: d["turns"][0].update(observation="lone \ud800 surrogate"))
    path.write_bytes(b"\n".join(lines[:3] + [line for line, _ in bad] + [surrogate] + lines[3:]) + b"\n")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write("\n" + "[" * 100_000 + "\n")
        f.write('{"step": 5, "train/reward": ' + "9" * 5000 + "}\n")
        f.write('{"step": 6, "train/reward": 1.0, "nested": {"a": [1, 2]}}\n')
    return run


def broken_warnings() -> list[tuple[int, str]]:
    """(line, reason) of every warning train step 1 of ``broken_run`` must give, in order."""
    out = []
    for k, (line, reason) in enumerate(BAD_LINES, start=4):
        if line:
            out.append((k, reason))
    n = 4 + len(BAD_LINES)
    return out + [
        (n, "turns[0].reward: expected float, got str"),
        (n + 1, "turns[0].response_span: [0, 1000000)"),
        (n + 2, "samples[0].loss_mask: "),
    ]


@pytest.fixture(scope="module")
def broken_server(broken_run):
    srv = make_server(broken_run)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def get(srv, path: str, host: str | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A raw request: the path goes out exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{srv.port}")
    conn.endheaders()
    res = conn.getresponse()
    body = res.read()
    conn.close()
    return res.status, {k.lower(): v for k, v in res.getheaders()}, body


def api(srv, path: str):
    status, _, body = get(srv, path)
    assert status == 200, (path, status, body[:200])
    return json.loads(body)


def find_episode(run_dir: Path, step: int, pred) -> int:
    data = RunData(run_dir).step("train", step)
    return next(e["i"] for e in data["episodes"] if pred(e))


def xss_episode(run_dir: Path, needle: str) -> int:
    eps = RunData(run_dir).episodes("train", 1)
    return next(e["i"] for e in eps if needle in e["turns"][0]["reply"] + e["turns"][0]["observation"])


# ------------------------------------------------------------------------------------ data layer


def test_index_lists_steps_of_both_splits(run_dir):
    idx = RunData(run_dir).index()
    assert idx["run"] == "demo"
    assert idx["splits"] == {"train": [1, 2, 3], "eval": [0, 3]}
    assert re.fullmatch(r"[0-9a-f]{12}", idx["version"])


def test_version_changes_when_the_run_writes_a_step(tmp_path):
    run = make_run(tmp_path, steps=1, eval_every=10, xss=False, truncate_step=None)
    data = RunData(run)
    before = data.index()
    shutil.copy(run / "trajectories/step_000001.jsonl", run / "trajectories/step_000002.jsonl")
    after = data.index()
    assert after["splits"]["train"] == [1, 2] and after["version"] != before["version"]


def test_step_summaries_and_groups(run_dir):
    d = RunData(run_dir).step("train", 1)
    assert len(d["episodes"]) == 16 and len(d["groups"]) == 4
    assert {e["env"] for e in d["episodes"]} == {"sokoban", "countdown"}
    ep = d["episodes"][0]
    assert set(ep) >= {"i", "env", "seed", "group", "reward", "success", "end_reason", "turns", "length"}
    assert "samples" not in ep  # tokens only come per episode
    for g in d["groups"]:
        seeds = {d["episodes"][i]["seed"] for i in g["episodes"]}
        assert seeds == {g["seed"]} and len(g["episodes"]) == 4
    assert d["warnings"] == []


def test_episode_holds_turns_and_tokens(run_dir):
    i = find_episode(run_dir, 1, lambda e: e["env"] == "sokoban" and e["turns"] >= 2)
    ep = RunData(run_dir).episode("train", 1, i)
    s = ep["samples"][0]
    assert len(s["token_ids"]) == len(s["loss_mask"]) == len(s["logprobs"]) == len(s["advantages"])
    for t in ep["turns"]:
        a, b = t["response_span"]
        assert all(m == 1 for m in s["loss_mask"][a:b])
        assert all(m == 0 for m in s["loss_mask"][slice(*t["prompt_span"])])
    assert ep["reward"] == pytest.approx(sum(t["reward"] for t in ep["turns"]))
    with pytest.raises(NotFound):
        RunData(run_dir).episode("train", 1, 999)


def test_truncated_step_file_gives_records_and_a_warning(run_dir):
    d = RunData(run_dir).step("train", 2)
    assert len(d["episodes"]) == 16  # every complete record
    assert len(d["warnings"]) == 1 and "malformed" in d["warnings"][0] and "step 2" in d["warnings"][0]


def test_metrics_skip_bad_lines_and_nan(run_dir):
    m = RunData(run_dir).metrics()
    assert [r["step"] for r in m["rows"]] == [0, 1, 2, 3]
    assert m["rows"][1]["train/kl"] is None  # NaN is not JSON
    assert "eval/success_rate" in m["rows"][0] and "eval/success_rate" not in m["rows"][1]
    assert any("metrics.jsonl:5" in w for w in m["warnings"])


def test_bad_parameters(run_dir):
    data = RunData(run_dir)
    with pytest.raises(BadRequest):
        data.step("../..", 1)
    with pytest.raises(NotFound):
        data.step("train", 7)


def test_symlinks_out_of_the_run_are_not_followed(tmp_path):
    run = make_run(tmp_path / "runs", steps=1, eval_every=10, xss=False, truncate_step=None)
    secret = tmp_path / "secret.jsonl"
    shutil.copy(run / "trajectories/step_000001.jsonl", secret)
    (run / "trajectories/step_000009.jsonl").symlink_to(secret)
    (run / "config.yaml").unlink()
    (run / "config.yaml").symlink_to(tmp_path / "secret.jsonl")
    # A link that stays inside the run is fine.
    (run / "trajectories/step_000005.jsonl").symlink_to(run / "trajectories/step_000001.jsonl")
    data = RunData(run)
    assert data.index()["splits"]["train"] == [1, 5]
    with pytest.raises(NotFound):
        data.step("train", 9)
    assert data.config()["text"] is None


def test_a_run_without_steps_yet(tmp_path):
    data = RunData(tmp_path)
    idx = data.index()
    assert idx["splits"] == {"train": [], "eval": []} and "no trajectory files yet" in idx["warnings"][0]
    assert data.metrics()["rows"] == [] and data.config()["text"] is None


def test_a_malformed_step_gives_its_valid_records_and_names_each_bad_line(broken_run):
    d = RunData(broken_run).step("train", 1)
    assert len(d["episodes"]) == BROKEN_EPISODES
    expected = broken_warnings()
    assert len(d["warnings"]) == len(expected), d["warnings"]
    for warning, (line, reason) in zip(d["warnings"], expected):
        assert warning.startswith(f"train step 1: step_000001.jsonl:{line}: skipped a malformed record: ")
        assert reason in warning, (reason, warning)
    episodes = RunData(broken_run).episodes("train", 1)
    assert [e["i"] for e in episodes] == list(range(BROKEN_EPISODES))
    m = RunData(broken_run).metrics()
    assert [r["step"] for r in m["rows"]] == [0, 1, 2, 6] and "nested" not in m["rows"][-1]
    assert len(m["warnings"]) == 4  # the fixture's cut line, the deep line, the huge number, the nested value


def test_many_bad_lines_are_counted_not_listed(tmp_path):
    run = make_run(tmp_path, steps=1, xss=False, truncate_step=None)
    with open(run / "trajectories" / "step_000001.jsonl", "a") as f:
        f.write("42\n" * 500)
    d = RunData(run).step("train", 1)
    assert (
        len(d["episodes"]) == 16
        and len(d["warnings"]) == 21
        and d["warnings"][-1] == "train step 1: ... and 480 more"
    )


def test_an_unreadable_step_file_is_a_warning(tmp_path, monkeypatch):
    run = make_run(tmp_path, steps=1, xss=False, truncate_step=None)

    def unreadable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("agentrl.replay.data.read_jsonl", unreadable)
    d = RunData(run).step("train", 1)
    assert d["episodes"] == [] and d["warnings"] == [
        "train step 1: step_000001.jsonl cannot be read: Permission denied"
    ]


def test_missing_run_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        RunData(tmp_path / "nope")


# ------------------------------------------------------------------------------------ HTTP routes


def test_routes_serve_page_assets_and_api(server):
    status, headers, body = get(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"/static/app.js" in body
    status, headers, _ = get(server, "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert api(server, "/api/index")["splits"]["train"] == [1, 2, 3]
    assert len(api(server, "/api/metrics")["rows"]) == 4
    assert "sokoban" in api(server, "/api/config")["text"]
    assert len(api(server, "/api/step?split=eval&step=3")["episodes"]) == 8
    assert api(server, "/api/episode?split=train&step=1&i=0")["samples"][0]["token_ids"]
    assert len(api(server, "/api/step?split=train&step=2")["warnings"]) == 1


def test_no_route_fails_on_a_malformed_run(broken_server, broken_run):
    for route in ("index", "metrics", "config"):
        api(broken_server, f"/api/{route}")
    for split, steps in api(broken_server, "/api/index")["splits"].items():
        for step in steps:
            episodes = api(broken_server, f"/api/step?split={split}&step={step}")["episodes"]
            for e in episodes:
                api(broken_server, f"/api/episode?split={split}&step={step}&i={e['i']}")
    obs = api(broken_server, "/api/episode?split=train&step=1&i=3")["turns"][0]["observation"]
    assert obs == "lone ? surrogate"


#: Anything a line can be: JSON values (objects never carry "env": none is a valid record) or bytes.
JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
).map(lambda v: json.dumps(v).encode()) | st.binary(max_size=100)
_fuzz_step = iter(range(100, 10**6))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.lists(JUNK.filter(lambda b: b"\n" not in b and b"env" not in b and b.strip()), max_size=5))
def test_no_line_makes_the_step_route_fail(broken_server, broken_run, junk):
    """Fuzzed: whatever lines a step file holds, its routes answer 200 with the valid records."""
    good = (broken_run / "trajectories" / "step_000002.jsonl").read_bytes().splitlines()[:2]
    step = next(_fuzz_step)  # a new file each time: nothing cached under an equal (mtime, size)
    path = broken_run / "trajectories" / f"step_{step:06d}.jsonl"
    path.write_bytes(b"\n".join([good[0], *junk, good[1]]) + b"\n")
    try:
        d = api(broken_server, f"/api/step?split=train&step={step}")
        assert len(d["episodes"]) == 2 and len(d["warnings"]) == len(junk)
        api(broken_server, f"/api/episode?split=train&step={step}&i=1")
    finally:
        path.unlink()


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/..%2fserver.py",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e/data.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/../../etc/passwd",
        "/etc/passwd",
        "//etc/passwd",
        "/config.yaml",
        "/metrics.jsonl",
        "/trajectories/step_000001.jsonl",
        "/api/../config.yaml",
        "/api/step?split=..%2f..%2f..%2fetc&step=1",
        "/api/step?split=/etc&step=1",
        "/api/step?split=train&step=..%2f..%2fetc%2fpasswd",
        "/api/step?split=train&step=-1",
        "/api/episode?split=train&step=1&i=1e3",
    ],
)
def test_traversal_is_rejected(server, path):
    status, _, body = get(server, path)
    assert status in (400, 404), path
    assert b"root:" not in body and b"import" not in body and b"token_ids" not in body


def test_host_header_is_checked(server):
    assert get(server, "/api/index", host="evil.example:80")[0] == 403
    assert get(server, "/api/index", host=f"localhost:{server.port}")[0] == 200


def test_only_get_and_head(server):
    assert get(server, "/api/index", method="POST")[0] in (405, 501)
    status, _, body = get(server, "/api/index", method="HEAD")
    assert status == 200 and body == b""


def test_static_js_builds_dom_without_html():
    js = (STATIC_DIR / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in js, sink


# ------------------------------------------------------------------------------------ export


def test_script_safe_json_escapes_markup():
    text = script_safe_json({"a": "</script><!-- & \u2028\u2029"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028\u2029"}


def test_spread_covers_the_run_evenly():
    assert spread([0]) == [0]
    order = spread(list(range(9)))
    assert order[:3] == [8, 0, 4] and sorted(order) == list(range(9))


def test_export_is_self_contained_and_escaped(run_dir, tmp_path):
    out = export_html(run_dir, tmp_path / "run.html")
    html = out.read_text()
    assert "<script>alert(1)</script>" not in html and "<img src=x" not in html
    assert "\\u003cscript\\u003ealert(1)" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "/static/" not in html
    payload = re.search(
        r'<script type="application/json" id="agentrl-data">(.*?)</script>', html, re.S
    ).group(1)
    data = json.loads(payload)
    assert set(data["steps"]) == {"train:1", "train:2", "train:3", "eval:0", "eval:3"}
    assert all(s["episodes"] for s in data["steps"].values())
    assert "Content-Security-Policy" in html and "'sha256-" in html


def test_export_respects_the_size_budget(run_dir, tmp_path):
    full = len(script_safe_json(RunData(run_dir).episodes("train", 3)))
    out = export_html(run_dir, tmp_path / "small.html", max_bytes=full + 10)
    data = json.loads(re.search(r'id="agentrl-data">(.*?)</script>', out.read_text(), re.S).group(1))
    embedded = [k for k, s in data["steps"].items() if s["episodes"] is not None]
    assert "train:3" in embedded and len(embedded) < 5  # the last training step goes first
    assert all(s["summary"]["episodes"] for s in data["steps"].values())  # summaries always
    assert any("summaries only" in w for w in data["index"]["warnings"])


def test_export_of_a_malformed_run_holds_the_valid_records_and_lists_the_skipped(broken_run, tmp_path):
    out = export_html(broken_run, tmp_path / "broken.html")
    data = json.loads(re.search(r'id="agentrl-data">(.*?)</script>', out.read_text(), re.S).group(1))
    assert len(data["steps"]["train:1"]["episodes"]) == BROKEN_EPISODES
    warnings = data["index"]["warnings"]
    assert any("leaves out records" in w for w in warnings)
    for line, reason in broken_warnings():
        assert any(f"step_000001.jsonl:{line}: skipped" in w and reason in w for w in warnings), line


def test_cli_export_of_a_malformed_or_missing_run(broken_run, tmp_path):
    import subprocess

    cmd = [sys.executable, "-m", "agentrl", "replay", str(broken_run), "--export", str(tmp_path / "b.html")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and (tmp_path / "b.html").is_file()
    cmd[4] = str(tmp_path / "no-such-run")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("agentrl: error: no run directory at")
    assert "Traceback" not in proc.stderr


def test_cli_export(run_dir, tmp_path, capsys):
    from agentrl.cli import main

    assert main(["replay", str(run_dir), "--export", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").stat().st_size > 10_000 and "wrote" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ the page


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `bash scripts/setup.sh test` installs it")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="`bash scripts/setup.sh test` installs playwright"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


class Watched:
    """A page plus everything that must never happen on it: dialogs, script errors, requests out."""

    def __init__(self, browser, offline: bool = False) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=offline)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, url: str):
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready='1']")
        return self.page

    def assert_clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors
        injected = self.page.evaluate(
            "() => document.querySelectorAll('img, iframe, object, embed, svg [onload], [onerror], b[onmouseover]').length"
        )
        assert injected == 0
        assert self.page.evaluate("() => document.body.dataset.pwned") is None


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.context.close()


def board_pixels(page) -> int:
    """Distinct colours drawn on the first board canvas (0 when blank)."""
    return page.evaluate(
        """() => { const c = document.querySelector('#slot-A canvas.board');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const seen = new Set();
        for (let i = 0; i < d.length; i += 16) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2] + ',' + d[i + 3]);
        return seen.size; }"""
    )


def test_page_plays_an_episode_with_board_and_tokens(server, run_dir, watched):
    page = watched.open(server.url)
    assert page.locator("#charts svg.plot polyline.line.train").count() == 4
    page.select_option("#step", "1")
    page.wait_for_selector("#step-stats >> text=16 episodes")
    data = RunData(run_dir)

    def judged(e: dict) -> bool:  # turn 2 carries the env's verdict on its answer
        return isinstance(data.episode("train", 1, e["i"])["turns"][1].get("follows_thought"), bool)

    i = find_episode(run_dir, 1, lambda e: e["env"] == "sokoban" and e["turns"] >= 3 and judged(e))
    n = data.step("train", 1)["episodes"][i]["turns"]
    page.click(f"#episodes .chip[data-i='{i}']")
    page.wait_for_selector(f"#slot-A .turn-label >> text=turn 1 / {n}")
    assert board_pixels(page) > 4
    board = page.locator("#slot-A canvas.board")
    assert board.get_attribute("data-rows") and "sokoban board" in board.get_attribute("aria-label")
    first = page.locator("#slot-A .turn").get_attribute("data-turn")
    page.keyboard.press("ArrowRight")
    page.wait_for_selector(f"#slot-A .turn-label >> text=turn 2 / {n}")
    assert first == "0" and page.locator("#slot-A .turn").get_attribute("data-turn") == "1"
    page.click("#slot-A button.next")
    page.wait_for_selector(f"#slot-A .turn-label >> text=turn 3 / {n}")
    page.keyboard.press("ArrowLeft")
    page.wait_for_selector(f"#slot-A .turn-label >> text=turn 2 / {n}")
    # Reply: thinking and answer apart; actions, reward; the env's verdict on the answer, if any.
    assert page.locator("#slot-A .seg.think").count() + page.locator("#slot-A .seg.answer").count() >= 1
    verdict = data.episode("train", 1, i)["turns"][1]["follows_thought"]
    assert page.locator("#slot-A .turn-meta >> text=follows thought").count() == 1
    said = "✓ yes" if verdict else "✗ the moves are not those the thought names"
    assert page.locator(f"#slot-A .turn-meta >> text={said}").count() == 1
    # Token view: trained tokens coloured, log-prob and advantage on hover.
    page.check("#show-tokens")
    trained = page.locator("#slot-A .tokens .tok.trained")
    assert trained.count() > 0 and page.locator("#slot-A .tokens .tok.ctx").count() > 0
    trained.first.hover()
    tip = page.locator("#tip")
    assert tip.is_visible() and "logprob" in tip.inner_text() and "advantage" in tip.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "replay.png"), full_page=True)
    watched.assert_clean()


def test_hostile_text_shows_literally_and_runs_nothing(server, run_dir, watched):
    i = xss_episode(run_dir, "alert(1)")
    page = watched.open(f"{server.url}#train/1/{i}")
    page.wait_for_selector("#slot-A .seg.think")
    assert "<script>alert(1)</script>" in page.locator("#slot-A .seg.think").inner_text()
    assert '<img src=x onerror="alert(2)">' in page.locator("#slot-A .seg.answer").inner_text()
    assert '<img src=x onerror="alert(2)">' in page.locator("#slot-A code.action").inner_text()
    page.check("#show-tokens")
    assert "<b onmouseover=alert(5)>" in page.locator("#slot-A .tokens").inner_text()
    page.click("#config summary")
    assert "</pre><script>alert(4)</script>" in page.locator("#config-text").inner_text()
    # The observation payload, in an episode whose token text is missing (ids shown instead).
    j = xss_episode(run_dir, "pwned")
    page.click(f"#episodes .chip[data-i='{j}']")
    # Wait for this episode's observation itself: the previous episode's reply also says "onerror".
    page.wait_for_selector("#slot-A .obs >> text=document.body.dataset.pwned")
    assert XSS_OBS in page.locator("#slot-A .obs").inner_text()
    assert re.search(r"⟨\d+⟩", page.locator("#slot-A .tokens").inner_text())
    watched.assert_clean()
    assert XSS_REPLY  # (the fixture's payloads are what this test looked for)


def test_truncated_step_shows_a_warning_and_its_records(server, watched):
    page = watched.open(server.url)
    page.select_option("#step", "2")
    page.wait_for_selector("#step-stats >> text=16 episodes")
    # The warning arrives with the step's own request, which may land after the stats are drawn.
    page.wait_for_selector("#warnings >> text=step 2")
    warning = page.locator("#warnings")
    assert warning.is_visible() and "malformed" in warning.inner_text()
    watched.assert_clean()


def test_malformed_step_shows_its_bad_lines_in_the_warning_bar(broken_server, watched):
    page = watched.open(f"{broken_server.url}#train/1/0")
    page.wait_for_selector(f"#step-stats >> text={BROKEN_EPISODES} episodes")
    page.wait_for_selector("#slot-A .ep-head")
    bar = page.locator("#warnings")
    assert bar.is_visible()
    text = bar.inner_text()
    shown = {
        int(m.group(1)): m.group(2)
        for m in re.finditer(r"step_000001\.jsonl:(\d+): skipped a malformed record: (.*)", text)
    }
    assert [
        (line, reason) for line, reason in broken_warnings() if reason in shown.get(line, "")
    ] == broken_warnings()
    assert "metrics.jsonl:" in text
    # Every valid record is listed and opens, including the one with the unencodable character.
    assert page.locator("#episodes .chip").count() == BROKEN_EPISODES
    page.click("#episodes .chip[data-i='3']")
    page.wait_for_selector("#slot-A .obs >> text=lone ? surrogate")
    watched.assert_clean()


def test_export_of_a_malformed_run_shows_the_skipped_lines_offline(broken_run, browser, tmp_path):
    out = export_html(broken_run, tmp_path / "broken.html")
    w = Watched(browser, offline=True)
    page = w.open(out.as_uri())
    page.select_option("#step", "2")  # another step: the list comes from the export's own index
    page.wait_for_selector("#step-stats >> text=16 episodes")
    text = page.locator("#warnings").inner_text()
    assert "leaves out records" in text and "step_000001.jsonl:4: skipped a malformed record" in text
    w.assert_clean()
    w.context.close()


def test_filters_sort_and_group_view(server, watched):
    page = watched.open(f"{server.url}#train/3/0")
    page.wait_for_selector("#step-stats >> text=16 episodes")
    assert page.locator("#episodes .group").count() == 4
    page.select_option("#f-env", "countdown")
    assert set(page.locator("#episodes .chip").evaluate_all("cs => cs.map(c => c.dataset.env)")) == {
        "countdown"
    }
    page.select_option("#f-success", "1")
    assert page.locator("#episodes .chip.fail").count() == 0
    page.select_option("#f-env", "")
    page.select_option("#f-success", "")
    page.fill("#f-rmin", "5")
    rewards = page.locator("#episodes .chip .r").all_inner_texts()
    assert rewards and all(float(r) >= 5 for r in rewards)
    page.fill("#f-rmin", "")
    page.select_option("#f-view", "list")
    page.select_option("#f-sort", "-reward")
    rewards = [float(r) for r in page.locator("#episodes .chip .r").all_inner_texts()]
    assert len(rewards) == 16 and rewards == sorted(rewards, reverse=True)
    watched.assert_clean()


def test_compare_two_episodes_and_two_steps(server, watched):
    page = watched.open(f"{server.url}#train/1/0")
    page.wait_for_selector("#slot-A .ep-head")
    page.check("#compare")
    page.click("#episodes .chip[data-i='1']")  # goes to B once A is filled
    page.wait_for_selector("#slot-B .ep-head")
    assert page.locator("#slot-A .slot-name").inner_text() == "A"
    page.click("#tab-steps")
    assert not page.locator("#pane-episode").is_visible()
    page.select_option("#cmp-a", "eval:0")
    page.select_option("#cmp-b", "eval:3")
    page.click("#cmp-go")
    page.wait_for_selector("#cmp-out table.cmp")
    assert "4 seeds in both steps" in page.locator("#cmp-out").inner_text()
    page.locator("#cmp-out table.cmp tr:nth-child(2) td:nth-child(4) .chip").first.click()
    page.wait_for_selector("#slot-B .ep-title >> text=eval step 3")
    watched.assert_clean()


def test_export_opens_offline_and_shows_the_same_episode(server, run_dir, browser, tmp_path):
    out = export_html(run_dir, tmp_path / "run.html")
    i = xss_episode(run_dir, "alert(1)")
    served = Watched(browser)
    served.open(f"{server.url}#train/1/{i}").wait_for_selector("#slot-A .ep-title")
    title = served.page.locator("#slot-A .ep-title").inner_text()
    reply = served.page.locator("#slot-A .reply").inner_text()
    served.context.close()

    w = Watched(browser, offline=True)
    page = w.open(f"{out.as_uri()}#train/1/{i}")
    page.wait_for_selector("#slot-A .ep-title")
    assert page.locator("#slot-A .ep-title").inner_text() == title
    assert page.locator("#slot-A .reply").inner_text() == reply
    assert "exported file" in page.locator("#status").inner_text()
    k = find_episode(run_dir, 3, lambda e: e["env"] == "sokoban")
    page.select_option("#step", "3")
    page.wait_for_selector("#step-stats >> text=16 episodes")
    page.click(f"#episodes .chip[data-i='{k}']")
    page.wait_for_selector("#slot-A canvas.board")
    assert board_pixels(page) > 4
    assert all(u.startswith(("file:", "data:", "about:")) for u in w.requests), w.requests
    w.assert_clean()
    w.context.close()


def test_new_steps_appear_while_the_page_is_open(server, run_dir, watched):
    page = watched.open(server.url)
    assert page.locator("#step option[value='4']").count() == 0
    shutil.copy(run_dir / "trajectories/step_000003.jsonl", run_dir / "trajectories/step_000004.jsonl")
    try:
        page.wait_for_selector("#step option[value='4']", state="attached", timeout=8000)
        assert "live" in page.locator("#status").inner_text()
    finally:
        (run_dir / "trajectories/step_000004.jsonl").unlink()
    watched.assert_clean()


def test_collapse_and_drop_warnings_from_the_trainer_show_on_the_page(run_dir, browser, tmp_path):
    import json
    import shutil

    run = tmp_path / "collapsing"
    shutil.copytree(run_dir, run)
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the fixture's deliberately cut line
    rows[1]["collapse/warning"] = 1.0
    # A held-out drop from the best evaluation (the trainer's eval/drop_from_best) warns too.
    rows[-1].update({"eval/drop_from_best": 1.0, "eval/best_step": 1.0})
    rows[-1].update({"eval/lost_since_best": 7.0, "eval/gained_since_best": 0.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = export_html(run, tmp_path / "collapsing.html")
    w = Watched(browser, offline=True)
    page = w.open(out.as_uri())
    page.wait_for_selector("#warnings:not([hidden])")
    shown = page.locator("#warnings").inner_text()
    assert f"Collapse warning at step {rows[1]['step']}" in shown
    assert f"Held-out drop at step {rows[-1]['step']}: 7 puzzles lost and 0 gained against step 1" in shown
    w.context.close()


def test_curriculum_stage_limits_show_on_the_page(run_dir, browser, tmp_path):
    """A staged-context run logs its stage's limits; the page draws the reply budget over the response
    length and adds a chart of the limits (a run without them keeps its four charts)."""
    import json
    import shutil

    run = tmp_path / "staged"
    shutil.copytree(run_dir, run)
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # the fixture's deliberately cut line
    for i, row in enumerate(rows):
        row["curriculum/max_new_tokens"] = 64.0 if i < len(rows) // 2 else 128.0
        row["curriculum/max_context_tokens"] = 512.0 if i < len(rows) // 2 else 768.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = export_html(run, tmp_path / "staged.html")
    w = Watched(browser, offline=True)
    page = w.open(out.as_uri())
    page.wait_for_selector("#charts figure.chart >> nth=4")
    captions = page.locator("#charts figcaption").all_inner_texts()
    assert captions[-1] == "Curriculum stage limits (tokens)" and len(captions) == 5
    length = page.locator("#charts figure.chart").nth(2)
    assert length.locator("polyline.line.limit").count() == 1  # the reply budget over the response length
    assert "stage limit" in length.locator(".legend").inner_text()
    assert page.locator("#charts figure.chart").nth(4).locator("polyline").count() == 2
    w.context.close()
