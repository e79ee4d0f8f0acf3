"""The env registry: register/make, string entry points, errors, Gymnasium ids, entry-point plugins."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import gymnasium
import pytest

import agentrl
from agentrl.envs import registry as reg
from agentrl.envs.env import TextEnv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "guess_number"
BUILTINS = {
    "sokoban": "agentrl/Sokoban-v0",
    "countdown": "agentrl/Countdown-v0",
    "knights_knaves": "agentrl/KnightsKnaves-v0",
    "math": "agentrl/Math-v0",
}


@pytest.fixture(autouse=True)
def clean_registries():
    """Each test may register envs: restore agentrl's and Gymnasium's registries afterwards (the
    plugins loaded first, so that the restored registry holds them and nothing loads them again)."""
    reg.load_plugins()
    ours = dict(reg.registry)
    gyms = dict(gymnasium.registry)
    yield
    reg.registry.clear()
    reg.registry.update(ours)
    gymnasium.registry.clear()
    gymnasium.registry.update(gyms)


class EchoEnv(TextEnv):
    """Echo env: says back what it was told.

    Second line of the docstring, not part of the description.
    """

    instructions = "Say anything, for example: hello"
    example_answer = "hello"

    def __init__(self, size: int = 3, word: str = "hi", render_mode: str | None = "ansi"):
        super().__init__(render_mode=render_mode)
        self.size, self.word = size, word

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.word, {"success": False, "action_is_valid": True}

    def step(self, action):
        return action[:10], 0.0, True, False, {"success": True, "action_is_valid": True}

    def render(self):
        return self.word


class OtherEnv(EchoEnv):
    """Another env."""


# --------------------------------------------------------------------------------------------
# register / make
# --------------------------------------------------------------------------------------------


def test_register_class_and_make_with_default_and_overridden_kwargs():
    spec = agentrl.register("echo", EchoEnv, size=5)
    assert spec is agentrl.spec("echo")
    assert "echo" in agentrl.names() and agentrl.names() == sorted(agentrl.names())
    env = agentrl.make("echo")
    assert isinstance(env, EchoEnv) and (env.size, env.word) == (5, "hi")
    env = agentrl.make("echo", size=7, word="yo")
    assert (env.size, env.word) == (7, "yo")
    # overriding at make time does not change the registered defaults
    assert agentrl.spec("echo").kwargs == {"size": 5}
    assert agentrl.make("echo").size == 5


def test_description_defaults_to_the_first_docstring_line_and_can_be_given():
    assert agentrl.register("echo", EchoEnv).description == "Echo env: says back what it was told."
    assert agentrl.register("echo2", EchoEnv, description="Mine.").description == "Mine."
    assert agentrl.register("echo3", f"{__name__}:EchoEnv").description == ""


def test_string_entry_point_is_imported_lazily(tmp_path, monkeypatch):
    (tmp_path / "lazy_env_mod.py").write_text(
        textwrap.dedent(
            """
            from agentrl import TextEnv

            class LazyEnv(TextEnv):
                instructions = "Say ok, for example: ok"

                def __init__(self, level=1):
                    super().__init__()
                    self.level = level

                def reset(self, *, seed=None, options=None):
                    super().reset(seed=seed)
                    return "go", {"success": False, "action_is_valid": True}

                def step(self, action):
                    ok = action == "ok"
                    return "done", float(ok), True, False, {"success": ok, "action_is_valid": True}

                def render(self):
                    return "go"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lazy_env_mod", raising=False)
    agentrl.register("lazy", "lazy_env_mod:LazyEnv", level=2, gym_id="test/Lazy-v0")
    assert "lazy_env_mod" not in sys.modules, "a string entry point must not be imported at register time"
    env = agentrl.make("lazy")
    assert "lazy_env_mod" in sys.modules
    assert type(env).__name__ == "LazyEnv" and env.level == 2
    assert agentrl.make("lazy", level=4).level == 4
    assert gymnasium.make("test/Lazy-v0").unwrapped.level == 2
    assert agentrl.spec("lazy").load() is sys.modules["lazy_env_mod"].LazyEnv


def test_string_entry_point_without_colon_errors_clearly():
    agentrl.register("bad_ep", "no_colon_here")
    with pytest.raises(ValueError, match="module:attr"):
        agentrl.make("bad_ep")


def test_a_factory_function_is_an_entry_point_too():
    agentrl.register("echo_fn", lambda size=1: EchoEnv(size=size * 10), size=2)
    assert agentrl.make("echo_fn").size == 20
    assert agentrl.make("echo_fn", size=3).size == 30


def test_duplicate_registration_is_an_error_unless_override():
    agentrl.register("echo", EchoEnv, size=1)
    with pytest.raises(ValueError, match="already registered.*override=True"):
        agentrl.register("echo", OtherEnv)
    with pytest.raises(ValueError, match="already registered"):
        agentrl.register("echo", EchoEnv, size=2)  # same class, other defaults
    assert type(agentrl.make("echo")) is EchoEnv and agentrl.make("echo").size == 1
    agentrl.register("echo", OtherEnv, override=True)
    assert type(agentrl.make("echo")) is OtherEnv


def test_registering_the_identical_spec_again_is_harmless():
    first = agentrl.register("echo", EchoEnv, size=1)
    again = agentrl.register("echo", EchoEnv, size=1)
    assert again is first and agentrl.make("echo").size == 1
    # the built-ins re-register on every plugin load (e.g. a re-import): no error
    from agentrl_envs import register_builtin_envs

    register_builtin_envs()


def test_builtin_names_cannot_be_taken_silently():
    with pytest.raises(ValueError, match="'sokoban' is already registered"):
        agentrl.register("sokoban", EchoEnv)


@pytest.mark.parametrize("bad", ["", None, 3])
def test_name_must_be_a_non_empty_str(bad):
    with pytest.raises(ValueError, match="non-empty str"):
        agentrl.register(bad, EchoEnv)


# --------------------------------------------------------------------------------------------
# unknown names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, closest",
    [
        ("sokobn", "sokoban"),
        ("Sokoban", "sokoban"),
        ("countdwn", "countdown"),
        ("knights-knaves", "knights_knaves"),
        ("agentrl/Sokobn-v0", "agentrl/Sokoban-v0"),
    ],
)
def test_unknown_name_suggests_the_closest_and_lists_registered(typo, closest):
    with pytest.raises(KeyError) as err:
        agentrl.make(typo)
    msg = err.value.args[0]
    assert f"no env named {typo!r}" in msg
    assert f"Did you mean {closest!r}?" in msg
    for name in BUILTINS:
        assert name in msg
    assert "agentrl.register" in msg


def test_unknown_name_with_nothing_close_has_no_suggestion():
    with pytest.raises(KeyError) as err:
        agentrl.spec("zzzzzzzzzzzz")
    assert "Did you mean" not in err.value.args[0]
    assert "Registered envs: countdown, knights_knaves, math, sokoban" in err.value.args[0]


def test_a_newly_registered_env_is_listed_and_suggested():
    agentrl.register("my_maze", EchoEnv)
    with pytest.raises(KeyError, match="Did you mean 'my_maze'"):
        agentrl.make("my_maz")


# --------------------------------------------------------------------------------------------
# Gymnasium ids
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, gym_id", sorted(BUILTINS.items()))
def test_builtins_have_gymnasium_ids(name, gym_id):
    assert agentrl.spec(name).gym_id == gym_id
    assert gym_id in gymnasium.registry
    genv = gymnasium.make(gym_id)
    ours = agentrl.make(name)
    assert type(genv.unwrapped) is type(ours)
    # make() also takes the Gymnasium id and gives the same env
    assert agentrl.spec(gym_id) is agentrl.spec(name)
    assert type(agentrl.make(gym_id)) is type(ours)
    obs_g, _ = genv.reset(seed=11)
    obs_o, _ = ours.reset(seed=11)
    assert obs_g == obs_o


def test_gym_id_of_a_user_env_and_kwargs_reach_gymnasium():
    agentrl.register("echo", EchoEnv, gym_id="test/Echo-v0", size=4)
    assert gymnasium.make("test/Echo-v0").unwrapped.size == 4
    assert gymnasium.make("test/Echo-v0", size=9).unwrapped.size == 9
    assert agentrl.make("test/Echo-v0", size=8).size == 8


def test_override_rebinds_the_gym_id_too():
    agentrl.register("echo", EchoEnv, gym_id="test/Echo-v0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's "Overriding environment" notice
        agentrl.register("echo", OtherEnv, gym_id="test/Echo-v0", override=True)
    assert type(gymnasium.make("test/Echo-v0").unwrapped) is OtherEnv
    assert type(agentrl.make("test/Echo-v0")) is OtherEnv


def test_a_new_name_cannot_take_another_envs_gym_id():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            agentrl.register("impostor", EchoEnv, gym_id="agentrl/Sokoban-v0")
        except ValueError:
            return  # the fix: refused like a duplicate name
    assert type(gymnasium.make("agentrl/Sokoban-v0").unwrapped) is type(agentrl.make("agentrl/Sokoban-v0"))


def test_override_drops_the_stale_gym_id():
    agentrl.register("echo", EchoEnv, gym_id="test/Echo-v0")
    agentrl.register("echo", OtherEnv, override=True)
    assert "test/Echo-v0" not in gymnasium.registry


def test_asked_for_override_does_not_warn():
    agentrl.register("echo", EchoEnv, gym_id="test/Echo-v0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        agentrl.register("echo", OtherEnv, gym_id="test/Echo-v0", override=True)
    assert not [w for w in caught if "Overriding" in str(w.message)]


# --------------------------------------------------------------------------------------------
# entry-point plugins
# --------------------------------------------------------------------------------------------


def _fake_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution as pip leaves it: modules plus NAME.dist-info with entry_points.txt."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{reg.ENTRY_POINT_GROUP}]\n{lines}")
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))


@pytest.fixture()
def plugin_site(tmp_path, monkeypatch):
    """A folder on sys.path for installed test plugins; their modules are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(site))
    yield site
    importlib.invalidate_caches()
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(site) in sys.modules[name].__file__:
            del sys.modules[name]


@pytest.fixture(scope="session")
def example_install(tmp_path_factory) -> Path:
    """examples/guess_number installed for real with pip into a private target folder (offline).

    Built from a copy, so pip's build/ and egg-info never land in the source tree.
    """
    work = tmp_path_factory.mktemp("guess_number_pkg")
    src = work / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    cmd += ["--disable-pip-version-check", "--quiet", "--target", str(target), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pip could not install the example offline:\n{proc.stdout}\n{proc.stderr}"
    return target


def test_installed_example_package_registers_through_its_entry_point(example_install, monkeypatch):
    dist_infos = list(example_install.glob("agentrl_guess_number-*.dist-info"))
    assert len(dist_infos) == 1
    assert "guess_number = guess_number:register_envs" in (dist_infos[0] / "entry_points.txt").read_text()
    assert "guess_number" not in agentrl.names()
    monkeypatch.syspath_prepend(str(example_install))
    monkeypatch.delitem(sys.modules, "guess_number", raising=False)
    try:
        agentrl.load_plugins(force=True)
        assert "guess_number" in agentrl.names()
        env = agentrl.make("guess_number")
        assert type(env).__module__ == "guess_number"
        assert Path(sys.modules["guess_number"].__file__).parent == example_install
        obs, info = env.reset(seed=0)
        assert env.step(env.oracle_actions()[0])[4]["success"] is True
        assert type(gymnasium.make("guess_number/GuessNumber-v0").unwrapped) is type(env)
        assert all(name in agentrl.names() for name in BUILTINS)
        agentrl.load_plugins(force=True)  # loading twice re-registers the identical spec: fine
    finally:
        sys.modules.pop("guess_number", None)


def test_installed_example_is_found_by_a_fresh_interpreter(example_install):
    code = (
        "import agentrl, gymnasium; "
        "print(agentrl.spec('guess_number').description); "
        "e = gymnasium.make('guess_number/GuessNumber-v0'); e.reset(seed=1); "
        "print(e.step(e.unwrapped.oracle_actions()[0])[4]['success'])"
    )
    env = {**os.environ, "PYTHONPATH": str(example_install)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == [
        "Guess a secret integer from 1 to 20; every wrong guess is answered with higher or lower.",
        "True",
    ]


def test_broken_plugins_warn_and_do_not_break_the_others(plugin_site):
    _fake_dist(
        plugin_site,
        "zz_plugins",
        {
            "raises": "zz_raising_plugin:register_envs",
            "missing_module": "zz_no_such_module:register_envs",
            "missing_attr": "zz_good_plugin:no_such_function",
            "good": "zz_good_plugin:register_envs",
        },
        {
            "zz_raising_plugin": """
                def register_envs():
                    raise RuntimeError("plugin exploded")
                """,
            "zz_good_plugin": f"""
                import agentrl

                def register_envs():
                    agentrl.register("zz_good", "{__name__}:EchoEnv", description="Good plugin.")
                """,
        },
    )
    with pytest.warns(RuntimeWarning) as caught:
        agentrl.load_plugins(force=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    for name in ("raises", "missing_module", "missing_attr"):
        assert any(f"plugin {name!r}" in m for m in messages), (name, messages)
    assert any("plugin exploded" in m for m in messages)
    assert not any("'good'" in m for m in messages)
    assert "zz_good" in agentrl.names()
    assert agentrl.spec("zz_good").description == "Good plugin."
    assert all(name in agentrl.names() for name in BUILTINS)
    assert type(agentrl.make("zz_good")).__name__ == "EchoEnv"


def test_a_plugin_taking_a_builtin_name_warns_and_leaves_the_builtin(plugin_site):
    _fake_dist(
        plugin_site,
        "zz_squatter",
        {"squat": "zz_squatter:register_envs"},
        {
            "zz_squatter": """
                import agentrl
                from agentrl_envs.countdown import CountdownEnv

                def register_envs():
                    agentrl.register("sokoban", CountdownEnv)
                """
        },
    )
    with pytest.warns(RuntimeWarning, match="'squat'.*already registered"):
        agentrl.load_plugins(force=True)
    assert type(agentrl.make("sokoban")).__name__ == "SokobanEnv"


def test_a_plugin_may_be_a_module_that_registers_on_import(plugin_site):
    _fake_dist(
        plugin_site,
        "zz_modplugin",
        {"mod": "zz_module_plugin"},
        {
            "zz_module_plugin": f"""
                import agentrl

                agentrl.register("zz_from_module", "{__name__}:EchoEnv")
                """
        },
    )
    agentrl.load_plugins(force=True)
    assert "zz_from_module" in agentrl.names()


def test_plugins_load_once_unless_forced(plugin_site):
    calls = plugin_site / "calls.txt"
    _fake_dist(
        plugin_site,
        "zz_counter",
        {"count": "zz_counter:register_envs"},
        {
            "zz_counter": f"""
                def register_envs():
                    with open({str(calls)!r}, "a") as f:
                        f.write("x")
                """
        },
    )
    agentrl.load_plugins(force=True)  # the plugins were loaded before this one was installed
    assert calls.read_text() == "x"
    agentrl.load_plugins()
    agentrl.names()
    assert calls.read_text() == "x"
    agentrl.load_plugins(force=True)
    assert calls.read_text() == "xx"


# --------------------------------------------------------------------------------------------
# imports in a fresh interpreter
# --------------------------------------------------------------------------------------------


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, cwd="/"
    )


@pytest.mark.parametrize("first", ["agentrl_envs", "agentrl_envs.sokoban", "agentrl_envs.countdown"])
def test_importing_the_builtin_envs_before_agentrl_is_not_circular(first):
    proc = _fresh(
        f"""
        import {first}
        import agentrl, gymnasium
        assert agentrl.names() == ["countdown", "knights_knaves", "math", "sokoban"], agentrl.names()
        gymnasium.make("agentrl/Sokoban-v0").reset(seed=0)
        agentrl.make("countdown").reset(seed=0)
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_import_agentrl_stays_light():
    proc = _fresh(
        """
        import sys
        import agentrl
        import gymnasium
        for name in agentrl.names():
            env = agentrl.make(name)
            env.reset(seed=0)
        gymnasium.make("agentrl/Sokoban-v0")
        heavy = sorted(m for m in ("torch", "transformers", "deepspeed", "vllm") if m in sys.modules)
        print(heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"import agentrl (and making its envs) imported {proc.stdout.strip()}"
