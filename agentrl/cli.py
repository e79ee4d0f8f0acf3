"""``agentrl train | eval | replay | envs | play``: a thin layer over the modules.

Heavy modules (torch, transformers, deepspeed) are imported inside the commands that need them,
so ``agentrl envs list`` and ``agentrl play`` start instantly.

May import: training, config, algorithms, replay, rollout, envs, models, suggest, seeds (the layers
below it; lint-imports checks).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help="registered env name (see `agentrl envs list`)")
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument(
        "--model",
        help="local HF model folder, a run's checkpoint, or a hub id (default: offline SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set algo.kl.coef=0.001 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentrl", description="Train LLM agents with RL on text environments."
    )
    # DeepSpeed's launcher passes --local_rank=N before the subcommand; the rank is read from the
    # environment (LOCAL_RANK), so the flag is accepted and ignored.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a policy with GRPO")
    _add_run_args(p)
    p.add_argument("--name", help="run name (default: ENV-TIMESTAMP); the run lives in runs/NAME")
    p.add_argument(
        "--resume", action="store_true", help="continue the run named --name from its last checkpoint"
    )
    p.add_argument("--init", help="start from this run's (or folder's) model, e.g. an SFT run")

    p = sub.add_parser("sft", help="warm start: fine-tune on oracle demonstrations or on a run's successes")
    _add_run_args(p)
    p.add_argument("--name", help="run name (default: ENV-TIMESTAMP); the run lives in runs/NAME")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        metavar="RUN_DIR",
        help="learn from the successful episodes of this run (repeatable) instead of the env's oracle",
    )

    p = sub.add_parser("eval", help="evaluate a model on held-out seeds")
    _add_run_args(p)
    p.add_argument("--episodes", type=int, help="number of held-out episodes")
    p.add_argument("--out", help="write the eval trajectories to this folder")

    p = sub.add_parser("replay", help="browse a run's trajectories in a local web viewer")
    p.add_argument("run_dir", help="a run directory (runs/NAME)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument(
        "--export", metavar="FILE.html", help="write one self-contained HTML file instead of serving"
    )
    p.add_argument(
        "--max-mb",
        type=float,
        default=50.0,
        help="with --export: embed full episodes of as many steps as fit in this size (summaries of all)",
    )

    p = sub.add_parser("envs", help="list the registered envs")
    p.add_argument("action", nargs="?", default="list", choices=["list"])

    p = sub.add_parser("play", help="play an env yourself in the terminal")
    p.add_argument("--env", required=True)
    p.add_argument("--seed", type=int, default=None)
    return parser


def _cmd_envs(args: argparse.Namespace) -> int:
    import agentrl

    width = max(len(n) for n in agentrl.names()) if agentrl.names() else 0
    for name in agentrl.names():
        spec = agentrl.spec(name)
        gym_id = f"  [{spec.gym_id}]" if spec.gym_id else ""
        print(f"{name:<{width}}  {spec.summary()}{gym_id}")
    return 0


def _cmd_play(args: argparse.Namespace, stdin=None, stdout=None) -> int:
    import agentrl

    if stdin is None and sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for a person at a terminal)
    stdin = stdin or sys.stdin
    out = stdout or sys.stdout
    env = agentrl.make(args.env)
    obs, info = env.reset(seed=args.seed)
    print(env.instructions, file=out)
    print("\nType an action and press Enter (Ctrl-D or 'quit' to stop).\n", file=out)
    total, turn = 0.0, 0
    while True:
        print(f"--- turn {turn}\n{obs}", file=out)
        print("> ", end="", file=out, flush=True)
        line = stdin.readline()
        if not line or line.strip().lower() in ("quit", "exit"):
            print("\nbye", file=out)
            return 0
        # Several actions per line, joined by || as a model's answer may hold them.
        limit = max(1, getattr(env, "max_actions_per_turn", 1))
        actions = [a.strip() for a in line.rstrip("\n").split("||")] if limit > 1 else [line.rstrip("\n")]
        terminated = truncated = False
        for action in actions[:limit]:
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            valid = "" if info.get("action_is_valid", True) else " (invalid action)"
            if info.get("moved_player") is False and info.get("action_is_valid", True):
                valid = " (blocked: nothing moved)"
            print(f"{action[:40]}: reward {reward:+.2f}{valid}, return {total:+.2f}", file=out)
            if terminated or truncated:
                break
        turn += 1
        if terminated or truncated:
            print(
                f"--- end: {'success' if info.get('success') else 'failure'}, return {total:+.2f}\n{obs}",
                file=out,
            )
            return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    started = time.monotonic()  # run.time_budget_min counts from here

    from agentrl.config import ConfigError, load_config
    from agentrl.training.trainer import train
    from agentrl.training.warm_start import train_with_warm_start

    if args.resume and not args.name:
        raise ConfigError("--resume needs --name NAME: the run in runs/NAME to continue")

    def build(config_file):
        return load_config(
            config_file=config_file,
            env=args.env,
            model=args.model,
            overrides=args.overrides,
            name=args.name,
            init=args.init,
        )

    cfg = build(args.config)
    saved = Path(cfg.run.root) / cfg.run.name / "config.yaml"
    if args.resume and not args.config and saved.is_file():
        # Resume with the run's own resolved config; command-line overrides still apply on top.
        cfg = build(str(saved))
    run = train_with_warm_start if cfg.sft.warm_start else train
    with _no_folder_left_on_failed_start(Path(cfg.run.root) / cfg.run.name, args.resume):
        run(cfg, resume=args.resume, started=started)
    return 0


@contextlib.contextmanager
def _no_folder_left_on_failed_start(run_dir, resume: bool) -> Iterator[None]:
    """If the command fails before its first step, remove the run folder it created (the name stays free)."""
    import os

    fresh = not resume and not run_dir.exists()
    try:
        yield
    except BaseException:
        # Rank 0 wrote the folder; the other ranks leave it to it.
        if fresh and os.environ.get("RANK", "0") == "0":
            from agentrl.training.run import discard_failed_start

            discard_failed_start(run_dir)
        raise


def _cmd_sft(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agentrl.config import load_config
    from agentrl.training.sft import sft

    cfg = load_config(
        config_file=args.config, env=args.env, model=args.model, overrides=args.overrides, name=args.name
    )
    with _no_folder_left_on_failed_start(Path(cfg.run.root) / cfg.run.name, resume=False):
        sft(cfg, sources=args.sources)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from agentrl.config import load_config
    from agentrl.training.evaluate import evaluate_cli

    cfg = load_config(config_file=args.config, env=args.env, model=args.model, overrides=args.overrides)
    return evaluate_cli(cfg, episodes=args.episodes, out=args.out)


def _cmd_replay(args: argparse.Namespace) -> int:
    from agentrl.replay import export_html, serve

    if args.export:
        path = export_html(args.run_dir, args.export, max_bytes=int(args.max_mb * 1e6))
        print(f"wrote {path}")
        return 0
    serve(args.run_dir, host=args.host, port=args.port)
    return 0


COMMANDS = {
    "train": _cmd_train,
    "sft": _cmd_sft,
    "eval": _cmd_eval,
    "replay": _cmd_replay,
    "envs": _cmd_envs,
    "play": _cmd_play,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        _close_process_group()
        return code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `agentrl envs list | head`
        sys.stderr.close()
        return 0
    except (KeyError, ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        # Errors that say what to fix get one line, no traceback; anything else is a bug and keeps its
        # traceback. Matched by name: importing their modules here would import torch just to print.
        if type(exc).__name__ in USER_ERRORS:
            msg = exc.args[0] if exc.args else str(exc)
            print(f"agentrl: error: {msg}", file=sys.stderr)
            return 2
        raise


def _close_process_group() -> None:
    """After a command that ran on a process group (train, sft), destroy it (see close_distributed)."""
    if "agentrl.training.distributed" in sys.modules:  # never import torch just to check
        from agentrl.training.distributed import close_distributed

        close_distributed()


#: Exceptions whose message is for the user: bad config, unknown env, missing or unusable model,
#: unusable template, no run directory to replay, an engine that does not start, hangs, or was
#: not given the trained weights.
USER_ERRORS = (
    "ConfigError",
    "UnknownEnvError",
    "ModelNotFoundError",
    "UnusableModelError",
    "TemplateError",
    "RunNotFoundError",
    "EngineStartError",
    "EngineTimeout",
    "WeightSyncError",
)
