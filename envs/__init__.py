"""agentrl's built-in envs, installed as the package ``agentrl_envs``.

They use only agentrl's public API and are registered exactly as a third-party env is: this
function is the target of the ``agentrl.envs`` entry point in pyproject.toml.
"""


def register_builtin_envs() -> None:
    # Imported here, not at module top: importing agentrl_envs before agentrl must not be circular.
    from agentrl import register

    register(
        "sokoban",
        "agentrl_envs.sokoban:SokobanEnv",
        gym_id="agentrl/Sokoban-v0",
        description="Push every box onto a target in a small grid room (multi-turn; gym-sokoban rooms).",
    )
    register(
        "countdown",
        "agentrl_envs.countdown:CountdownEnv",
        gym_id="agentrl/Countdown-v0",
        description="Reach the target with + - * / over the given numbers, each used once (TinyZero).",
    )
    register(
        "knights_knaves",
        "agentrl_envs.knights_knaves:KnightsKnavesEnv",
        gym_id="agentrl/KnightsKnaves-v0",
        description="Decide who is a knight (always truthful) and who a knave (always lies) (Logic-RL).",
    )
    register(
        "math",
        "agentrl_envs.math_env:MathEnv",
        gym_id="agentrl/Math-v0",
        description="Solve a math problem in one step; the answer is checked with math-verify (R1-Zero).",
    )
