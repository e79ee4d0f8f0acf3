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
    i = find_episode(run_dir, 1, lambda e: e["env"] == "sokoban" and e["turns"] >= 3)
    n = RunData(run_dir).step("train", 1)["episodes"][i]["turns"]
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
    # Reply: thinking and answer apart; actions, reward.
    assert page.locator("#slot-A .seg.think").count() + page.locator("#slot-A .seg.answer").count() >= 1
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
    page.wait_for_selector("#slot-A pre.text >> text=onerror")
    assert XSS_OBS in page.locator("#slot-A .obs").inner_text()
    assert re.search(r"⟨\d+⟩", page.locator("#slot-A .tokens").inner_text())
    watched.assert_clean()
    assert XSS_REPLY  # (the fixture's payloads are what this test looked for)


def test_truncated_step_shows_a_warning_and_its_records(server, watched):
    page = watched.open(server.url)
    page.select_option("#step", "2")
    page.wait_for_selector("#step-stats >> text=16 episodes")
    warning = page.locator("#warnings")
    assert warning.is_visible() and "malformed" in warning.inner_text() and "step 2" in warning.inner_text()
    watched.assert_clean()


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


def test_collapse_warnings_from_the_trainer_show_on_the_page(run_dir, browser, tmp_path):
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
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = export_html(run, tmp_path / "collapsing.html")
    w = Watched(browser, offline=True)
    page = w.open(out.as_uri())
    page.wait_for_selector("#warnings:not([hidden])")
    assert f"Collapse warning at step {rows[1]['step']}" in page.locator("#warnings").inner_text()
    w.context.close()
