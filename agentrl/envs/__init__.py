"""Stage 1, the env: the text-env contract (:mod:`~agentrl.envs.env`) and the registry of envs by
name (:mod:`~agentrl.envs.registry`). Light: no torch; imports only :mod:`agentrl.suggest`.

``agentrl.register``, ``agentrl.make`` and ``agentrl.TextEnv`` are the public names of this stage.
"""
