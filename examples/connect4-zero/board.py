"""Connect Four on bitboards: the rules, nothing else.

A position is two integers: the stones of the player to move, and all stones. Each
column takes 7 bits (6 rows and an empty sentinel bit), so a move is one addition and
four shifts find any line of four. Pure functions of small immutable values: the search,
the players and the terminal game all share them.
"""

from __future__ import annotations

from dataclasses import dataclass

ROWS, COLS = 6, 7
HEIGHT = ROWS + 1  # bits per column, with the sentinel
CELLS = ROWS * COLS
CENTRE_FIRST = (3, 2, 4, 1, 5, 0, 6)  # move order that makes alpha-beta prune early


def bottom(column: int) -> int:
    return 1 << (column * HEIGHT)


def top(column: int) -> int:
    return 1 << (ROWS - 1 + column * HEIGHT)


def cell(row: int, column: int) -> int:
    """Row 0 is the bottom row."""
    return 1 << (row + column * HEIGHT)


def four_in_a_row(stones: int) -> bool:
    for shift in (1, HEIGHT, HEIGHT - 1, HEIGHT + 1):  # vertical, horizontal, both diagonals
        pairs = stones & (stones >> shift)
        if pairs & (pairs >> 2 * shift):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Position:
    current: int = 0  # stones of the player to move
    mask: int = 0  # all stones
    ply: int = 0

    @property
    def opponent(self) -> int:
        """Stones of the player who moved last."""
        return self.current ^ self.mask

    def can_play(self, column: int) -> bool:
        return 0 <= column < COLS and not self.mask & top(column)

    def legal(self) -> list[int]:
        return [c for c in range(COLS) if not self.mask & top(c)]

    def play(self, column: int) -> Position:
        return Position(self.current ^ self.mask, self.mask | (self.mask + bottom(column)),
                        self.ply + 1)

    def lost(self) -> bool:
        """The player to move has lost: the last move made four in a row."""
        return four_in_a_row(self.opponent)

    def full(self) -> bool:
        return self.ply == CELLS

    def result(self) -> float | None:
        """For the player to move: -1 lost, 0 drawn, None while the game goes on."""
        if self.lost():
            return -1.0
        return 0.0 if self.full() else None

    def winning_moves(self) -> list[int]:
        """Columns where the player to move makes four in a row at once."""
        return [c for c in self.legal()
                if four_in_a_row(self.current | (self.mask + bottom(c)) & ~self.mask)]

    def stones(self, first_player: bool) -> int:
        """The stones of the first (or second) player to move in the game."""
        return self.current if (self.ply % 2 == 0) == first_player else self.opponent


def from_moves(columns: list[int]) -> Position:
    """Play 0-based columns from the empty board; ValueError on an illegal move."""
    position = Position()
    for i, column in enumerate(columns):
        if position.result() is not None:
            raise ValueError(f"move {i + 1} ({column + 1}): the game is already over")
        if not position.can_play(column):
            raise ValueError(f"move {i + 1} ({column + 1}): not a playable column")
        position = position.play(column)
    return position


def render(position: Position, marks: str = "XO.") -> str:
    """Rows top to bottom; X is the player who moved first."""
    first, second = position.stones(True), position.stones(False)
    lines = []
    for row in reversed(range(ROWS)):
        line = []
        for column in range(COLS):
            bit = cell(row, column)
            line.append(marks[0] if first & bit else marks[1] if second & bit else marks[2])
        lines.append(" ".join(line))
    lines.append(" ".join(str(c + 1) for c in range(COLS)))
    return "\n".join(lines)
