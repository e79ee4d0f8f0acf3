"""Every ``--set KEY=VALUE`` shown to a user loads, every ``agentrl ...`` command shown parses (and
its ``--config``, ``--env`` and ``--set`` load), and every config key is read by something.

The examples come from ``agentrl train --help``, ``agentrl sft --help``, README.md and docs/*.md
(and the ``--set``s of scripts/*.sh);
each is loaded with :func:`agentrl.config.load_config` in the context its command gives it (its
``--config`` or ``--env``, else the recipe the page last named, else Sokoban; where it fails alone,
with the other ``--set``s of its line). Placeholders
(``KEY=VALUE``, ``NAME``, shell variables, ``...``) are skipped; ``a|b`` values are tried one by one.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import re
import shlex
import typing
from pathlib import Path

import pytest

import agentrl
from agentrl.cli import build_parser, main
from agentrl.config import Config, ConfigError, load_config
from agentrl.rollout.manager import RolloutConfig

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Shell scripts: their ``--set``s are checked, not their commands (shell variables in them). The
#: overrides of scripts/gpu_check.sh only ever run on a GPU machine: a misspelt key would wait for one.
SCRIPT_FILES = sorted((ROOT / "scripts").glob("*.sh"))

_SET = re.compile(r"--set[ =]+([A-Za-z_][\w.\[\]]*)=([^\s`'\"]+)")
_CONFIG = re.compile(r"--config[ =]+(\S+\.ya?ml)")
_ENV = re.compile(r"--env[ =]+([\w:.-]+)")
_RECIPE = re.compile(r"\bconfigs/[\w.-]+\.ya?ml\b")


@dataclasses.dataclass(frozen=True)
class Example:
    where: str
    key: str
    value: str
    config: str | None
    env: str | None
    others: tuple[str, ...] = ()
    """The other ``--set``s of its line, loaded with it where it fails alone
    (``eval.samples_per_seed=4`` is only valid beside ``eval.greedy=false``)."""


def _is_placeholder(key: str, value: str) -> bool:
    caps = re.compile(r"\b[A-Z]{2,}\b")  # KEY, VALUE, NAME, PATH
    return bool(caps.search(key) or caps.search(value) or "$" in value or "..." in value or "<" in value)


def extract(text: str, where: str) -> list[Example]:
    """The ``--set`` examples of ``text`` with their context; a command's continuation lines count as one."""
    found, recipe, pending, first = [], None, [], 1
    for number, physical in enumerate(text.splitlines(), 1):
        if not pending:
            first = number
        pending.append(physical.rstrip().removesuffix("\\"))
        if physical.rstrip().endswith("\\"):
            continue
        line, pending = " ".join(pending), []
        sets = [(k, v.rstrip(").,;:")) for k, v in _SET.findall(line) if not _is_placeholder(k, v)]
        for i, (key, value) in enumerate(sets):
            config = _CONFIG.search(line)
            env = _ENV.search(line)
            config_file = config.group(1) if config else (None if env else recipe)
            others = tuple(f"{k}={v.split('|')[0]}" for j, (k, v) in enumerate(sets) if j != i)
            found.append(
                Example(f"{where}:{first}", key, value, config_file, env.group(1) if env else None, others)
            )
        recipes = _RECIPE.findall(line)
        if recipes:
            recipe = recipes[-1]
    return found


def load_example(example: Example) -> None:
    """Load each alternative of the example's value in its context; ConfigError if one does not load."""
    env = example.env if example.env in agentrl.names() else None
    config_file = None
    if example.config and (ROOT / example.config).is_file():
        config_file = str(ROOT / example.config)
    if config_file is None and env is None:
        env = "sokoban"
    for value in example.value.split("|"):
        override = f"{example.key}={value}"
        try:
            load_config(config_file=config_file, env=env, overrides=[override])
        except ConfigError:
            if not example.others:
                raise
            # An override valid only beside another of its command (a prose line may also hold
            # unrelated ones, so alone first).
            load_config(config_file=config_file, env=env, overrides=[*example.others, override])


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # one line, however argparse wrapped it


def _doc_examples() -> list[Example]:
    out = []
    for path in [*DOC_FILES, *SCRIPT_FILES]:
        out += extract(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return out


def test_the_docs_show_overrides():
    examples = _doc_examples()
    assert len(examples) >= 20, examples  # the extraction finds them (not a test that passes on nothing)
    assert any(e.key == "algo.kl.coef" for e in examples)


@pytest.mark.parametrize("example", _doc_examples(), ids=lambda e: f"{e.where}:{e.key}")
def test_doc_override_loads(example):
    load_example(example)


@pytest.mark.parametrize("command", ["train", "sft"])
def test_help_overrides_load(command, capsys):
    examples = extract(_help(command, capsys), f"agentrl {command} --help")
    assert examples, "the --set help shows an example"
    for example in examples:
        load_example(example)


def test_a_wrong_key_in_an_example_fails():
    text = "run `agentrl train --env countdown --set algo.kl_coef=0.001` (the old --help)\n"
    [example] = extract(text, "negative")
    assert (example.key, example.value, example.env) == ("algo.kl_coef", "0.001", "countdown")
    with pytest.raises(ConfigError, match="unknown config key algo.kl_coef"):
        load_example(example)
    # the format penalty lives in rollout:, and the message says so
    [example] = extract("--set algo.shaping.format_penalty=-1", "negative")
    with pytest.raises(ConfigError, match="rollout.format_penalty"):
        load_example(example)
    # the last recipe a page names is the context, and a stage index must exist there
    text = "```yaml\n# configs/logic_rl_kk.yaml\n```\n`--set curriculum.stages.2.lr=5e-8`, `--set curriculum.stages.7.lr=1`"
    ok, missing = extract(text, "negative")
    assert ok.config == "configs/logic_rl_kk.yaml"
    load_example(ok)
    with pytest.raises(ConfigError):
        load_example(missing)
    # an override valid only beside another of its line loads there, and fails alone
    text = "`agentrl eval --set eval.greedy=false --set eval.samples_per_seed=4`"
    load_example(extract(text, "pair")[1])
    [alone] = extract("`agentrl eval --set eval.samples_per_seed=4`", "negative")
    with pytest.raises(ConfigError, match="eval.greedy=false"):
        load_example(alone)


# ------------------------------------------------------------------------------------------------
# Every `agentrl ...` command of the docs and of --help parses, and its config loads
# ------------------------------------------------------------------------------------------------

_COMMAND = re.compile(r"\bagentrl (?:train|sft|eval|replay|envs|play)\b[^`#|(\n]*")


def extract_commands(text: str, where: str) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every ``agentrl SUBCOMMAND ...`` of ``text`` (continuation lines joined;
    up to a backtick, a ``#`` comment, a ``|`` or a parenthesis). A command with a placeholder
    (``...``, ``NAME``-style capitals, a shell variable) is kept: argparse must still take it."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for match in _COMMAND.finditer(joined):
        argv = _words(match.group(0))[1:]
        if argv[-1:] in (["--from"], ["--env"], ["--config"]):  # the option named in prose
            continue
        line = joined.count("\n", 0, match.start()) + 1
        out.append((f"{where}:{line}", argv))
    return out


def _words(command: str) -> list[str]:
    """The shell's words of ``command`` (quotes kept together); plain split where prose has an odd
    apostrophe."""
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _doc_commands() -> list[tuple[str, list[str]]]:
    out = []
    for path in DOC_FILES:
        out += extract_commands(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return out


def test_the_docs_show_commands():
    commands = [argv[0] for _, argv in _doc_commands()]
    assert {"train", "sft", "eval", "replay", "envs", "play"} <= set(commands), commands


@pytest.mark.parametrize(("where", "argv"), _doc_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_doc_command_parses_and_its_config_loads(where, argv):
    args = build_parser().parse_args(argv)  # SystemExit (argparse's usage error) fails the test
    if args.command not in ("train", "sft", "eval") or "..." in argv:
        return
    env = args.env if args.env in agentrl.names() else None
    config_file = str(ROOT / args.config) if args.config and (ROOT / args.config).is_file() else None
    overrides = [o for o in args.overrides if not _is_placeholder(*o.partition("=")[::2])]
    load_config(config_file=config_file, env=env or (None if config_file else "sokoban"), overrides=overrides)


def test_a_wrong_option_in_a_command_fails():
    [(_, argv)] = extract_commands("run `agentrl train --env sokoban --step 3`", "negative")
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_placeholders_are_skipped():
    text = "--set env.kwargs.KEY=VALUE --set run.root=$RUNS --set run.name=NAME --set train.steps=..."
    assert extract(text, "placeholders") == []


# ------------------------------------------------------------------------------------------------
# Every config key is read outside config.py
# ------------------------------------------------------------------------------------------------


def config_keys(root: type = Config, prefix: str = "") -> list[tuple[str, type]]:
    """``(dotted key, the dataclass that holds it)`` for every field of the config tree."""
    out = []
    hints = typing.get_type_hints(root)
    for f in dataclasses.fields(root):
        key = prefix + f.name
        out.append((key, root))
        tp = hints[f.name]
        for inner in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(inner):
                out += config_keys(inner, key + ".")
    return out


def attributes_read(package: Path = ROOT / "agentrl") -> dict[str, set[str]]:
    """Module name -> the attribute names its code reads (``x.name``; docstrings and comments do not
    count), for every module of the package but config.py (where ``validate`` reads them all)."""
    out = {}
    for path in package.rglob("*.py"):
        if path.name == "config.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        out[module] = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    return out


def unread_keys(keys: list[tuple[str, type]], attrs: dict[str, set[str]]) -> list[str]:
    """Keys whose name no module reads. A name that several sections share (``temperature``,
    ``lr``...) counts as read only in a module that also reads its section (``.eval``, ``.stages``)
    or that defines its dataclass (rollout.py reads ``RolloutConfig`` through ``self.config``)."""
    shared = collections.Counter(key.rsplit(".", 1)[-1] for key, _ in keys)
    unread = []
    for key, holder in keys:
        parts = key.split(".")
        readers = [m for m, names in attrs.items() if parts[-1] in names]
        if shared[parts[-1]] > 1 and len(parts) > 1:
            readers = [m for m in readers if parts[-2] in attrs[m] or m == holder.__module__]
        if not readers:
            unread.append(key)
    return unread


def test_every_config_key_is_read():
    assert unread_keys(config_keys(), attributes_read()) == []


@dataclasses.dataclass
class OldShaping:  # algo.shaping.format_penalty before issue 13: documented, never read
    format_penalty: float = -0.1
    length_weight: float = 0.0


@dataclasses.dataclass
class OldAlgo:
    shaping: OldShaping = dataclasses.field(default_factory=OldShaping)
    never_read_anywhere_xyz: int = 0


@dataclasses.dataclass
class OldRoot:
    algo: OldAlgo = dataclasses.field(default_factory=OldAlgo)


def test_an_unread_key_is_found():
    keys = config_keys(OldRoot) + [("rollout.format_penalty", RolloutConfig)]
    unread = unread_keys(keys, attributes_read())
    assert unread == ["algo.shaping.format_penalty", "algo.never_read_anywhere_xyz"]


# ------------------------------------------------------------------------------------------------
# docs/metrics.md names every metric the code logs
# ------------------------------------------------------------------------------------------------

_PREFIXES = "train|eval|timing|perf|engine|collapse|curriculum|sft|behaviour"


def logged_metric_names() -> list[tuple[str, ...]]:
    """The metric names agentrl's code writes, each as its possible spellings: literals
    (``"timing/rollout_s"``), the rollout metrics under either prefix (``f"{prefix}/reward"``: train
    or eval), the curriculum limits, the end reasons, and the loss functions' keys (``train/{k}`` in
    update.py), found by calling the loss functions on a tiny batch."""
    import torch

    from agentrl.algorithms.losses import POLICY_LOSSES, LossTotals, PolicyLossParams, truncated_is_weights
    from agentrl.rollout.manager import PER_CALL_SETTINGS
    from agentrl.rollout.trajectory import END_REASONS

    names: set[tuple[str, ...]] = set()
    for path in (ROOT / "agentrl").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        names |= {(n,) for n in re.findall(rf"[\"']((?:{_PREFIXES})/[A-Za-z0-9_@]+)[\"']", text)}
        names |= {(f"train/{n}", f"eval/{n}") for n in re.findall(r"f\"\{prefix\}/([A-Za-z0-9_@]+)\"", text)}
        behaviour = re.findall(r"f\"behaviour/\{prefix\}_([A-Za-z0-9_]+)\"", text)
        names |= {(f"behaviour/train_{n}", f"behaviour/eval_{n}") for n in behaviour}
    names |= {(f"curriculum/{k}",) for k in PER_CALL_SETTINGS}
    logp, old, adv, mask = torch.zeros(1, 4), torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4)
    for fn in POLICY_LOSSES.values():
        metrics = fn(logp, old, adv, mask, LossTotals(4, 1, 4), PolicyLossParams())[1]
        names |= {(f"train/{k}",) for k in metrics}
    names |= {(f"train/{k}",) for k in truncated_is_weights(logp, old, mask, 2.0)[1]}
    return sorted(names) + [(f"`{reason}`",) for reason in END_REASONS]  # train/end_REASON_rate


def test_the_metrics_table_names_every_logged_metric():
    table = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    names = logged_metric_names()
    flat = {n for spellings in names for n in spellings}
    assert {"train/policy_loss", "train/clip_fraction_high", "eval/success_ci_low", "sft/nll"} <= flat
    assert len(names) > 50
    missing = [s for s in names if not any(n in table if n.startswith("`") else f"`{n}`" in table for n in s)]
    assert missing == [], "add these to docs/metrics.md"
