"""agentrl: train LLM agents with reinforcement learning on multi-turn text environments.

``import agentrl`` stays light (no torch): the env layer, the registry and the trajectory format.

May import: agentrl.envs and agentrl.rollout.trajectory only (the public API; no torch).
"""

from agentrl.envs.env import TextEnv, check_env, text_space
from agentrl.envs.registry import EnvSpec, load_plugins, make, names, register, spec
from agentrl.rollout.trajectory import Sample, Trajectory, Turn

__version__ = "0.1.0"

__all__ = [
    "EnvSpec",
    "Sample",
    "TextEnv",
    "Trajectory",
    "Turn",
    "check_env",
    "load_plugins",
    "make",
    "names",
    "register",
    "spec",
    "text_space",
]

# Register the installed envs (built-in and plugins) now, so `gymnasium.make("agentrl/Sokoban-v0")`
# works right after `import agentrl`. Entry points are strings: no env module is imported yet.
load_plugins()
