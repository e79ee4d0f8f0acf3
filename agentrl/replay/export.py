"""``agentrl replay RUN --export FILE.html``: the viewer as one self-contained, offline HTML file.

The page, its CSS and JS are inlined, and the run's data is embedded as the same JSON the server's
routes return, inside ``<script type="application/json">`` with ``<``, ``>``, ``&`` and U+2028/9
escaped, so no string in it can close the tag. A Content-Security-Policy meta tag allows only the
page's own script (by hash) and no network at all.

Size: metrics, config and every step's episode summaries are always embedded (a few hundred bytes
per episode). Full episodes (turns and tokens) are embedded step by step until ``max_bytes`` is
spent, choosing steps spread over the run (last, first, middle, quarters, ...) and alternating
train and eval, so a long run still exports to a file a browser opens quickly; the page says which
steps it holds in full.

Records the reader skipped (malformed lines) are left out and listed in the page's warning bar from
the start, each as ``split step N: FILE:LINE: skipped a malformed record: FIELD: REASON``.

May import: agentrl.replay.data and .server; light (no torch).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

from agentrl.replay.data import MAX_WARNINGS_PER_FILE, SPLITS, RunData, capped, dumps
from agentrl.replay.server import STATIC_DIR

#: Default budget for full episode data in one export (bytes of JSON).
DEFAULT_MAX_BYTES = 50_000_000

_SCRIPT_SAFE = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def script_safe_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (the escapes are valid inside JSON strings)."""
    text = dumps(obj)
    for char, escape in _SCRIPT_SAFE:  # str.replace is ~10x faster than str.translate on big text
        text = text.replace(char, escape)
    return text


def spread(steps: list[int]) -> list[int]:
    """``steps`` reordered so every prefix covers the run evenly: last, first, then bisections."""
    if not steps:
        return []
    order = [len(steps) - 1, 0]
    intervals = [(0, len(steps) - 1)]
    while intervals:
        nxt = []
        for lo, hi in intervals:
            if hi - lo > 1:
                mid = (lo + hi) // 2
                order.append(mid)
                nxt += [(lo, mid), (mid, hi)]
        intervals = nxt
    seen: set[int] = set()
    return [steps[i] for i in order if not (i in seen or seen.add(i))]


def _priority(splits: dict[str, list[int]]) -> list[tuple[str, int]]:
    orders = {split: spread(steps) for split, steps in splits.items()}
    out: list[tuple[str, int]] = []
    for k in range(max((len(o) for o in orders.values()), default=0)):
        out += [(split, o[k]) for split, o in orders.items() if k < len(o)]
    return out


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _inline(text: str, closing: str, name: str) -> str:
    # An asset that contained its own closing tag would end the element early in the export.
    if closing in text.lower() or "<!--" in text:
        raise ValueError(f"{name} contains {closing!r} or '<!--' and cannot be inlined")
    return text


def export_html(
    run_dir: str | os.PathLike, out_path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES
) -> Path:
    """Write the viewer for ``run_dir`` with its data to ``out_path``; return the path written."""
    data = RunData(run_dir, cache_steps=1)
    index = data.index()
    all_steps = [(split, step) for split in SPLITS for step in index["splits"][split]]

    summaries: dict[tuple[str, int], str] = {}
    full: dict[tuple[str, int], str] = {}
    spent = 0
    # One pass in priority order: each step file is read once; its full episodes are kept while
    # they fit the budget (a later, smaller step may still fit after a large one did not).
    skipped: dict[tuple[str, int], list[str]] = {}
    for key in _priority(index["splits"]):
        summary = data.step(*key)
        skipped[key] = summary["warnings"]
        summaries[key] = script_safe_json(summary)
        # The file's size predicts its JSON's: skip serialising steps that cannot fit.
        if spent + 0.8 * data.file_size(*key) > max_bytes:
            continue
        blob = script_safe_json(data.episodes(*key))
        if spent + len(blob) <= max_bytes:
            full[key] = blob
            spent += len(blob)

    partial = [f"{s} {n}" for s, n in all_steps if (s, n) not in full]
    index["export"] = {
        "full_steps": len(full),
        "steps": len(all_steps),
        "max_bytes": max_bytes,
    }
    # Skipped records are named up front, not only when their step is opened: the reader of an
    # export cannot open the run to find out what is missing from it.
    problems = [w for split, step in all_steps for w in skipped[(split, step)]]
    if problems:
        index["warnings"].append(
            "this export leaves out records the reader could not use (each step's valid records are in):"
        )
        index["warnings"] += capped(problems, 2 * MAX_WARNINGS_PER_FILE)
    if partial:
        shown = ", ".join(partial[:12]) + (" ..." if len(partial) > 12 else "")
        index["warnings"].append(
            f"this export holds full episodes (turns, tokens) for {len(full)} of {len(all_steps)} steps "
            f"(size budget {max_bytes / 1e6:.0f} MB); summaries only for: {shown}. "
            "Open the run with `agentrl replay RUN` to see them all."
        )

    steps_json = ",".join(
        f'"{split}:{step}":{{"summary":{summaries[(split, step)]},"episodes":{full.get((split, step), "null")}}}'
        for split, step in all_steps
    )
    payload = (
        f'{{"index":{script_safe_json(index)},"metrics":{script_safe_json(data.metrics())},'
        f'"config":{script_safe_json(data.config())},"steps":{{{steps_json}}}}}'
    )

    css = _inline((STATIC_DIR / "app.css").read_text(encoding="utf-8"), "</style", "app.css")
    js = _inline((STATIC_DIR / "app.js").read_text(encoding="utf-8"), "</script", "app.js")
    csp = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    replacements = {
        "<!--CSP-->": f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
        '<link rel="stylesheet" href="/static/app.css">': f"<style>{css}</style>",
        '<script src="/static/app.js"></script>': (
            f'<script type="application/json" id="agentrl-data">{payload}</script>\n<script>{js}</script>'
        ),
    }
    # The data goes in last, so no later marker search runs over (untrusted) data.
    for marker, text in replacements.items():
        if marker not in page:
            raise ValueError(f"index.html lacks {marker!r}; the export cannot inline the page")
        page = page.replace(marker, text, 1)

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8", errors="replace")  # lone surrogates in the data: "?"
    os.replace(tmp, out)
    return out
