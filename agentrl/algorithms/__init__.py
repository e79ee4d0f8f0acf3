"""Stage 3, credit and losses: pure tensor functions from trajectories to per-token advantages and
from log-probs to a loss.

- :mod:`~agentrl.algorithms.rewards`: reward shaping terms and reasoning-behaviour counts;
- :mod:`~agentrl.algorithms.advantages`: ``TurnBatch`` and the advantage estimators by name;
- :mod:`~agentrl.algorithms.batching`: samples packed into padded micro-batches;
- :mod:`~agentrl.algorithms.losses`: policy losses, aggregations, KL estimators, TIS;
- :mod:`~agentrl.algorithms.collapse`: the collapse guard's signals and decision.

May import: :mod:`agentrl.rollout.trajectory` (the records it reads), :mod:`agentrl.suggest`.
"""
