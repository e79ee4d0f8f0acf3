"""A breadth-first Sokoban solver: shortest move plans for small rooms.

The search runs over (player cell, box cells) states, one move per edge, so the plan it returns is
shortest in moves (the env's step count), not in pushes. It is exact and fast for the rooms agentrl
trains on (6x6 with one box: a few hundred states; 8x8 with two boxes: tens of thousands) and gives
up, returning ``None``, once ``max_nodes`` states have been seen.

Pure Python, no agentrl import: usable on its own to generate warm-start data.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

#: Action names in the order of :data:`DELTAS`.
ACTIONS: tuple[str, str, str, str] = ("Up", "Down", "Left", "Right")
#: (row, column) change of each action.
DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (1, 0), (0, -1), (0, 1))

Cell = tuple[int, int]


# One best-first search loop (expand, push, prune on dead squares) reads best as one function.
def solve(  # noqa: C901, PLR0912
    walls: Sequence[Sequence[bool]],
    boxes: Iterable[Cell],
    targets: Iterable[Cell],
    player: Cell,
    max_nodes: int = 200_000,
) -> list[str] | None:
    """Shortest list of moves (``"Up"``, ``"Down"``, ``"Left"``, ``"Right"``) that puts every box on a target.

    Args:
        walls: an H x W grid (nested sequences or a numpy bool array), truthy where a wall is.
            Cells outside the grid count as walls.
        boxes: (row, col) of each box.
        targets: (row, col) of each target. The room is solved when every target holds a box.
        player: (row, col) of the player.
        max_nodes: the most distinct states the search may visit before it gives up.

    Returns:
        ``[]`` if the room is already solved, a shortest plan if one is found within
        ``max_nodes`` states, else ``None`` (unsolvable, or the limit was reached).
    """
    free, stride, flat = _padded(walls)
    box_cells = tuple(sorted(flat(b) for b in boxes))
    target_cells = frozenset(flat(t) for t in targets)
    start_player = flat(player)
    if target_cells.issubset(box_cells):
        return []
    steps = (-stride, stride, -1, 1)
    live = _live_cells(free, target_cells, steps)

    # Each state is keyed by an int (player, then sorted boxes, in base `size`): cheap to hash.
    size = len(free)

    def key(p: int, bs: tuple[int, ...]) -> int:
        k = p
        for b in bs:
            k = k * size + b
        return k

    start_key = key(start_player, box_cells)
    parent: dict[int, tuple[int, int]] = {start_key: (-1, -1)}
    queue: deque[tuple[int, tuple[int, ...], int]] = deque([(start_player, box_cells, start_key)])
    while queue:
        p, bs, k = queue.popleft()
        for action, d in enumerate(steps):
            q = p + d
            if not free[q]:
                continue
            if q in bs:
                behind = q + d
                # A box cannot go into a wall, onto another box, or onto a cell from which no
                # target is reachable (a dead square): pruning those keeps the search small.
                if not live[behind] or behind in bs:
                    continue
                nbs = tuple(sorted(behind if b == q else b for b in bs))
            else:
                nbs = bs
            nk = key(q, nbs)
            if nk in parent:
                continue
            parent[nk] = (k, action)
            if nbs is not bs and target_cells.issubset(nbs):
                return _backtrack(parent, nk)
            if len(parent) >= max_nodes:
                return None
            queue.append((q, nbs, nk))
    return None


def live_squares(walls: Sequence[Sequence[bool]], targets: Iterable[Cell]) -> frozenset[Cell]:
    """The squares from which a lone box can still be pushed onto one of ``targets`` (other boxes
    and where the player can walk ignored): every other floor square is *dead*, a box there is stuck
    for good (a corner that is not a target, a wall side with no target along it). The solver prunes
    pushes onto dead squares; the env can leave them out of the pushes it describes."""
    free, stride, flat = _padded(walls)
    live = _live_cells(free, frozenset(flat(t) for t in targets), (-stride, stride, -1, 1))
    cells = ((r, c) for r in range(len(walls)) for c in range(len(walls[r])))
    return frozenset(cell for cell in cells if live[flat(cell)])


def _padded(walls: Sequence[Sequence[bool]]) -> tuple[bytearray, int, Callable[[Cell], int]]:
    """The grid as flat cells padded with a wall border (bounds checks become wall checks): the
    free-cell mask, the row stride and the map from (row, col) to a flat index."""
    height = len(walls)
    width = len(walls[0]) if height else 0
    stride = width + 2
    free = bytearray((height + 2) * stride)
    for r in range(height):
        row = walls[r]
        for c in range(width):
            if not row[c]:
                free[(r + 1) * stride + c + 1] = 1

    def flat(cell: Cell) -> int:
        r, c = int(cell[0]), int(cell[1])
        if not (0 <= r < height and 0 <= c < width):
            raise ValueError(f"cell {cell} lies outside the {height}x{width} grid")
        return (r + 1) * stride + c + 1

    return free, stride, flat


def _live_cells(free: bytearray, targets: frozenset[int], steps: tuple[int, ...]) -> bytearray:
    """Cells from which a lone box can still be pushed onto some target (ignoring other boxes).

    Found by pulling boxes backwards from every target: a box at ``q`` can have come from
    ``q - d`` if the player stood at ``q - 2d``, both free.
    """
    live = bytearray(len(free))
    stack = [t for t in targets if free[t]]
    for t in stack:
        live[t] = 1
    while stack:
        q = stack.pop()
        for d in steps:
            src, stand = q - d, q - 2 * d
            if 0 <= stand < len(free) and free[src] and free[stand] and not live[src]:
                live[src] = 1
                stack.append(src)
    return live


def _backtrack(parent: dict[int, tuple[int, int]], k: int) -> list[str]:
    plan: list[str] = []
    while True:
        k, action = parent[k]
        if action < 0:
            break
        plan.append(ACTIONS[action])
    plan.reverse()
    return plan
