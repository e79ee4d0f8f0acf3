"""The replay viewer: browse a run's rollouts in a local web page, or export them as one HTML file.

``serve(run_dir)`` starts a local server (see ``server.py``); ``export_html(run_dir, out)`` writes a
self-contained page (see ``export.py``). Both read the run through ``data.RunData``. docs/replay.md.

May import: agentrl.rollout.trajectory only (the records it shows); no torch, transformers, DeepSpeed
or vLLM (import-linter's "stay light" contract).
"""

from agentrl.replay.data import RunData
from agentrl.replay.export import export_html
from agentrl.replay.server import make_server, serve

__all__ = ["RunData", "export_html", "make_server", "serve"]
