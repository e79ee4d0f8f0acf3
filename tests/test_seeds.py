"""agentrl.seeds: the seed derivations keep their values (a change would change every run's episodes)."""

from __future__ import annotations

from agentrl import seeds


def test_env_seeds_of_train_eval_and_demonstrations():
    assert seeds.train_env_seeds(10000, 8, 1, range(8)) == list(range(10000, 10008))
    assert seeds.train_env_seeds(10000, 8, 3, range(4, 8)) == [10020, 10021, 10022, 10023]  # rank 1 of 2
    assert seeds.eval_env_seeds(0, 3) == [0, 1, 2]
    assert seeds.demonstration_env_seeds(10000, 2) == [10000, 10001]


def test_sampling_seeds_keep_their_values():
    assert seeds.step_sampling_seed(0, 1) == 101
    assert seeds.step_sampling_seed(2, 5) == 2 * 1_000_003 + 5 * 101
    assert seeds.eval_sampling_seed(3) == 20
    assert seeds.episode_sampling_seed(101, 10000, 2, 1) == 101 * 1_000_003 + 10000 * 7_919 + 2 * 131 + 1
    assert 0 <= seeds.episode_sampling_seed(2**62, 2**40, 3, 0) < 2**63
    assert seeds.format_example_seed(5) == 5 * 7_919 + 17
    assert seeds.update_shuffle_seed(1, 4) == 7_919 + 4


def test_process_seeds():
    assert [seeds.rank_seed(7, r) for r in range(3)] == [7, 8, 9]
    assert seeds.sft_order_seed(7) == 7
    assert [seeds.engine_rank_seed(0, r, 2) for r in range(4)] == [0, 0, 1, 1]
