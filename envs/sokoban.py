"""Sokoban as a multi-turn text env: push every box onto a target.

Rooms come from gym-sokoban's generator (random-walk topology, then reverse play from the solved
state, so every room is solvable); everything else (moves, pushes, rewards, text and image
rendering) is implemented here on plain Python sets, with no RGB frame per step.

Reproducibility: gym-sokoban's generator draws from the *global* ``random`` and ``np.random`` and
keeps its search state in module globals. :func:`generate_room` therefore runs it under a lock,
seeds both global generators from the episode seed and restores them afterwards, so the same seed
gives the same room on any machine and no caller's random state is touched.
"""

from __future__ import annotations

import importlib.util
import random
import re
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from agentrl import TextEnv

from .sokoban_solver import ACTIONS, DELTAS, live_squares, solve

__all__ = [
    "SokobanEnv",
    "SokobanRoom",
    "generate_room",
    "orient_room",
    "parse_layout",
    "parse_action",
    "solve",
]

Cell = tuple[int, int]

# Text symbols (RAGEN's).
WALL, FLOOR, TARGET, BOX, BOX_ON_TARGET, PLAYER, PLAYER_ON_TARGET = "#", "_", "O", "X", "√", "P", "S"

#: Lower-cased action name -> index into ``ACTIONS``/``DELTAS``.
_ACTION_INDEX = {name.lower(): i for i, name in enumerate(ACTIONS)}
#: Longer action strings are rejected unread: parsing stays O(1) whatever the model sends.
MAX_ACTION_CHARS = 32
#: How many seeds derived from one episode seed the generator may try before giving up.
MAX_GENERATION_ATTEMPTS = 64
#: The options ``SokobanEnv.reset`` takes.
RESET_OPTIONS = frozenset(
    {"dim_room", "num_boxes", "layout", "min_plan_length", "orientation", "room_block", "progress_reward"}
)
#: The symmetries of a room: quarter turns clockwise (0-3), each then mirrored left-right (4-7).
ORIENTATIONS = 8
#: How many rooms ``reset(options={"min_plan_length": n})`` may draw before it gives up.
MAX_PLAN_LENGTH_DRAWS = 200
#: The sentence of a thought that names its push (:meth:`SokobanEnv.oracle_thought` writes it).
_NAMED_PUSH = re.compile(r"\bI push the box (up|down|left|right)\b", re.IGNORECASE)
#: How much of a thought :meth:`SokobanEnv.actions_follow_thought` reads (bounded time on any reply).
MAX_THOUGHT_CHARS = 4096


def parse_action(action: Any) -> int | None:
    """Index of the move named by ``action`` (``"up"``, ``" Down "``...), or ``None`` if it names none.

    Case and surrounding whitespace are ignored. Non-strings and strings longer than
    :data:`MAX_ACTION_CHARS` give ``None`` without being scanned, so any input costs O(1).
    """
    if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS:
        return None
    return _ACTION_INDEX.get(action.strip().lower())


# --------------------------------------------------------------------------------------------
# Rooms
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SokobanRoom:
    """A room's layout and start state. Cells are (row, col), row 0 at the top."""

    walls: np.ndarray
    """H x W bool array, True on walls."""
    targets: tuple[Cell, ...]
    boxes: tuple[Cell, ...]
    player: Cell

    @property
    def dim(self) -> tuple[int, int]:
        return (int(self.walls.shape[0]), int(self.walls.shape[1]))

    def to_text(self) -> str:
        """The room in the env's symbols, one row per line."""
        return render_text(self.walls, frozenset(self.targets), frozenset(self.boxes), self.player)


def render_text(
    walls: np.ndarray, targets: frozenset[Cell], boxes: frozenset[Cell] | set[Cell], player: Cell
) -> str:
    """Draw a state with the env's symbols, one row per line."""
    height, width = walls.shape
    rows = []
    for r in range(height):
        row = []
        for c in range(width):
            cell = (r, c)
            if walls[r, c]:
                row.append(WALL)
            elif cell == player:
                row.append(PLAYER_ON_TARGET if cell in targets else PLAYER)
            elif cell in boxes:
                row.append(BOX_ON_TARGET if cell in targets else BOX)
            else:
                row.append(TARGET if cell in targets else FLOOR)
        rows.append("".join(row))
    return "\n".join(rows)


def parse_layout(text: str) -> SokobanRoom:
    """Build a room from its text in the env's symbols (the inverse of :meth:`SokobanRoom.to_text`).

    Raises ``ValueError`` unless the rows are equally long, the symbols known, there is exactly one
    player, at least one box and as many boxes as targets.
    """
    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError("a Sokoban layout needs one or more rows of equal length")
    walls = np.zeros((len(rows), len(rows[0])), dtype=bool)
    targets: list[Cell] = []
    boxes: list[Cell] = []
    players: list[Cell] = []
    for r, row in enumerate(rows):
        for c, ch in enumerate(row):
            cell = (r, c)
            if ch == WALL:
                walls[r, c] = True
            elif ch in (TARGET, BOX_ON_TARGET, PLAYER_ON_TARGET):
                targets.append(cell)
            elif ch != FLOOR and ch not in (BOX, PLAYER):
                raise ValueError(f"unknown symbol {ch!r} at row {r}, column {c}")
            if ch in (BOX, BOX_ON_TARGET):
                boxes.append(cell)
            if ch in (PLAYER, PLAYER_ON_TARGET):
                players.append(cell)
    if len(players) != 1:
        raise ValueError(f"a Sokoban layout needs exactly one player, found {len(players)}")
    if not boxes or len(boxes) != len(targets):
        raise ValueError(
            f"a Sokoban layout needs as many boxes as targets (>= 1); found {len(boxes)} and {len(targets)}"
        )
    return SokobanRoom(walls, tuple(targets), tuple(boxes), players[0])


def orient_room(room: SokobanRoom, orientation: int) -> SokobanRoom:
    """``room`` under one of its 8 symmetries: ``orientation % 4`` quarter turns clockwise, then a
    left-right mirror if ``orientation >= 4`` (0 is the room itself). Moves, pushes and plan lengths
    carry over: a room's turned copy is solved by its plan's moves turned the same way.
    """
    if isinstance(orientation, bool) or orientation not in range(ORIENTATIONS):
        raise ValueError(f"orientation must be an int 0-{ORIENTATIONS - 1}, got {orientation!r}")
    # Turn a grid of cell numbers the same way as the walls, then read where each number went.
    numbers = np.arange(room.walls.size).reshape(room.walls.shape)

    def turn(grid: np.ndarray) -> np.ndarray:
        grid = np.rot90(grid, k=-(int(orientation) % 4))
        return np.fliplr(grid) if orientation >= 4 else grid

    width = room.walls.shape[1]
    moved = {int(n): (int(r), int(c)) for (r, c), n in np.ndenumerate(turn(numbers))}

    def cells(old: tuple[Cell, ...]) -> tuple[Cell, ...]:
        return tuple(sorted(moved[r * width + c] for r, c in old))

    return SokobanRoom(
        np.ascontiguousarray(turn(room.walls)),
        cells(room.targets),
        cells(room.boxes),
        moved[room.player[0] * width + room.player[1]],
    )


def _check_orientation(value: Any, seed: int | None) -> int:
    """The reset option ``orientation``: an int 0-7, or ``"seed"`` for ``seed % 8``."""
    if value == "seed":
        if seed is None:
            raise ValueError('orientation="seed" turns a generated room by its seed; a layout has none')
        return seed % ORIENTATIONS
    if isinstance(value, bool) or value not in range(ORIENTATIONS):
        raise ValueError(
            f'orientation must be an int 0-{ORIENTATIONS - 1} or "seed" (the seed modulo 8), got {value!r}'
        )
    return int(value)


_GENERATION_LOCK = threading.Lock()
_generator: Callable[..., Any] | None = None


def _gym_sokoban_generator() -> Callable[..., Any]:
    """gym-sokoban's ``room_utils.generate_room``, loaded without importing the ``gym_sokoban`` package.

    The package's ``__init__`` imports the old ``gym`` (which prints a deprecation notice to stderr)
    and ``pkg_resources`` (a warning) only to register gym envs we never use; ``room_utils`` itself
    needs nothing but ``random`` and numpy. Falls back to the ordinary import if the file moved.
    Call under ``_GENERATION_LOCK``.
    """
    global _generator
    if _generator is None:
        module = None
        package = importlib.util.find_spec("gym_sokoban")
        if package is not None and package.submodule_search_locations:
            path = f"{list(package.submodule_search_locations)[0]}/envs/room_utils.py"
            spec = importlib.util.spec_from_file_location("_agentrl_gym_sokoban_room_utils", path)
            if spec is not None and spec.loader is not None:
                try:
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                except OSError:
                    module = None
        if module is None:  # pragma: no cover - only with an unusual gym-sokoban install
            from gym_sokoban.envs import room_utils as module  # type: ignore[no-redef]
        _generator = module.generate_room
    return _generator


def generate_room(seed: int, dim_room: Sequence[int] = (6, 6), num_boxes: int = 1) -> SokobanRoom:
    """The room for ``seed`` from gym-sokoban's generator, as gym-sokoban's env configures it.

    Deterministic: attempt ``i`` seeds the global ``random`` and ``np.random`` from
    ``SeedSequence([seed, i])``; attempts that the generator rejects (``RuntimeError('Not enough
    free spots')``, ``RuntimeWarning('Generated Model with score == 0')``) move on to ``i + 1``.
    Both global generators are restored afterwards, and a lock keeps threads from interleaving.

    Raises ``ValueError`` if ``seed`` is not a non-negative int or the size is bad, ``RuntimeError`` if
    :data:`MAX_GENERATION_ATTEMPTS` attempts all fail (too many boxes for the room).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    dim = _check_dim(dim_room)
    num_boxes = _check_num_boxes(num_boxes)
    num_steps = int(1.7 * (dim[0] + dim[1]))  # gym-sokoban's own setting
    last_error: Exception | None = None
    with _GENERATION_LOCK:
        generator = _gym_sokoban_generator()
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            for attempt in range(MAX_GENERATION_ATTEMPTS):
                np_seed, py_seed = np.random.SeedSequence([int(seed), attempt]).generate_state(2)
                np.random.seed(int(np_seed))
                random.seed(int(py_seed))
                try:
                    fixed, state, _ = generator(
                        dim=dim,
                        p_change_directions=0.35,
                        num_steps=num_steps,
                        num_boxes=num_boxes,
                        tries=4,
                        second_player=False,
                    )
                    break
                except (RuntimeError, RuntimeWarning) as exc:
                    last_error = exc
            else:
                raise RuntimeError(
                    f"gym-sokoban could not generate a {dim[0]}x{dim[1]} room with {num_boxes} box(es) "
                    f"for seed {seed} in {MAX_GENERATION_ATTEMPTS} attempts (last: {last_error}); "
                    "use a larger room or fewer boxes"
                )
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    # gym-sokoban codes: fixed 0 wall / 1 floor / 2 target; state adds 3-4 boxes, 5 player.
    player = _cells(state == 5)[0]
    return SokobanRoom(fixed == 0, _cells(fixed == 2), _cells((state == 3) | (state == 4)), player)


def _cells(mask: np.ndarray) -> tuple[Cell, ...]:
    """(row, col) of each True cell, as plain ints (JSON-friendly, hash-equal to tuples)."""
    return tuple((int(r), int(c)) for r, c in np.argwhere(mask))


def _check_dim(dim_room: Any) -> tuple[int, int]:
    try:
        dim = (int(dim_room[0]), int(dim_room[1]))
        ok = len(dim_room) == 2 and min(dim) >= 4
    except (TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        raise ValueError(f"dim_room must be two ints >= 4 (rows, cols), got {dim_room!r}")
    return dim


def _check_min_plan_length(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(
            f"min_plan_length must be an int >= 0 (moves of the room's shortest plan), got {n!r}"
        )
    return int(n)


def _check_room_block(value: Any, options: dict[str, Any]) -> int:
    """The reset option ``room_block``: seeds in aligned blocks of this many share one room."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"room_block must be an int >= 1 (seeds that share one room), got {value!r}")
    if value > 1 and "layout" in options:
        raise ValueError(
            "room_block shares a generated room between seeds; a layout fixes the room: drop one"
        )
    if value > 1 and options.get("orientation") != "seed":
        raise ValueError(
            "room_block repeats one room over consecutive seeds for orientation='seed' to turn it a "
            "different way in each; without it the seeds would play the same room alike: add "
            "orientation: seed"
        )
    return int(value)


def _check_progress_reward(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(
            f"progress_reward must be a number >= 0 (points per move of progress; 0 turns it off), got {value!r}"
        )
    return float(value)


def _check_num_boxes(num_boxes: Any) -> int:
    if isinstance(num_boxes, bool) or not isinstance(num_boxes, (int, np.integer)) or num_boxes < 1:
        raise ValueError(f"num_boxes must be an int >= 1, got {num_boxes!r}")
    return int(num_boxes)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------

TILE = 16
# Tile codes for rgb rendering.
_T_WALL, _T_FLOOR, _T_TARGET, _T_BOX_ON_TARGET, _T_BOX, _T_PLAYER, _T_PLAYER_ON_TARGET = range(7)


def _make_tiles(size: int = TILE) -> np.ndarray:
    """(7, size, size, 3) uint8 tiles: plain squares, simple enough to tell apart at a glance."""
    floor, target_red = (225, 215, 190), (200, 50, 50)
    tiles = np.empty((7, size, size, 3), dtype=np.uint8)
    tiles[:] = floor
    tiles[_T_WALL] = (70, 70, 80)
    tiles[_T_WALL, size // 2 - 1 : size // 2 + 1, :] = (50, 50, 60)  # a mortar line
    lo, hi = size // 4, size - size // 4  # centre square: the target mark
    for t in (_T_TARGET, _T_PLAYER_ON_TARGET, _T_BOX_ON_TARGET):
        tiles[t, lo:hi, lo:hi] = target_red
    b0, b1 = 2, size - 2  # a box fills most of the tile
    tiles[_T_BOX, b0:b1, b0:b1] = (150, 100, 40)
    tiles[_T_BOX_ON_TARGET, b0:b1, b0:b1] = (60, 160, 70)
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - (size - 1) / 2) ** 2 + (xx - (size - 1) / 2) ** 2 <= (size * 0.3) ** 2
    for t in (_T_PLAYER, _T_PLAYER_ON_TARGET):
        tiles[t][disc] = (40, 80, 200)
    return tiles


_TILES = _make_tiles()


# --------------------------------------------------------------------------------------------
# The env
# --------------------------------------------------------------------------------------------


def _instructions(max_actions: int) -> str:
    # Short on purpose: the system prompt is in every episode's context, so its tokens are paid in
    # every SFT and RL update and every rollout (the rewards are the env's contract, not the model's:
    # the returns teach them).
    return (
        "Sokoban: push every box onto a target.\n"
        f"Grid: {WALL} wall, {FLOOR} floor, {TARGET} target, {BOX} box, {BOX_ON_TARGET} box on a target, "
        f"{PLAYER} you, {PLAYER_ON_TARGET} you on a target; row 1 is the top.\n"
        "Moves: Up, Down, Left, Right. Walking into a box pushes it one square if the square beyond is "
        "floor or a target; boxes cannot be pulled.\n"
        "Answer with moves separated by ||, for example: Up || Left"
    )


def _relative(cell: Cell, of: Cell) -> str:
    """Where ``cell`` lies from ``of`` in words: ``"below and right of"``, ``"left of"``, ``"at"``."""
    vertical = "above" if cell[0] < of[0] else "below" if cell[0] > of[0] else ""
    horizontal = "left of" if cell[1] < of[1] else "right of" if cell[1] > of[1] else ""
    if vertical and horizontal:
        return f"{vertical} and {horizontal}"
    return vertical or horizontal or "at"


def _steps(delta: int, minus: str, plus: str) -> str:
    """``"2 down"``, ``"1 up"`` or ``"same"`` for a signed difference of rows (or columns)."""
    return "same" if delta == 0 else f"{abs(delta)} {minus if delta < 0 else plus}"


def _offset(cell: Cell, of: Cell) -> str:
    """How far ``cell`` lies from ``of``: ``"1 up and 2 left"`` (rows first), ``"same"`` if equal."""
    rows, cols = cell[0] - of[0], cell[1] - of[1]
    parts = [_steps(rows, "up", "down")] if rows else []
    if cols:
        parts.append(_steps(cols, "left", "right"))
    return " and ".join(parts) or "same"


def _either(moves: Sequence[str]) -> str:
    """``"Up"``, ``"Up or Left"``, ``"Up, Down or Left"`` (``moves`` not empty)."""
    return moves[0] if len(moves) == 1 else f"{', '.join(moves[:-1])} or {moves[-1]}"


def _walk_sentence(push: str, walk: Sequence[str]) -> str:
    """``"Walk to push Up: Down, Left."``, ``"Walk to push Left: none."``"""
    return f"Walk to push {push}: {', '.join(walk) or 'none'}."


def _first_push(plan: Sequence[str], player: Cell, box: Cell) -> tuple[int, str, Cell] | None:
    """The first move of ``plan`` that pushes the (only) box: its index, the move, and where the
    player stands for it."""
    for i, move in enumerate(plan):
        dr, dc = DELTAS[ACTIONS.index(move)]
        nxt = (player[0] + dr, player[1] + dc)
        if nxt == box:
            return i, move, player
        player = nxt
    return None


class SokobanEnv(TextEnv):
    """Push every box onto a target in a small grid room (multi-turn; gym-sokoban rooms).

    Observation: the grid, one row per line, in RAGEN's symbols (``#`` wall, ``_`` floor,
    ``O`` target, ``X`` box, ``√`` box on target, ``P`` player, ``S`` player on target).
    Action: ``Up``, ``Down``, ``Left`` or ``Right`` (case and surrounding whitespace ignored).
    Any other text is invalid: ``action_is_valid=False``, reward :attr:`invalid_action_penalty`,
    state unchanged. Walking into a wall (or into a box that cannot move) is a *valid* move that
    changes nothing and costs the step penalty. Every step, valid or not, counts toward
    ``max_steps``.

    Rewards (gym-sokoban's): :attr:`step_penalty` per step, plus :attr:`box_on_target_reward` for
    each box pushed onto a target, :attr:`box_off_target_penalty` for each pushed off one, and
    :attr:`success_reward` on the step that puts the last box on a target, which ends the episode
    (``terminated=True``, ``info["success"]=True``). Reaching ``max_steps`` first gives
    ``truncated=True``.

    ``reset(seed=s)`` builds the room :func:`generate_room` gives for ``s`` and reports ``s`` as
    ``info["seed"]``; ``reset()`` without a seed draws one from ``self.np_random``, so a seeded
    env's sequence of rooms is reproducible too. ``options`` may hold ``dim_room`` and
    ``num_boxes`` (this episode only) or ``layout``, a room in the env's symbols, and
    ``min_plan_length``: the first room whose shortest plan has at least that many moves among the
    rooms of seeds ``s, s + 2**40, s + 2 * 2**40, ...`` (the one built is ``info["room_seed"]``;
    ``reset(seed=s, options=...)`` rebuilds it). Training on the long rooms a warm start still
    fails spends the rollouts where they can teach something. ``orientation`` turns and mirrors
    the room (:func:`orient_room`; ``info["orientation"]``): an int 0-7, or ``"seed"`` for the
    episode seed modulo 8, so that any 8 consecutive seeds play all 8 symmetries and no push
    direction comes first more often than another (RL's rooms: a few dozen rooms drawn plain lean
    to one direction, and RL learns that lean instead of the walls; docs/sokoban-recipe.md).
    ``room_block`` (an int >= 1, with ``orientation="seed"``) makes the seeds of each aligned block
    of that many (``s - s % room_block`` onwards) share the block's first seed's room, each turned
    by its own seed: with 4, four consecutive groups play one room in four symmetries, so the
    first pushes a step's successes teach are balanced over the directions room by room.
    ``progress_reward`` (a float >= 0, this episode only) adds potential-based shaping to every
    step: that many points per move by which the step shortened the shortest plan from the
    current state (:meth:`oracle_actions`), taken away again per move it lengthened it. A state
    from which the room cannot be solved (a box in a corner) counts as far from the goal as the
    room's start, so a push into a dead end takes back all progress made. Over an episode the
    shaping sums to ``progress_reward`` times the moves of progress kept, so tries that all fail
    still differ by how far they got (RL's long rooms, which no try solves; the reward of a
    solved room grows by the same amount for every solution).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    max_actions_per_turn: int = 10
    #: The words the rollout manager accepts as actions (anything else is a format error, no step).
    valid_actions: tuple[str, ...] = ("Up", "Down", "Left", "Right")
    example_answer: str = "Up || Left"
    invalid_action_penalty: float = -0.1
    step_penalty: float = -0.1
    box_on_target_reward: float = 1.0
    box_off_target_penalty: float = -1.0
    success_reward: float = 10.0

    def __init__(  # noqa: PLR0913 (every keyword is a knob of env.kwargs, each with a default)
        self,
        dim_room: Sequence[int] = (6, 6),
        num_boxes: int = 1,
        max_steps: int = 100,
        render_mode: str | None = "ansi",
        invalid_action_penalty: float | None = None,
        oracle_max_nodes: int = 200_000,
        plan_in_info: bool = True,
        describe_positions: bool = False,
        describe_pushes: bool = False,
        exclude_dead_pushes: bool = False,
        describe_walks: bool = False,
    ):
        """
        Args:
            dim_room: (rows, cols) of generated rooms, walls included; each >= 4.
            num_boxes: boxes (and targets) per generated room.
            max_steps: steps per episode before ``truncated=True``.
            render_mode: ``"ansi"`` (text), ``"rgb_array"`` (16 px tiles) or ``None``.
            invalid_action_penalty: overrides the class default (-0.1) for this env.
            oracle_max_nodes: the BFS state limit of :meth:`oracle_actions` and of the plan in info.
            plan_in_info: solve each room at reset and put ``optimal_plan`` and
                ``optimal_plan_length`` in reset's info (``None`` if not solved within
                ``oracle_max_nodes``). Cheap for 6x6 rooms; turn off for large ones.
            describe_positions: add a line under the grid naming where the player, the boxes off
                target and the empty targets are (``Player at row 5 column 2. Box at ...``; rows
                and columns from 1). Reading coordinates off an ASCII grid is the hardest part of
                the task for a small model; this makes the observation symbolic as well.
            describe_pushes: add a line under the grid naming, for each box off target, the
                directions the walls and the other boxes let it be pushed (``The box at row 3
                column 4 can be pushed Up or Left.``): the square beyond the box and the square
                behind it, where the player stands to push, are both free. Whether the player can
                reach that square is left to the agent. Which pushes a room allows is what a
                135M model fails to read off the grid (docs/sokoban-recipe.md).
            exclude_dead_pushes: with ``describe_pushes``, leave out the pushes that would put a
                box on a dead square, one from which no pushes bring a lone box to any target (a
                corner that is not a target, a wall side with no target along it:
                :func:`~agentrl_envs.sokoban_solver.live_squares`, the solver's own pruning). A box
                already on one ``cannot be pushed``. Such a push loses the room for good, and which
                squares are dead depends on walls a few squares away, what the 135M model's thought
                does not work out (docs/sokoban-recipe.md, "Dead pushes").
            describe_walks: with ``describe_pushes``, follow each box's pushes with the shortest walk
                to the square each push is made from, round walls and boxes (``Walk to push Up:
                Down, Left. Walk to push Left: none.``); a push whose square the player cannot reach
                gets none. Finding that route is mechanical, and the 135M model fails at it where
                the walk goes round the box: it walks the square's offset straight and pushes the
                box the wrong way (docs/sokoban-recipe.md, "Two ways to the target, and the walk
                around the box"). Which push to make is still the agent's choice.
        """
        super().__init__(render_mode=render_mode)
        self.dim_room = _check_dim(dim_room)
        self.num_boxes = _check_num_boxes(num_boxes)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
        self.max_steps = max_steps
        if invalid_action_penalty is not None:
            self.invalid_action_penalty = float(invalid_action_penalty)
        self.oracle_max_nodes = int(oracle_max_nodes)
        self.plan_in_info = bool(plan_in_info)
        self.describe_positions = bool(describe_positions)
        self.describe_pushes = bool(describe_pushes)
        self.exclude_dead_pushes = bool(exclude_dead_pushes)
        self.describe_walks = bool(describe_walks)
        for name in ("exclude_dead_pushes", "describe_walks"):
            if getattr(self, name) and not self.describe_pushes:
                raise ValueError(
                    f"{name} adds to the pushes line of describe_pushes, which is off: "
                    f"set describe_pushes=True too (or drop {name})"
                )
        self.instructions = _instructions(self.max_actions_per_turn)
        if self.describe_positions:
            self.instructions += (
                "\nUnder the grid: the positions of you, of the boxes off a target and of the empty "
                "targets (rows and columns count from 1)."
            )
        if self.describe_pushes:
            # Worded to follow the positions' sentence (the main job's prompt, as measured).
            self.instructions += (
                "\nThen the directions each box can be pushed, walls and boxes allowing"
                if self.describe_positions
                else "\nUnder the grid: the directions each box off a target can be pushed, walls and boxes allowing"
            )
            self.instructions += (
                ", and only onto squares from which it can still reach a target."
                if self.exclude_dead_pushes
                else "."
            )
            if self.describe_walks:
                self.instructions += " After each push, your shortest walk to the square it is pushed from."

        # Episode state, set by reset.
        self._room: SokobanRoom | None = None
        self._floor: frozenset[Cell] = frozenset()
        self._live: frozenset[Cell] = frozenset()
        self._base_chars: list[str] = []
        self._stride = 1
        self._targets: frozenset[Cell] = frozenset()
        self._boxes: set[Cell] = set()
        self._player: Cell = (0, 0)
        self._steps = 0
        self._on_target = 0
        # progress_reward (a reset option): points per move of progress, and the shortest plan's
        # length from the current state (the start's length where the room is unsolvable).
        self._progress_reward = 0.0
        self._start_distance = 0
        self._distance = 0
        # Last oracle answer, keyed by (player, boxes): the plan solved at reset is reused.
        self._plan_cache: tuple[tuple[Cell, frozenset[Cell]], list[str] | None] | None = None

    # ---- Gymnasium API -----------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - RESET_OPTIONS
        if unknown:
            raise ValueError(
                f"unknown reset options {sorted(unknown)}; known: {', '.join(sorted(RESET_OPTIONS))}"
            )
        min_plan = _check_min_plan_length(options.get("min_plan_length", 0))
        block = _check_room_block(options.get("room_block", 1), options)
        if min_plan and "layout" in options:
            raise ValueError("min_plan_length picks among generated rooms; a layout fixes the room: drop one")
        room_seed: int | None
        if "layout" in options:
            room = parse_layout(options["layout"])
            room_seed = None
            orientation = _check_orientation(options.get("orientation", 0), room_seed)
        else:
            # Without a seed, draw one from np_random: reproducible from the env's seed, and
            # reported in info so any episode can be rebuilt with reset(seed=info["seed"]).
            room_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**63 - 1))
            orientation = _check_orientation(options.get("orientation", 0), room_seed)
            dim_room = options.get("dim_room", self.dim_room)
            num_boxes = options.get("num_boxes", self.num_boxes)
            # min_plan_length: candidate k is the room of seed + k * 2**40 (k = 0 first), so the
            # rooms stay a function of the episode seed and never share a seed with a small
            # (held-out) one. The plan solved here is cached for info and the oracle.
            # (A room's symmetries share its plan length, so the room is picked before it is turned.)
            # room_block: the block's first seed builds the room; each seed keeps its orientation.
            block_seed = room_seed - room_seed % block
            for k in range(MAX_PLAN_LENGTH_DRAWS):
                candidate = block_seed + k * 2**40
                room = generate_room(candidate, dim_room, num_boxes)
                self._set_room(room)
                plan = self.oracle_actions() if min_plan else None
                if not min_plan or (plan is not None and len(plan) >= min_plan):
                    break
            else:
                raise ValueError(
                    f"no room with a plan of at least min_plan_length={min_plan} moves in "
                    f"{MAX_PLAN_LENGTH_DRAWS} draws of {dim_room} rooms with {num_boxes} box(es): lower it"
                )
        if orientation:
            room = orient_room(room, orientation)
        if self._room is not room:
            self._set_room(room)
        self._start_progress(options.get("progress_reward", 0.0))
        info: dict[str, Any] = {
            "success": self._on_target == len(self._targets),
            "action_is_valid": True,
            "seed": room_seed,
            "dim_room": list(room.dim),
            "num_boxes": len(room.boxes),
            "player": list(room.player),
            "boxes": [list(b) for b in room.boxes],
            "targets": [list(t) for t in room.targets],
            "boxes_on_target": self._on_target,
            "steps": 0,
        }
        if (min_plan or block > 1) and room_seed is not None:
            info["room_seed"] = candidate
        if "orientation" in options:
            info["orientation"] = orientation
        if self.plan_in_info:
            plan = self.oracle_actions()
            info["optimal_plan"] = plan
            info["optimal_plan_length"] = None if plan is None else len(plan)
        return self._observation(), info

    def _set_room(self, room: SokobanRoom) -> None:
        """Make ``room`` the episode's: its walls, floor, targets, boxes and player; no steps yet."""
        self._room = room
        h, w = room.dim
        self._floor = frozenset((r, c) for r in range(h) for c in range(w) if not room.walls[r, c])
        # Where a box may still go (exclude_dead_pushes): the walls and targets fix it for the episode.
        self._live = live_squares(room.walls, room.targets) if self.exclude_dead_pushes else self._floor
        # The fixed part of the text (walls, floor, targets), one char per cell plus a newline per
        # row: each observation copies it and overlays boxes and player.
        self._stride = w + 1
        self._base_chars = list(
            render_text(room.walls, frozenset(room.targets), frozenset(), (-1, -1)) + "\n"
        )
        self._targets = frozenset(room.targets)
        self._boxes = set(room.boxes)
        self._player = room.player
        self._steps = 0
        self._on_target = len(self._boxes & self._targets)
        self._plan_cache = None

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._room is None:
            raise RuntimeError("call reset() before step()")
        self._steps += 1
        move = parse_action(action)
        moved_player = moved_box = False
        if move is None:
            reward = self.invalid_action_penalty
        else:
            reward = self.step_penalty
            dr, dc = DELTAS[move]
            r, c = self._player
            nxt = (r + dr, c + dc)
            if nxt in self._floor:
                if nxt in self._boxes:
                    behind = (nxt[0] + dr, nxt[1] + dc)
                    if behind in self._floor and behind not in self._boxes:
                        self._boxes.remove(nxt)
                        self._boxes.add(behind)
                        self._player = nxt
                        moved_player = moved_box = True
                else:
                    self._player = nxt
                    moved_player = True
            if moved_box:
                on_target = len(self._boxes & self._targets)
                if on_target > self._on_target:
                    reward += self.box_on_target_reward
                elif on_target < self._on_target:
                    reward += self.box_off_target_penalty
                self._on_target = on_target
                if on_target == len(self._targets):
                    reward += self.success_reward
        if moved_player:
            reward += self._progress()
        success = self._on_target == len(self._targets)
        terminated = success
        truncated = not terminated and self._steps >= self.max_steps
        info = {
            "success": success,
            "action_is_valid": move is not None,
            "action": None if move is None else ACTIONS[move],
            "moved_player": moved_player,
            "moved_box": moved_box,
            "boxes_on_target": self._on_target,
            "steps": self._steps,
        }
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: the grid text (the observation). ``"rgb_array"``: an (H*16, W*16, 3) uint8 image."""
        if self._room is None or self.render_mode is None:
            return None
        if self.render_mode == "rgb_array":
            codes = self._tile_codes()
            h, w = codes.shape
            return _TILES[codes].transpose(0, 2, 1, 3, 4).reshape(h * TILE, w * TILE, 3)
        return self._text()

    # ---- Oracle --------------------------------------------------------------------------------

    def oracle_thought(self) -> str:
        """A short, true account of the next push for warm-start demonstrations (rows/columns from 1).

        With one box off its target it works from the positions to the moves in steps a small model
        can copy: each comparison sits right after the two numbers it compares. Where the target
        lies from the box, row and column; the optimal plan's next push and the square to push it
        from; where that square lies from the player. For example::

            I am at row 2 column 4. Box at row 3 column 3. Target at row 5 column 3. Box row 3,
            target row 5: 2 down. Box column 3, target column 3: same. I push the box Down from row 2
            column 3. I am at row 2 column 4: 1 left.

        (With ``describe_positions`` the observation names the positions already; the thought then
        starts at "Box row".) The optimal plan's length closes the thought without a single box.
        """
        # With the positions under the grid the thought need not copy them; from the bare grid,
        # reading them off is the first step.
        parts = [] if self.describe_positions else [self._positions("I am at")]
        boxes = [b for b in self._boxes if b not in self._targets]
        targets = [t for t in self._targets if t not in self._boxes]
        plan = self.oracle_actions()
        push = _first_push(plan or [], self._player, boxes[0]) if len(boxes) == 1 else None
        if len(boxes) == 1 and len(targets) == 1 and push is not None:
            (br, bc), (tr, tc) = boxes[0], targets[0]
            parts.append(f"Box row {br + 1}, target row {tr + 1}: {_steps(tr - br, 'up', 'down')}.")
            parts.append(f"Box column {bc + 1}, target column {tc + 1}: {_steps(tc - bc, 'left', 'right')}.")
            if self.describe_pushes:
                # Copied next to the choice it constrains: the push must be one the walls allow.
                parts.append(f"It can be pushed {_either(self._free_pushes(boxes[0]))}.")
            _, move, (sr, sc) = push
            parts.append(f"I push the box {move} from row {sr + 1} column {sc + 1}.")
            walk = self._walk((sr, sc)) if self.describe_walks else None
            if walk is not None:
                # Copied from the observation: the route is read, not worked out.
                parts.append(_walk_sentence(move, walk))
            else:
                (pr, pc) = self._player
                where = "there already" if (sr, sc) == (pr, pc) else _offset((sr, sc), (pr, pc))
                parts.append(f"I am at row {pr + 1} column {pc + 1}: {where}.")
        elif plan:
            parts.append(f"It takes {len(plan)} move{'s' if len(plan) != 1 else ''}.")
        return " ".join(parts)

    def oracle_turn_actions(self) -> list[str] | None:
        """The actions of one demonstration reply: what :meth:`oracle_thought` explains.

        With one box off its target, the optimal plan's moves up to and including its next push
        (the walk to the square the thought names, then the push); the moves after it are the next
        turn's, worked out from the new positions. A reply that also guessed them would teach the
        model to append moves its thought never justified. Otherwise the whole plan.
        """
        plan = self.oracle_actions()
        boxes = [b for b in self._boxes if b not in self._targets]
        push = _first_push(plan, self._player, boxes[0]) if plan and len(boxes) == 1 else None
        if push is None:
            return plan
        walk = self._walk(push[2]) if self.describe_walks else None
        # The walk the observation names, as long as the plan's own (both shortest, round the box):
        # the reply then makes the walk its thought copied.
        return [*walk, push[1]] if walk is not None else plan[: push[0] + 1]

    def actions_follow_thought(self, thought: str, actions: Sequence[str]) -> bool | None:
        """Whether one reply's ``actions`` (before they are sent) make the push its ``thought`` names.

        The thought's first "I push the box <move>" names the push (the oracle thought's sentence).
        The actions follow it if that push is one the walls allow, the moves before it walk a
        shortest way to the square it is made from (round walls and the box), and nothing comes
        after it; a reply that stops short of the push, still on such a walk, follows it too (the
        walk may take more than one turn). ``None`` where there is no single box off its target or
        the thought names no push: nothing to judge. An outcome reward alone would reinforce a
        success whose answer ignored its reasoning (a reversed walk that happened to work), and
        the model would learn that the two need not agree (docs/sokoban-recipe.md).
        """
        boxes = [b for b in self._boxes if b not in self._targets]
        named = _NAMED_PUSH.search(thought[:MAX_THOUGHT_CHARS])
        if len(boxes) != 1 or named is None:
            return None
        box, push = boxes[0], named.group(1).capitalize()
        # Whether the reply does what its thought says, not whether the thought was wise: a push
        # onto a dead square the moves then make is faithful (exclude_dead_pushes leaves it off
        # the pushes line, not off the walls' list).
        if push not in self._free_pushes(box, live_only=False):
            return False
        dr, dc = DELTAS[ACTIONS.index(push)]
        square = (box[0] - dr, box[1] - dc)
        distance = self._distances_to(square)
        cell = self._player
        for i, action in enumerate(actions):
            move = parse_action(action)
            if move is None:
                return False
            if cell == square:
                # At the square: the push, and it ends the reply.
                return ACTIONS[move] == push and i == len(actions) - 1
            nxt = (cell[0] + DELTAS[move][0], cell[1] + DELTAS[move][1])
            if distance.get(nxt, -1) != distance.get(cell, -2) - 1:
                return False
            cell = nxt
        return True

    def _distances_to(self, square: Cell) -> dict[Cell, int]:
        """Walking distance of each floor cell to ``square`` round walls and boxes (BFS)."""
        distance = {square: 0}
        queue = deque([square])
        while queue:
            cell = queue.popleft()
            for dr, dc in DELTAS:
                nxt = (cell[0] + dr, cell[1] + dc)
                if nxt in self._floor and nxt not in self._boxes and nxt not in distance:
                    distance[nxt] = distance[cell] + 1
                    queue.append(nxt)
        return distance

    def oracle_actions(self, max_nodes: int | None = None) -> list[str] | None:
        """A shortest plan (``["Up", "Left", ...]``) from the current state, by BFS over (player, boxes).

        ``[]`` if solved already; ``None`` if no plan was found within ``max_nodes`` states
        (default ``oracle_max_nodes``) or the room is unsolvable from here (a box in a corner).
        """
        if self._room is None:
            raise RuntimeError("call reset() before oracle_actions()")
        state = (self._player, frozenset(self._boxes))
        if self._plan_cache is None or self._plan_cache[0] != state or max_nodes is not None:
            plan = solve(
                self._room.walls,
                self._boxes,
                self._targets,
                self._player,
                max_nodes=self.oracle_max_nodes if max_nodes is None else max_nodes,
            )
            self._plan_cache = (state, plan)
        plan = self._plan_cache[1]
        return None if plan is None else list(plan)

    # ---- Internals -----------------------------------------------------------------------------

    def _start_progress(self, progress_reward: Any) -> None:
        """Reset's part of the ``progress_reward`` option: the points a move of progress earns, and
        the shortest plan's length from the start."""
        self._progress_reward = _check_progress_reward(progress_reward)
        if self._progress_reward:
            plan = self.oracle_actions()  # reset's own plan, cached: no second search
            # An unsolvable room starts at 0 and stays there: no move makes progress.
            self._start_distance = self._distance = 0 if plan is None else len(plan)

    def _progress(self) -> float:
        """The shaping a move earns: ``progress_reward`` times the moves it took off the shortest plan
        (0 without the option). A BFS from the new state; well under a millisecond in 6x6 rooms."""
        if not self._progress_reward:
            return 0.0
        distance = self._plan_distance()
        gain, self._distance = self._distance - distance, distance
        return self._progress_reward * gain

    def _plan_distance(self) -> int:
        """Moves of the shortest plan from the current state; the start's where there is none."""
        plan = self.oracle_actions()
        return self._start_distance if plan is None else len(plan)

    def _positions(self, player: str) -> str:
        """``"{player} row 5 column 2. Box at row 5 column 3. Target at row 5 column 4."`` (from 1)."""

        def where(cell: Cell) -> str:
            return f"row {cell[0] + 1} column {cell[1] + 1}"

        boxes = sorted(b for b in self._boxes if b not in self._targets)
        targets = sorted(t for t in self._targets if t not in self._boxes)
        parts = [f"{player} {where(self._player)}."]
        if boxes:
            parts.append("Box at " + ", ".join(map(where, boxes)) + ".")
        if targets:
            parts.append("Target at " + ", ".join(map(where, targets)) + ".")
        return " ".join(parts)

    def _free_pushes(self, box: Cell, live_only: bool = True) -> list[str]:
        """The moves that would push ``box`` (in ``ACTIONS`` order): the square beyond it and the square
        behind it (where the player must stand) are both floor with no other box, and with
        ``exclude_dead_pushes`` (unless ``live_only`` is False) the square beyond is not dead."""
        live = self._live if live_only else self._floor
        return [
            move
            for move, (dr, dc) in zip(ACTIONS, DELTAS)
            if all(
                cell in self._floor and cell not in self._boxes
                for cell in ((box[0] + dr, box[1] + dc), (box[0] - dr, box[1] - dc))
            )
            and (box[0] + dr, box[1] + dc) in live
        ]

    def _walk(self, square: Cell) -> list[str] | None:
        """A shortest walk of the player to ``square`` round walls and boxes (moves in ``ACTIONS``
        order break ties), ``[]`` if there already, ``None`` if it cannot be reached."""
        paths: dict[Cell, list[str]] = {self._player: []}
        queue = deque([self._player])
        while queue:
            cell = queue.popleft()
            if cell == square:
                return paths[cell]
            for move, (dr, dc) in zip(ACTIONS, DELTAS):
                nxt = (cell[0] + dr, cell[1] + dc)
                if nxt in self._floor and nxt not in self._boxes and nxt not in paths:
                    paths[nxt] = [*paths[cell], move]
                    queue.append(nxt)
        return None

    def _pushes(self) -> str:
        """``"The box at row 3 column 4 can be pushed Up or Left."`` for each box off a target."""

        def sentence(box: Cell) -> str:
            free = self._free_pushes(box)
            where = f"The box at row {box[0] + 1} column {box[1] + 1}"
            if not free:
                return f"{where} cannot be pushed."
            out = [f"{where} can be pushed {_either(free)}."]
            for move in free if self.describe_walks else ():
                dr, dc = DELTAS[ACTIONS.index(move)]
                if (walk := self._walk((box[0] - dr, box[1] - dc))) is not None:
                    out.append(_walk_sentence(move, walk))
            return " ".join(out)

        return " ".join(sentence(b) for b in sorted(self._boxes) if b not in self._targets)

    def _observation(self) -> str:
        """What the agent sees: the grid, then with ``describe_positions`` the positions and with
        ``describe_pushes`` the pushes the walls allow, one line each."""
        lines = [self._text()]
        if self.describe_positions:
            lines.append(self._positions("Player at"))
        if self.describe_pushes and (pushes := self._pushes()):
            lines.append(pushes)
        return "\n".join(lines)

    def _text(self) -> str:
        """The current grid; equal to ``render_text(...)`` of the state, built faster."""
        chars = self._base_chars.copy()
        stride = self._stride
        targets = self._targets
        for r, c in self._boxes:
            chars[r * stride + c] = BOX_ON_TARGET if (r, c) in targets else BOX
        r, c = self._player
        chars[r * stride + c] = PLAYER_ON_TARGET if self._player in targets else PLAYER
        return "".join(chars[:-1])

    def _tile_codes(self) -> np.ndarray:
        assert self._room is not None
        codes = np.where(self._room.walls, _T_WALL, _T_FLOOR)
        for t in self._targets:
            codes[t] = _T_TARGET
        for b in self._boxes:
            codes[b] = _T_BOX_ON_TARGET if b in self._targets else _T_BOX
        codes[self._player] = _T_PLAYER_ON_TARGET if self._player in self._targets else _T_PLAYER
        return codes
