"""The built-in Sokoban env: contract, seeding, rewards, oracle, hostile input, rendering."""

from __future__ import annotations

import random
import threading
import time

# agentrl before agentrl_envs: importing agentrl_envs first runs agentrl's plugin loader while
# agentrl_envs is half-initialised, and the built-in envs fail to register.
import agentrl  # isort: skip
import gymnasium
import numpy as np
import pytest
from agentrl_envs.sokoban import SokobanEnv, generate_room, orient_room, parse_action, parse_layout
from agentrl_envs.sokoban_solver import ACTIONS, DELTAS, live_squares, solve

from agentrl.envs.env import HOSTILE_ACTIONS

# Two boxes: the one at (1,2) starts on its target, the one at (2,4) is next to the other target.
LAYOUT = """
#######
#P√___#
#___XO#
#######
"""


def test_check_env_passes() -> None:
    agentrl.check_env(lambda: agentrl.make("sokoban"))


def test_registered_under_agentrl_and_gymnasium() -> None:
    env = agentrl.make("sokoban", dim_room=(7, 7), num_boxes=2)
    assert isinstance(env, SokobanEnv)
    obs, info = env.reset(seed=3)
    assert obs.count("\n") == 6 and info["num_boxes"] == 2
    genv = gymnasium.make("agentrl/Sokoban-v0")
    obs, info = genv.reset(seed=3)
    assert obs == agentrl.make("sokoban").reset(seed=3)[0]
    obs, reward, terminated, truncated, info = genv.step("Up")
    assert isinstance(obs, str) and info["action_is_valid"]


def test_same_seed_same_room_and_different_seeds_differ() -> None:
    a, b = SokobanEnv(), SokobanEnv()
    rooms = set()
    for seed in range(12):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert obs_a == obs_b and info_a == info_b
        rooms.add(obs_a)
    assert len(rooms) >= 10
    # A known room pins the generator and the seed derivation across machines and versions.
    assert generate_room(0).to_text() == "######\n#_#__#\n#PX__#\n#___O#\n#__#_#\n######"


def test_unseeded_reset_is_reproducible_from_the_env_seed() -> None:
    a, b = SokobanEnv(), SokobanEnv()
    a.reset(seed=42)
    b.reset(seed=42)
    for _ in range(3):
        obs_a, info_a = a.reset()
        obs_b, info_b = b.reset()
        assert obs_a == obs_b
        # The drawn seed is reported and rebuilds the same room.
        assert SokobanEnv().reset(seed=info_a["seed"])[0] == obs_a


def test_reset_leaves_global_random_state_alone() -> None:
    random.seed(1234)
    np.random.seed(1234)
    py_state, np_state = random.getstate(), np.random.get_state()
    env = SokobanEnv(num_boxes=2)
    for seed in range(5):
        env.reset(seed=seed)
    env.reset()
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def test_generation_is_thread_safe() -> None:
    seeds = list(range(16))
    expected = {s: generate_room(s, num_boxes=2).to_text() for s in seeds}
    got: dict[int, str] = {}

    def work(part: list[int]) -> None:
        for s in part:
            got[s] = generate_room(s, num_boxes=2).to_text()

    threads = [threading.Thread(target=work, args=(seeds[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_oracle_plan_solves_rooms_with_the_expected_reward() -> None:
    env = SokobanEnv()
    for seed in range(50):
        _, info = env.reset(seed=seed)
        plan = env.oracle_actions()
        assert plan is not None and len(plan) == info["optimal_plan_length"] >= 1
        assert info["optimal_plan"] == plan
        total, terminated, truncated, step_info = 0.0, False, False, {}
        for action in plan:
            assert not terminated
            _, reward, terminated, truncated, step_info = env.step(action)
            total += reward
        assert terminated and not truncated and step_info["success"]
        # One box: every move costs 0.1; the last one also earns +1 (box on target) and +10 (solved).
        assert total == pytest.approx(-0.1 * len(plan) + 1 + 10)


def test_two_box_rooms() -> None:
    env = agentrl.make("sokoban", num_boxes=2)
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        assert obs.count("X") + obs.count("√") == 2 and obs.count("O") + obs.count("√") + obs.count("S") == 2
        assert len(info["boxes"]) == len(info["targets"]) == 2
        plan = env.oracle_actions()
        assert plan is not None
        for action in plan:
            _, _, terminated, _, step_info = env.step(action)
        assert terminated and step_info["success"]


def test_exact_rewards_on_a_hand_built_room() -> None:
    env = SokobanEnv(render_mode="ansi")
    obs, info = env.reset(options={"layout": LAYOUT})
    assert obs == "#######\n#P√___#\n#___XO#\n#######"
    assert info["boxes_on_target"] == 1 and not info["success"] and info["seed"] is None

    def step(action: str, reward: float, *, valid: bool = True, terminated: bool = False) -> str:
        obs, r, term, trunc, info = env.step(action)
        assert r == pytest.approx(reward), action
        assert info["action_is_valid"] is valid and term is terminated and not trunc
        assert info["success"] is terminated
        return obs

    # Pushing a box off its target: step penalty and -1; the player now stands on the target.
    assert step("Right", -1.1) == "#######\n#_SX__#\n#___XO#\n#######"
    step("Left", -0.1)
    before = env.render()
    assert step("Up", -0.1) == before  # a wall bump is a valid move that changes nothing
    assert step("Jump", -0.1, valid=False) == before  # an unknown action: penalty, state unchanged
    for action in ("Down", "Right", "Right"):
        step(action, -0.1)
    # Pushing the other box onto its target: +1, but one target is still empty.
    assert step("Right", 0.9) == "#######\n#_OX__#\n#___P√#\n#######"
    step("Up", -0.1)
    # The last box onto the last target: +1 and +10, and the episode ends.
    assert step("Left", 10.9, terminated=True) == "#######\n#_√P__#\n#____√#\n#######"


def test_pushing_into_a_box_or_wall_does_nothing() -> None:
    env = SokobanEnv()
    env.reset(options={"layout": "######\n#PXX_#\n#OO__#\n######"})
    obs, reward, _, _, info = env.step("Right")  # two boxes in a row: no push
    assert obs == "######\n#PXX_#\n#OO__#\n######" and reward == pytest.approx(-0.1)
    assert info["action_is_valid"] and not info["moved_player"]
    env.reset(options={"layout": "#####\n#PX##\n#O__#\n#####"})
    obs, _, _, _, info = env.step("Right")  # box against a wall: no push
    assert obs == "#####\n#PX##\n#O__#\n#####" and not info["moved_box"]


def test_invalid_action_penalty_is_configurable() -> None:
    assert SokobanEnv.invalid_action_penalty == pytest.approx(-0.1)
    env = agentrl.make("sokoban", invalid_action_penalty=-0.5)
    env.reset(seed=0)
    _, reward, _, _, info = env.step("north")
    assert reward == pytest.approx(-0.5) and not info["action_is_valid"]


def test_actions_are_case_insensitive() -> None:
    for text in ("UP", " up ", "uP\n", "\tUp"):
        assert parse_action(text) == 0
    assert [parse_action(a) for a in ("down", "LEFT", "Right ")] == [1, 2, 3]
    for text in ("Up || Left", "u", "upp", "move up", "1", ""):
        assert parse_action(text) is None


def test_hostile_actions_are_bounded_and_invalid() -> None:
    env = SokobanEnv()
    hostile = [
        *HOSTILE_ACTIONS,
        " " * 1_000_000 + "Up",
        "Up" + "\u200b" * 1000,
        "ＵＰ",
        None,
        5,
        b"Up",
        ["Up"],
    ]
    for action in hostile:
        obs, _ = env.reset(seed=1)
        start = time.perf_counter()
        new_obs, reward, terminated, truncated, info = env.step(action)  # type: ignore[arg-type]
        assert time.perf_counter() - start < 0.05
        assert not info["action_is_valid"] and new_obs == obs and reward == pytest.approx(-0.1)
        assert not terminated and not truncated


def test_step_limit_truncates_and_counts_invalid_actions() -> None:
    env = SokobanEnv(max_steps=3)
    env.reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})
    results = [env.step(a) for a in ("Up", "nonsense", "Left")]
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results) and results[-1][4]["steps"] == 3


def test_reset_options_override_one_episode() -> None:
    env = SokobanEnv()
    obs, info = env.reset(seed=5, options={"dim_room": (7, 8), "num_boxes": 2})
    assert [len(row) for row in obs.splitlines()] == [8] * 7 and info["dim_room"] == [7, 8]
    assert info["num_boxes"] == 2
    obs, info = env.reset(seed=5)
    assert info["dim_room"] == [6, 6] and info["num_boxes"] == 1
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"dim": (7, 7)})


def test_oracle_from_a_mid_episode_state() -> None:
    env = SokobanEnv()
    env.reset(options={"layout": "#######\n#P_X_O#\n#_____#\n#######"})
    assert env.oracle_actions() == ["Right", "Right", "Right"]
    env.step("Down")
    plan = env.oracle_actions()
    assert plan is not None and len(plan) == 4
    for action in plan:
        *_, info = env.step(action)
    assert info["success"]


def test_solve_edge_cases() -> None:
    room = parse_layout("######\n#P_X_#\n#__O_#\n######")
    assert solve(room.walls, room.boxes, room.targets, room.player) is None  # box stuck on the top wall
    room = parse_layout("#####\n#P√_#\n#####")
    assert solve(room.walls, room.boxes, room.targets, room.player) == []
    room = generate_room(7, dim_room=(8, 8), num_boxes=2)
    assert solve(room.walls, room.boxes, room.targets, room.player, max_nodes=5) is None
    assert solve(room.walls, room.boxes, room.targets, room.player) is not None
    with pytest.raises(ValueError):
        parse_layout("#####\n#P__#\n#####")  # no box


def test_render_modes() -> None:
    env = SokobanEnv(render_mode="rgb_array", dim_room=(7, 8))
    env.reset(seed=2)
    image = env.render()
    assert isinstance(image, np.ndarray) and image.shape == (7 * 16, 8 * 16, 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) >= 4
    text_env = SokobanEnv()
    obs, _ = text_env.reset(seed=2)
    assert text_env.render() == obs
    with pytest.raises(ValueError):
        SokobanEnv(render_mode="human")


def test_instructions_show_a_concrete_example() -> None:
    text = SokobanEnv().instructions
    assert "Up || Left" in text and "[" not in text
    for symbol in "#_OX√PS":
        assert symbol in text
    assert SokobanEnv.max_actions_per_turn > 1


def test_bad_constructor_arguments() -> None:
    for kwargs in ({"dim_room": (2, 6)}, {"dim_room": 6}, {"num_boxes": 0}, {"max_steps": 0}):
        with pytest.raises(ValueError):
            SokobanEnv(**kwargs)


def test_describe_positions_adds_the_coordinates_under_the_grid():
    env = SokobanEnv(describe_positions=True)
    obs, _ = env.reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})
    assert (
        obs
        == "#####\n#P_X#\n#O__#\n#####\nPlayer at row 2 column 2. Box at row 2 column 4. Target at row 3 column 2."
    )
    assert "positions of you" in env.instructions
    obs, *_ = env.step("Right")
    assert (
        obs.splitlines()[-1] == "Player at row 2 column 3. Box at row 2 column 4. Target at row 3 column 2."
    )
    plain = SokobanEnv()
    obs, _ = plain.reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})
    assert obs == "#####\n#P_X#\n#O__#\n#####" and "positions of you" not in plain.instructions


def test_describe_pushes_names_the_pushes_walls_and_boxes_allow():
    env = SokobanEnv(describe_positions=True, describe_pushes=True)
    # Against the left wall the box moves only along its column: Left has a wall beyond it, Right a
    # wall behind it (where the player would stand). The player's own square does not block.
    obs, _ = env.reset(options={"layout": "######\n#P___#\n#X___#\n#__O_#\n######"})
    assert obs.splitlines()[-1] == "The box at row 3 column 2 can be pushed Up or Down."
    assert obs.splitlines()[-2].startswith("Player at row 2 column 2.")
    # Two boxes side by side block each other's sideways pushes: beyond or behind is a box.
    obs, _ = env.reset(options={"layout": "######\n#P___#\n#_XX_#\n#_OO_#\n######"})
    assert obs.splitlines()[-1] == (
        "The box at row 3 column 3 can be pushed Up or Down. The box at row 3 column 4 can be pushed Up or Down."
    )
    # In the open all four; after a push the line follows the box, and a box in a corner is named stuck.
    obs, _ = env.reset(options={"layout": "######\n#____#\n#_X__#\n#P_O_#\n######"})
    assert obs.splitlines()[-1] == "The box at row 3 column 3 can be pushed Up, Down, Left or Right."
    env.step("Up")
    obs, *_ = env.step("Right")  # pushes the box to row 3 column 4
    assert obs.splitlines()[-1] == "The box at row 3 column 4 can be pushed Up, Down, Left or Right."
    obs, _ = env.reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})
    assert obs.splitlines()[-1] == "The box at row 2 column 4 cannot be pushed."
    assert env.instructions.endswith(
        "\nThen the directions each box can be pushed, walls and boxes allowing."
    )
    alone = SokobanEnv(describe_pushes=True).instructions
    assert alone.endswith(
        "\nUnder the grid: the directions each box off a target can be pushed, walls and boxes allowing."
    )
    # Off by default; without the positions the line sits right under the grid.
    assert (
        "pushed"
        not in SokobanEnv(describe_positions=True).reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})[0]
    )
    obs, _ = SokobanEnv(describe_pushes=True).reset(
        options={"layout": "######\n#P___#\n#X___#\n#__O_#\n######"}
    )
    assert (
        obs == "######\n#P___#\n#X___#\n#__O_#\n######\nThe box at row 3 column 2 can be pushed Up or Down."
    )


def test_live_squares_are_those_a_lone_box_can_still_be_pushed_from_onto_a_target():
    room = parse_layout("#####\n#P_X#\n#O__#\n#####")
    # Target (2,1). A box reaches it from (2,2) pushed Left (the player at (2,3)); nothing reaches
    # (2,2): from (2,3) the player would stand in the wall, from (1,2) above the top row. The top
    # row and (2,3) are dead: a box there is stuck for good.
    assert live_squares(room.walls, room.targets) == {(2, 1), (2, 2)}
    # The solver prunes the same squares: a box on a dead one has no plan.
    assert solve(room.walls, [(1, 3)], room.targets, (2, 3)) is None
    open_room = parse_layout("######\n#____#\n#_X__#\n#P_O_#\n######")
    # Target (3,3) on the bottom row: the bottom row stays live (a box there goes Left or Right along
    # it), the top row and the side columns are dead, the middle row lives.
    assert live_squares(open_room.walls, open_room.targets) == {(2, 2), (2, 3), (3, 2), (3, 3)}


def test_exclude_dead_pushes_leaves_out_the_pushes_that_lose_the_room():
    layout = "######\n#____#\n#_X__#\n#P_O_#\n######"  # box (2,2), target (3,3)
    walls_only = SokobanEnv(describe_positions=True, describe_pushes=True)
    assert walls_only.reset(options={"layout": layout})[0].splitlines()[-1] == (
        "The box at row 3 column 3 can be pushed Up, Down, Left or Right."
    )
    env = SokobanEnv(describe_positions=True, describe_pushes=True, exclude_dead_pushes=True)
    obs, _ = env.reset(options={"layout": layout})
    # Up (the top row) and Left (the left column) would stick it; Down and Right keep the target in reach.
    assert obs.splitlines()[-1] == "The box at row 3 column 3 can be pushed Down or Right."
    # The thought copies the narrowed list; the plan's push is always in it (a plan never kills the room).
    assert "It can be pushed Down or Right. I push the box " in env.oracle_thought()
    # Pushed Up onto a dead square anyway, the box cannot be pushed anywhere that helps.
    env.step("Right")
    obs, *_ = env.step("Up")  # from (3,2): the box to (1,2), the top row
    assert obs.splitlines()[-1] == "The box at row 2 column 3 cannot be pushed."
    assert walls_only.reset(options={"layout": "######\n#_X__#\n#_P__#\n#__O_#\n######"})[0].endswith(
        "The box at row 2 column 3 can be pushed Left or Right."
    )
    assert env.instructions.endswith(
        "\nThen the directions each box can be pushed, walls and boxes allowing, "
        "and only onto squares from which it can still reach a target."
    )
    with pytest.raises(ValueError, match="set describe_pushes=True too"):
        SokobanEnv(exclude_dead_pushes=True)


def test_oracle_thought_with_pushes_copies_them_before_choosing_one():
    env = SokobanEnv(describe_positions=True, describe_pushes=True)
    env.reset(options={"layout": "#####\n#O__#\n#XP_#\n#___#\n#####"})
    # The box (row 3 column 2) is against the left wall: only Up and Down; the plan pushes it Up.
    assert env.oracle_thought() == (
        "Box row 3, target row 2: 1 up. Box column 2, target column 2: same. It can be pushed Up or Down. "
        "I push the box Up from row 4 column 2. I am at row 3 column 3: 1 down and 1 left."
    )


def test_oracle_thought_compares_positions_and_names_the_next_push():
    env = SokobanEnv()
    env.reset(options={"layout": "######\n#____#\n#P_X_#\n#___O#\n######"})
    # Shortest plan by hand: Right, Right (box to column 5), Up, Right, Down (box onto the target).
    assert env.oracle_actions() == ["Right", "Right", "Up", "Right", "Down"]
    # The first push is the second Right, made from row 3 column 3: one column right of the player.
    assert env.oracle_thought() == (
        "I am at row 3 column 2. Box at row 3 column 4. Target at row 4 column 5. "
        "Box row 3, target row 4: 1 down. Box column 4, target column 5: 1 right. "
        "I push the box Right from row 3 column 3. I am at row 3 column 2: 1 right."
    )
    env.step("Right")
    env.step("Right")  # the box at column 5, the player at column 4: next push is Down from row 2 column 5
    assert env.oracle_thought() == (
        "I am at row 3 column 4. Box at row 3 column 5. Target at row 4 column 5. "
        "Box row 3, target row 4: 1 down. Box column 5, target column 5: same. "
        "I push the box Down from row 2 column 5. I am at row 3 column 4: 1 up and 1 right."
    )


def test_oracle_thought_with_positions_skips_the_copy_and_says_where_i_stand():
    env = SokobanEnv(describe_positions=True)
    env.reset(options={"layout": "#####\n#O__#\n#XP_#\n#___#\n#####"})
    # The box is below the target; pushing it Up needs the player below it (row 4 column 2):
    # Down, Left, Up.
    assert env.oracle_actions() == ["Down", "Left", "Up"]
    assert env.oracle_thought() == (
        "Box row 3, target row 2: 1 up. Box column 2, target column 2: same. "
        "I push the box Up from row 4 column 2. I am at row 3 column 3: 1 down and 1 left."
    )
    env.step("Down")
    env.step("Left")
    assert env.oracle_thought() == (
        "Box row 3, target row 2: 1 up. Box column 2, target column 2: same. "
        "I push the box Up from row 4 column 2. I am at row 4 column 2: there already."
    )


@pytest.mark.parametrize("exclude_dead_pushes", [False, True])
def test_oracle_thought_is_true_on_generated_rooms(exclude_dead_pushes: bool):
    """On 200 rooms, the push the thought names is the plan's first box move, made from where it
    says, and one the observation lists (also where dead pushes are left out: a plan never kills
    its room)."""
    import re

    env = SokobanEnv(describe_positions=True, describe_pushes=True, exclude_dead_pushes=exclude_dead_pushes)
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        thought, plan = env.oracle_thought(), env.oracle_actions()
        push = re.search(r"I push the box (\w+) from row (\d) column (\d)", thought)
        assert push, thought
        # The push is one the observation lists, and the thought copies that list.
        allowed = re.search(r"can be pushed ([\w ,]+)\.", obs.splitlines()[-1])[1]
        assert push[1] in re.split(r", | or ", allowed) and f"It can be pushed {allowed}." in thought, seed
        for move in plan:
            obs, _, _, _, info = env.step(move)
            if info["moved_box"]:
                assert move == push[1]
                # The player now stands where the box was: one square back is where it pushed from.
                r, c = map(int, re.search(r"Player at row (\d) column (\d)", obs).groups())
                dr, dc = {"Up": (-1, 0), "Down": (1, 0), "Left": (0, -1), "Right": (0, 1)}[move]
                assert (r - dr, c - dc) == (int(push[2]), int(push[3])), seed
                break


def test_oracle_turn_actions_stop_at_the_push_the_thought_names():
    env = SokobanEnv()
    env.reset(options={"layout": "######\n#____#\n#P_X_#\n#___O#\n######"})
    # Plan Right, Right, Up, Right, Down: the walk (Right) and the push (Right) the thought names.
    assert env.oracle_turn_actions() == ["Right", "Right"]
    env.step("Right")
    env.step("Right")
    # Next: Up, Right (the walk to row 2 column 5), then Down pushes the box onto the target.
    assert env.oracle_turn_actions() == ["Up", "Right", "Down"]
    env.step("Up")
    env.step("Right")
    env.step("Down")
    assert env.oracle_turn_actions() == []  # solved: nothing left to do


def test_oracle_turn_actions_are_the_whole_plan_without_a_single_box_off_target():
    env = SokobanEnv(num_boxes=2)
    env.reset(seed=3)
    assert env.oracle_turn_actions() == env.oracle_actions()


def test_demonstration_reply_gives_the_moves_its_thought_explains():
    from agentrl.training.sft import oracle_reply

    env = SokobanEnv(describe_positions=True)
    env.reset(options={"layout": "######\n#O___#\n#____#\n#X___#\n#P___#\n######"})
    assert env.oracle_actions() == ["Up", "Up"]  # two pushes up, each its own turn
    assert oracle_reply(think=True, max_actions=3)(env) == (
        "<think>Box row 4, target row 2: 2 up. Box column 2, target column 2: same. I push the box Up "
        "from row 5 column 2. I am at row 5 column 2: there already.</think><answer>Up</answer>"
    )
    # Without a thought there is nothing to explain the moves: the plan's first max_actions.
    assert oracle_reply(think=False, max_actions=3)(env) == "<answer>Up || Up</answer>"


def test_min_plan_length_picks_a_long_room_reproducibly() -> None:
    env = SokobanEnv()
    plain_obs, plain = env.reset(seed=10_003)
    assert "room_seed" not in plain
    # 0 is the plain room; a bar the plain room meets keeps it.
    assert env.reset(seed=10_003, options={"min_plan_length": 0})[0] == plain_obs
    assert env.reset(seed=10_003, options={"min_plan_length": plain["optimal_plan_length"]})[0] == plain_obs
    bar = plain["optimal_plan_length"] + 3
    obs, info = env.reset(seed=10_003, options={"min_plan_length": bar})
    assert info["optimal_plan_length"] >= bar and obs != plain_obs
    assert info["seed"] == 10_003
    # The room built is the generator's room for room_seed, a seed far above any small held-out one.
    k, rest = divmod(info["room_seed"] - 10_003, 2**40)
    assert k >= 1 and rest == 0
    assert env.reset(seed=info["room_seed"])[0] == obs
    # Same seed and options, same room.
    assert env.reset(seed=10_003, options={"min_plan_length": bar})[0] == obs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_plan_length": -1}, "min_plan_length must be an int >= 0"),
        ({"min_plan_length": 2.5}, "min_plan_length must be an int >= 0"),
        ({"min_plan_length": 99}, "lower it"),
        ({"min_plan_length": 3, "layout": "####\n#PXO#\n####"}, "drop one"),
        (
            {"min_plan_lenght": 3},
            "known: dim_room, layout, min_plan_length, num_boxes, orientation, progress_reward, room_block",
        ),
    ],
)
def test_bad_min_plan_length_is_refused_with_the_fix(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        SokobanEnv().reset(seed=1, options=options)


# 4 rows x 6 columns: the player left of the box, the target below and right of it.
TURNABLE = "######\n#PX__#\n#___O#\n######"


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (0, TURNABLE),
        (1, "####\n#_P#\n#_X#\n#__#\n#O_#\n####"),  # a quarter turn clockwise: 6 rows x 4 columns
        (2, "######\n#O___#\n#__XP#\n######"),  # a half turn
        (3, "####\n#_O#\n#__#\n#X_#\n#P_#\n####"),
        (4, "######\n#__XP#\n#O___#\n######"),  # mirrored left-right
        (5, "####\n#P_#\n#X_#\n#__#\n#_O#\n####"),  # a quarter turn, then mirrored
    ],
)
def test_orient_room_turns_clockwise_then_mirrors(orientation, expected) -> None:
    assert orient_room(parse_layout(TURNABLE), orientation).to_text() == expected


#: Where each move goes under a quarter turn clockwise, and under a left-right mirror.
TURN = {"Up": "Right", "Right": "Down", "Down": "Left", "Left": "Up"}
MIRROR = {"Up": "Up", "Down": "Down", "Left": "Right", "Right": "Left"}


@pytest.mark.parametrize("orientation", range(8))
def test_a_turned_room_is_solved_by_its_plan_turned_the_same_way(orientation) -> None:
    env = SokobanEnv(describe_positions=True)
    _, plain = env.reset(seed=10_001, options={"min_plan_length": 4})
    obs, info = env.reset(seed=10_001, options={"min_plan_length": 4, "orientation": orientation})
    assert info["orientation"] == orientation and info["optimal_plan_length"] == plain["optimal_plan_length"]
    for move in plain["optimal_plan"]:
        for _ in range(orientation % 4):
            move = TURN[move]
        if orientation >= 4:
            move = MIRROR[move]
        *_, info = env.step(move)
    assert info["success"]
    # The same seed and options rebuild the same turned room.
    assert env.reset(seed=10_001, options={"min_plan_length": 4, "orientation": orientation})[0] == obs


def test_orientation_by_seed_plays_all_eight_on_eight_consecutive_seeds() -> None:
    env = SokobanEnv()
    turned = [env.reset(seed=s, options={"orientation": "seed"}) for s in range(10_000, 10_008)]
    assert [info["orientation"] for _, info in turned] == list(range(8))
    for seed, (obs, info) in zip(range(10_000, 10_008), turned):
        assert env.reset(seed=seed, options={"orientation": info["orientation"]})[0] == obs
    assert "orientation" not in env.reset(seed=10_000)[1]  # plain rooms say nothing of it


def test_a_room_block_plays_one_room_in_each_seeds_orientation() -> None:
    env = SokobanEnv()
    options = {"min_plan_length": 4, "orientation": "seed", "room_block": 4}
    block = [env.reset(seed=s, options=options) for s in range(10_004, 10_012)]
    # Two blocks of 4: each seed turned its own way, the block's first seed's room in all four.
    assert [info["orientation"] for _, info in block] == list(range(4, 8)) + list(range(4))
    assert [info["seed"] for _, info in block] == list(range(10_004, 10_012))
    first, second = block[:4], block[4:]
    assert {info["room_seed"] for _, info in first} == {
        env.reset(seed=10_004, options={"min_plan_length": 4})[1].get("room_seed", 10_004)
    }
    assert len({info["room_seed"] for _, info in second}) == 1
    assert first[0][1]["room_seed"] != second[0][1]["room_seed"]
    # Four turns of one room: four different grids, one plan length.
    assert len({obs for obs, _ in first}) == 4
    assert len({info["optimal_plan_length"] for _, info in first}) == 1
    for seed, (obs, info) in zip(range(10_004, 10_012), block):
        assert env.reset(seed=info["room_seed"], options={"orientation": info["orientation"]})[0] == obs
        assert env.reset(seed=seed, options=options)[0] == obs  # the same seed rebuilds it
    # A block of 1 is the option left out: every seed its own room.
    plain = {"min_plan_length": 4, "orientation": "seed"}
    assert (
        env.reset(seed=10_005, options={**plain, "room_block": 1})[0]
        == env.reset(seed=10_005, options=plain)[0]
    )
    assert env.reset(seed=10_005, options=plain)[0] != block[1][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"room_block": 0, "orientation": "seed"}, "room_block must be an int >= 1"),
        ({"room_block": 2.0, "orientation": "seed"}, "room_block must be an int >= 1"),
        ({"room_block": 4}, "add orientation: seed"),
        ({"room_block": 4, "orientation": 1}, "add orientation: seed"),
        ({"room_block": 4, "orientation": "seed", "layout": TURNABLE}, "drop one"),
    ],
)
def test_bad_room_block_is_refused_with_the_fix(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        SokobanEnv().reset(seed=1, options=options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"orientation": 8}, 'orientation must be an int 0-7 or "seed"'),
        ({"orientation": -1}, 'orientation must be an int 0-7 or "seed"'),
        ({"orientation": True}, 'orientation must be an int 0-7 or "seed"'),
        ({"orientation": "seeds"}, 'orientation must be an int 0-7 or "seed"'),
        ({"orientation": "seed", "layout": TURNABLE}, "a layout has none"),
    ],
)
def test_bad_orientation_is_refused_with_the_fix(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        SokobanEnv().reset(seed=1, options=options)


def test_failure_script_names_the_first_turn_that_departs_from_the_oracle(load_script):
    from agentrl.rollout.trajectory import Trajectory, Turn

    script = load_script("sokoban_failures")
    env = SokobanEnv(dim_room=(6, 6), num_boxes=1, max_steps=100, describe_positions=True)
    seed = next(s for s in range(200) if env.reset(seed=s)[1]["optimal_plan_length"] >= 4)
    env.reset(seed=seed)
    right = env.oracle_thought()
    moves = env.oracle_turn_actions()
    said = script.PUSH.search(right).group(1)
    other = next(d for d in ("Up", "Down", "Left", "Right") if d != said)
    wrong = right.replace(f"I push the box {said}", f"I push the box {other}")

    def episode(*turns: tuple[str, list[str]]) -> Trajectory:
        return Trajectory(
            env="sokoban",
            seed=seed,
            group=0,
            turns=[
                Turn(observation="", reply=f"<think>{t}</think><answer>{' || '.join(a)}</answer>", actions=a)
                for t, a in turns
            ],
        )

    assert script.first_mistake(env, episode((wrong, moves))) in (
        "turn 1: wrong push direction (possible)",
        "turn 1: wrong push direction (impossible)",
    )
    # A right first turn, then a thought without a push.
    assert script.first_mistake(env, episode((right, moves), ("I go.", []))) == "turn 2: no push in thought"
    # The right thought, then moves that go nowhere.
    assert script.first_mistake(env, episode((right, []))) == "turn 1: thought right, moves no progress"
    # Moves the thought did not name, judged on the replay; the recorded verdict wins where present.
    reversed_moves = [*moves[::-1], moves[-1]]
    assert env.actions_follow_thought(right, reversed_moves) is False
    assert script.ignores_its_thought(env, episode((right, moves))) is False
    assert script.ignores_its_thought(env, episode((right, reversed_moves))) is True
    recorded = episode((right, reversed_moves))
    recorded.turns[0].follows_thought = True
    assert script.ignores_its_thought(env, recorded) is False
    # As in the rollout, the last thought before the answer is the one judged.
    two = episode((right, moves))
    answer = f"<answer>{' || '.join(moves)}</answer>"
    two.turns[0].reply = f"<think>{wrong}</think><think>{right}</think>{answer}"
    assert script.ignores_its_thought(env, two) is False
    two.turns[0].reply = f"<think>{right}</think><think>{wrong}</think>{answer}"
    assert script.ignores_its_thought(env, two) is True


def test_failure_script_counts_the_first_push_each_thought_names(load_script):
    from agentrl.rollout.trajectory import Trajectory, Turn

    script = load_script("sokoban_failures")
    env = SokobanEnv(dim_room=(6, 6), num_boxes=1, max_steps=100, describe_positions=True)
    # A room whose plan starts with a push Up, one that starts Left (each a held-out seed).
    starts = {}
    for seed in range(200):
        env.reset(seed=seed)
        starts.setdefault(script.PUSH.search(env.oracle_thought()).group(1), seed)
    up, left = starts["Up"], starts["Left"]

    def episode(seed: int, reply: str) -> Trajectory:
        turns = [Turn(observation="", reply=reply, actions=[])]
        return Trajectory(env="sokoban", seed=seed, group=0, turns=turns, reset_info={"seed": seed})

    thought = "<think>I push the box {} from row 2 column 3.</think>"
    episodes = [
        episode(up, thought.format("Up")),
        episode(left, thought.format("Up")),  # the model's lean: Up where the plan starts Left
        episode(left, "<think>I go.</think>"),  # no push named
    ]
    named, oracle = script.first_pushes(env, episodes)
    assert named == {"Up": 2, "-": 1}
    assert oracle == {"Up": 1, "Left": 2}


# Box at row 3 column 4, target at row 2 column 2: both Up and Left bring it nearer, the walls allow
# both, and the target opens only to a push Left (below it and left of it are walls), so Left
# comes last and Up first: the plan is Down, Left, Up (push), Right, Up, Left (push), Left (push).
CORNER_TARGET = "######\n#O___#\n#__XP#\n##___#\n######\n######"


def test_walks_name_the_shortest_way_to_each_push_round_the_box():
    env = SokobanEnv(describe_positions=True, describe_pushes=True, describe_walks=True)
    obs, _ = env.reset(options={"layout": CORNER_TARGET})
    # Player at row 3 column 5 right of the box: Left is pushed from where it stands; Right's square
    # lies behind the box, 4 moves round it (over the top: Up comes first among equal walks).
    assert obs.splitlines()[-1] == (
        "The box at row 3 column 4 can be pushed Up, Down, Left or Right. Walk to push Up: Down, Left. "
        "Walk to push Down: Up, Left. Walk to push Left: none. Walk to push Right: Up, Left, Left, Down."
    )
    assert "your shortest walk to the square it is pushed from" in env.instructions
    # The plan pushes Up first: the thought copies that push's walk, and the reply makes it.
    assert env.oracle_thought().endswith(
        "I push the box Up from row 4 column 4. Walk to push Up: Down, Left."
    )
    assert env.oracle_turn_actions() == ["Down", "Left", "Up"]
    with pytest.raises(ValueError, match="describe_walks adds to the pushes line of describe_pushes"):
        SokobanEnv(describe_walks=True)


def test_walk_demonstrations_stay_optimal_and_copy_the_observation():
    env = SokobanEnv(describe_positions=True, describe_pushes=True, describe_walks=True)
    for seed in range(60):
        obs, info = env.reset(seed=seed)
        moves = 0
        while env.oracle_actions():
            walk = env.oracle_thought().rsplit(". ", 1)[-1]
            assert walk.startswith("Walk to push ") and walk in obs
            for move in env.oracle_turn_actions():
                obs, _, terminated, _, _ = env.step(move)
                moves += 1
        assert terminated and moves == info["optimal_plan_length"], seed


def test_push_choice_classes_hand_built_rooms(load_script):
    script = load_script("sokoban_push_choice")
    room = parse_layout(CORNER_TARGET)
    assert script.toward((2, 3), (1, 1)) == ["Up", "Left"]
    assert script.allowed(room, (2, 3)) == ["Up", "Down", "Left", "Right"]
    assert script.open_sides(room, (1, 1)) == ["Left"]
    assert script.classify(room, "Up") == "the target's side decides, rightly"
    assert script.classify(room, "Left") == "the target's side decides, wrongly"
    assert script.classify(room, "Down") == "away"
    # In the target's row, only Left brings the box nearer.
    in_row = parse_layout("######\n#O_XP#\n#____#\n##___#\n######\n######")
    assert script.classify(in_row, "Left") == "one toward allowed"
    # Down and Right both bring it nearer, and the target opens to both: walls further away decide.
    both_open = parse_layout("######\n#____#\n#_X__#\n#___O#\n#__P_#\n######")
    assert script.open_sides(both_open, (3, 4)) == ["Down", "Right"]
    assert script.classify(both_open, "Down") == "open"


def test_push_choice_walks_the_plan_push_by_push(load_script):
    script = load_script("sokoban_push_choice")
    env = SokobanEnv()
    env.reset(options={"layout": CORNER_TARGET})
    pushes = script.plan_pushes(env)
    assert [move for _, move in pushes] == ["Up", "Left", "Left"]
    assert [room.boxes[0] for room, _ in pushes] == [(2, 3), (1, 3), (1, 2)]
    assert env.oracle_actions() == []  # the plan played out: solved


def test_failure_script_rebuilds_a_turned_training_room(load_script):
    from agentrl.rollout.trajectory import Trajectory, Turn

    script = load_script("sokoban_failures")
    env = SokobanEnv(describe_positions=True, describe_pushes=True)
    options = {"min_plan_length": 4, "orientation": "seed"}
    _, info = env.reset(seed=10_003, options=options)
    turns = []  # the oracle's own turns: every one right, so only a wrong room can fault them
    while env.oracle_actions():
        thought, moves = env.oracle_thought(), env.oracle_turn_actions()
        turns.append(Turn(observation="", reply=f"<think>{thought}</think>", actions=moves))
        for move in moves:
            env.step(move)
    episode = Trajectory(env="sokoban", seed=10_003, group=0, turns=turns, reset_info=info)
    assert info["orientation"] == 3 and len(turns) >= 2
    assert script.first_mistake(env, episode) == "ran out of turns"


def _walk_then_dead_push(room) -> list[str] | None:
    """Moves that walk round the box (never touching it) and then push it onto a dead square."""
    from collections import deque

    steps = dict(zip(ACTIONS, DELTAS))
    live = live_squares(room.walls, room.targets)
    box = room.boxes[0]
    paths, queue = {room.player: []}, deque([room.player])
    while queue:  # where the player can walk, and how
        cell = queue.popleft()
        for move, (dr, dc) in steps.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            if not room.walls[nxt] and nxt != box and nxt not in paths:
                paths[nxt] = [*paths[cell], move]
                queue.append(nxt)
    for move, (dr, dc) in steps.items():
        stand, beyond = (box[0] - dr, box[1] - dc), (box[0] + dr, box[1] + dc)
        if stand in paths and not room.walls[beyond] and beyond not in live:
            return [*paths[stand], move]
    return None


def test_failure_script_finds_the_turn_a_box_went_onto_a_dead_square(load_script):
    from agentrl.rollout.trajectory import Trajectory, Turn

    script = load_script("sokoban_failures")
    env = SokobanEnv(describe_positions=True, describe_pushes=True)
    seed = next(
        s for s in range(50) if env.reset(seed=s) and _walk_then_dead_push(parse_layout(env.render()))
    )
    _, info = env.reset(seed=seed)
    dead_push = _walk_then_dead_push(parse_layout(env.render()))

    def episode(*actions: list[str]) -> Trajectory:
        turns = [Turn(observation="", reply="", actions=a, reward=-0.1, format_ok=True) for a in actions]
        return Trajectory(env="sokoban", seed=seed, group=0, turns=turns, reset_info=info)

    # The plan's own first turn never does; a turn of the plan's, then (from the start again, in a
    # second episode) a wasted turn and the walk and push onto a dead square, on turn 2.
    assert script.dead_square_turn(env, episode(env.oracle_turn_actions())) is None
    assert script.dead_square_turn(env, episode([], dead_push)) == 2
    # After a format error the recorded actions were parsed, never sent: the replay skips them.
    unsent = episode(dead_push)
    unsent.turns[0].format_ok = False
    assert script.dead_square_turn(env, unsent) is None


def test_failure_script_tells_an_impossible_push_from_a_possible_one(load_script):
    """Impossible: a wall where the player must stand, or where the box would go."""
    script = load_script("sokoban_failures")
    env = SokobanEnv(describe_positions=True)
    env.reset(options={"layout": "######\n#__#_#\n#_PX_#\n#___O#\n######"})  # box at row 3 column 4

    def blocked(thought: str) -> bool:
        return script._blocked(env, script.PUSH.search(thought))

    assert not blocked("I push the box Right from row 3 column 3")  # past the box: row 3 column 5, floor
    assert blocked("I push the box Down from row 2 column 4")  # stand on a wall
    assert blocked("I push the box Up from row 4 column 4")  # the box would go into the wall
    assert not blocked("I push the box Left from row 3 column 5")


def test_failure_script_rebuilds_the_env_of_the_run_that_wrote_the_file(load_script, tmp_path):
    from agentrl.config import load_config

    script = load_script("sokoban_failures")
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    cfg = load_config(env="sokoban", overrides=["env.kwargs={dim_room: [7, 7], num_boxes: 2}"])
    (run / "config.yaml").write_text(cfg.to_yaml())
    env = script.env_for(run / "eval" / "step_000004.jsonl")
    assert (env.dim_room, env.num_boxes, env.describe_pushes) == ((7, 7), 2, False)
    countdown = tmp_path / "cd"
    (countdown / "eval").mkdir(parents=True)
    (countdown / "config.yaml").write_text(load_config(env="countdown").to_yaml())
    with pytest.raises(SystemExit, match="written by a run of env 'countdown'"):
        script.env_for(countdown / "eval" / "step_000004.jsonl")
    # A file outside a run folder: the default recipe's env.
    default = script.env_for(tmp_path / "step_000004.jsonl")
    assert (default.dim_room, default.describe_positions, default.describe_pushes) == ((6, 6), True, True)


# Player (2,3), box (2,2), target (3,4): the shortest plan walks Up, Left (to above the box),
# pushes Down, walks Left, Down (to its left) and pushes Right twice: 7 moves.
PROGRESS_ROOM = "######\n#____#\n#_XP_#\n#___O#\n######"


def test_progress_reward_pays_each_move_that_shortens_the_plan() -> None:
    env = SokobanEnv()
    _, info = env.reset(options={"layout": PROGRESS_ROOM, "progress_reward": 0.5})
    assert info["optimal_plan_length"] == 7
    rewards = [env.step(a)[1] for a in info["optimal_plan"]]
    # Every move shortens the plan by 1: -0.1 + 0.5; the last also puts the box on its target.
    assert rewards == pytest.approx([0.4] * 6 + [0.4 + 1.0 + 10.0])
    # Without the option the same moves earn gym-sokoban's rewards alone.
    _, info = env.reset(options={"layout": PROGRESS_ROOM})
    assert [env.step(a)[1] for a in info["optimal_plan"]] == pytest.approx([-0.1] * 6 + [10.9])


def test_progress_reward_takes_progress_back_at_a_dead_end() -> None:
    env = SokobanEnv()
    env.reset(options={"layout": PROGRESS_ROOM, "progress_reward": 0.5})
    # Up, Left, Down: 3 moves of progress (plan 7 -> 4), the box now at (3,2) on the bottom row.
    # Right, Down: away from the square left of the box (plan 4 -> 5 -> 6). Left pushes the box
    # into the corner (3,1): unsolvable, which counts as the start's 7 moves away.
    rewards = [env.step(a)[1] for a in ("Up", "Left", "Down", "Right", "Down", "Left")]
    assert rewards == pytest.approx([0.4, 0.4, 0.4, -0.6, -0.6, -0.6])
    assert sum(rewards) == pytest.approx(6 * -0.1)  # all progress taken back: the step costs remain
    assert env.step("Up")[1] == pytest.approx(-0.1)  # from a dead end no move is progress
    # A move into a wall changes nothing and earns no shaping.
    env.reset(options={"layout": PROGRESS_ROOM, "progress_reward": 0.5})
    env.step("Up")
    assert env.step("Up")[1] == pytest.approx(-0.1)


@pytest.mark.parametrize("bad", [-0.5, "0.5", True, float("inf")])
def test_progress_reward_rejects_a_bad_value(bad: object) -> None:
    with pytest.raises(ValueError, match="progress_reward must be a number >= 0"):
        SokobanEnv().reset(options={"layout": PROGRESS_ROOM, "progress_reward": bad})


# ------------------------------------------------------------------------------------------------
# actions_follow_thought: does a reply's answer make the push its thought names?
# ------------------------------------------------------------------------------------------------

# Player row 3 column 2, box row 3 column 4 (1-based), target row 4 column 5.
OPEN_ROOM = "######\n#____#\n#P_X_#\n#___O#\n######"


def test_actions_follow_thought_when_they_walk_a_shortest_way_then_make_the_named_push() -> None:
    env = SokobanEnv()
    env.reset(options={"layout": OPEN_ROOM})
    right = "Box row 3, target row 4: 1 down. I push the box Right from row 3 column 3."
    assert env.actions_follow_thought(right, ["Right", "Right"]) is True
    assert env.actions_follow_thought(right, ["Right"]) is True  # the walk, the push next turn
    assert env.actions_follow_thought("so i push the box right", ["right", " Right "]) is True
    assert env.actions_follow_thought(right, ["Right", "Right", "Up"]) is False  # a move after the push
    assert env.actions_follow_thought(right, ["Up", "Right", "Right"]) is False  # not a shortest walk
    assert env.actions_follow_thought(right, ["Right", "Up"]) is False  # at the square, not the push
    # Down is pushed from row 2 column 4, three moves away by either of two shortest walks.
    down = "I push the box Down from row 2 column 4."
    assert env.actions_follow_thought(down, ["Up", "Right", "Right", "Down"]) is True
    assert env.actions_follow_thought(down, ["Right", "Up", "Right"]) is True
    assert env.actions_follow_thought(down, ["Right", "Right", "Up"]) is False  # walks into the box
    assert env.actions_follow_thought(down, ["Down", "Right"]) is False  # unknown to the walk
    assert env.actions_follow_thought(down, ["Jump"]) is False


def test_actions_follow_thought_refuses_a_push_the_walls_forbid_and_judges_nothing_unnamed() -> None:
    env = SokobanEnv()
    env.reset(options={"layout": "#####\n#P_X#\n#O__#\n#####"})  # the box against the right wall
    assert env.actions_follow_thought("I push the box Right from row 2 column 3.", ["Right"]) is False
    assert env.actions_follow_thought("The box goes left.", ["Right"]) is None  # no push named
    assert env.actions_follow_thought("x" * 1_000_000 + " I push the box Up", ["Up"]) is None  # unread
    two = SokobanEnv(num_boxes=2)
    two.reset(seed=3)
    assert two.actions_follow_thought("I push the box Up.", ["Up"]) is None
    # A push onto a dead square is unwise, not unfaithful: left off the pushes line by
    # exclude_dead_pushes, it is still judged by the walls (box row 3 column 3, player below-left).
    dead = SokobanEnv(describe_positions=True, describe_pushes=True, exclude_dead_pushes=True)
    dead.reset(options={"layout": "######\n#____#\n#_X__#\n#P_O_#\n######"})
    assert dead.actions_follow_thought("I push the box Up from row 4 column 3.", ["Right", "Up"]) is True


@pytest.mark.parametrize("walks", [False, True])
def test_the_oracle_replies_follow_their_thoughts_on_generated_rooms(walks: bool) -> None:
    """The warm start's replies (thought, then the actions it explains) pass, turn after turn."""
    env = SokobanEnv(describe_positions=True, describe_pushes=True, describe_walks=walks)
    for seed in range(60):
        env.reset(seed=seed)
        for _ in range(10):
            actions = env.oracle_turn_actions()
            assert actions, seed
            assert env.actions_follow_thought(env.oracle_thought(), actions) is True, seed
            for action in actions:
                *_, terminated, _, info = env.step(action)
            if terminated:
                assert info["success"]
                break
        else:
            raise AssertionError(f"seed {seed}: the oracle's replies did not solve the room")
