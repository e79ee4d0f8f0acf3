"""Stage 2, the rollout: play groups of episodes with an engine and record them as trajectories.

- :mod:`~agentrl.rollout.manager`: ``RolloutManager``, batched multi-turn play, action parsing, masks;
- :mod:`~agentrl.rollout.chat`: chat templating at the token level;
- :mod:`~agentrl.rollout.trajectory`: ``Trajectory``, ``Turn``, ``Sample`` and their JSONL form
  (the run folder's trajectory files, read by the replay viewer);
- :mod:`~agentrl.rollout.engines`: the ``Engine`` protocol and its registry (``hf``, ``vllm``);
- :mod:`~agentrl.rollout.logprobs`: ``token_logprobs``, the one definition of a token's log-prob;
- :mod:`~agentrl.rollout.weight_sync`: push new weights into an engine and check they arrived.

May import: :mod:`agentrl.envs`, :mod:`agentrl.models`, :mod:`agentrl.suggest`. This file imports
nothing, so ``agentrl.rollout.trajectory`` stays light (no torch) for the replay viewer.
"""
