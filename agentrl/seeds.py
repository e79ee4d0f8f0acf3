"""Every seed agentrl derives from the config's, in one place: which env seeds a step, an evaluation
or the SFT demonstrations play, and which sampling, shuffling and process seeds go with them.

The constants are arbitrary but fixed: changing one changes every run's episodes (and so its
learning curve), which is why they live here with their reasons and nowhere else. Pure integer
functions; imports nothing, so any module may use it.
"""

from __future__ import annotations

#: Multiplier of the run seed in the step's sampling seed (a large prime: steps and run seeds do not collide).
STEP_SEED_MULTIPLIER = 1_000_003
#: Multiplier of the step in the step's sampling seed.
STEP_SEED_STRIDE = 101
#: Multiplier of the env seed (per-episode sampling seed, format example) and of the run seed (update shuffle).
ENV_SEED_MULTIPLIER = 7_919
#: Multiplier of an episode's place in its group in its sampling seed.
GROUP_INDEX_STRIDE = 131
#: Offset of the evaluation's sampling seed from the run seed (evaluation never samples like step 0).
EVAL_SEED_OFFSET = 17
#: Offset of the format example's seed (``rollout.vary_format_example``) within an env seed's stream.
FORMAT_EXAMPLE_OFFSET = 17


def train_env_seeds(train_seed_start: int, n_groups: int, step: int, groups: range) -> list[int]:
    """The env seeds of training step ``step`` (from 1) for the group indices ``groups`` (a rank's
    share): ``train_seed_start + (step - 1) * n_groups + g``, so no two steps share a puzzle."""
    base = train_seed_start + (step - 1) * n_groups
    return [base + g for g in groups]


def eval_env_seeds(eval_seed_start: int, episodes: int) -> list[int]:
    """The held-out env seeds: ``eval_seed_start ..``, below the training seeds (the config checks)."""
    return [eval_seed_start + i for i in range(episodes)]


def demonstration_env_seeds(train_seed_start: int, episodes: int) -> list[int]:
    """The env seeds of SFT's oracle demonstrations: training seeds, never held-out ones."""
    return [train_seed_start + i for i in range(episodes)]


def step_sampling_seed(seed: int, step: int) -> int:
    """The sampling seed of training step ``step``, the same on every rank (episodes derive theirs
    from it, so N ranks sample what 1 rank would)."""
    return seed * STEP_SEED_MULTIPLIER + step * STEP_SEED_STRIDE


def eval_sampling_seed(seed: int) -> int:
    """The sampling seed of every evaluation (sampled evaluation: the same draws at each step)."""
    return seed + EVAL_SEED_OFFSET


def episode_sampling_seed(sampling_seed: int, env_seed: int, index_in_group: int, turn: int) -> int:
    """The sampling seed of one episode's turn: a function of the call's seed, the env seed, the
    episode's place in its group and the turn only, so it does not depend on batch composition
    (1 rank or N, which episodes are still alive)."""
    mixed = sampling_seed * STEP_SEED_MULTIPLIER + env_seed * ENV_SEED_MULTIPLIER
    return (mixed + index_in_group * GROUP_INDEX_STRIDE + turn) % (2**63)


def format_example_seed(env_seed: int) -> int:
    """The seed of an episode's reply-format example (the same within a group, which shares the env seed)."""
    return env_seed * ENV_SEED_MULTIPLIER + FORMAT_EXAMPLE_OFFSET


def update_shuffle_seed(seed: int, step: int) -> int:
    """The seed of the update's mini-batch shuffle at ``step`` (the same on every rank)."""
    return seed * ENV_SEED_MULTIPLIER + step


def rank_seed(seed: int, rank: int) -> int:
    """The seed of one training process's Python, NumPy and torch generators (each rank its own)."""
    return seed + rank


def sft_order_seed(seed: int) -> int:
    """The seed of the order SFT visits its demonstrations in (a fresh shuffle each epoch from it)."""
    return seed


def engine_rank_seed(seed: int, rank: int, tensor_parallel_size: int) -> int:
    """vLLM's seed on ``rank``: the ranks of one tensor-parallel group sample alike, groups differ."""
    return seed + rank // tensor_parallel_size
