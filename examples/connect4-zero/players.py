"""The fixed opponents the strength report measures against: random and alpha-beta."""

from __future__ import annotations

import math

import numpy as np
from board import CENTRE_FIRST, COLS, HEIGHT, ROWS, Position, cell

WIN = 1_000_000.0


def _windows() -> list[int]:
    """Every line of four cells on the board, as bit masks (69 of them)."""
    found = []
    for row in range(ROWS):
        for column in range(COLS):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (-1, 1)):
                cells = [(row + k * dr, column + k * dc) for k in range(4)]
                if all(0 <= r < ROWS and 0 <= c < COLS for r, c in cells):
                    found.append(sum(cell(r, c) for r, c in cells))
    return found


WINDOWS = _windows()
CENTRE = sum(cell(r, 3) for r in range(ROWS))
SCORE_MINE = (0, 1, 4, 16)  # by stones of one player in an otherwise empty window
assert HEIGHT == ROWS + 1


def heuristic(position: Position) -> float:
    """Open lines of the player to move minus the opponent's, plus centre stones."""
    mine, theirs = position.current, position.opponent
    score = 3.0 * ((mine & CENTRE).bit_count() - (theirs & CENTRE).bit_count())
    for window in WINDOWS:
        a, b = (mine & window).bit_count(), (theirs & window).bit_count()
        if b == 0 and a:
            score += SCORE_MINE[a]
        elif a == 0 and b:
            score -= SCORE_MINE[b]
    return score


def negamax(position: Position, depth: int, alpha: float, beta: float) -> float:
    result = position.result()
    if result is not None:
        return result * (WIN + depth)  # a quicker win (or slower loss) scores more
    if depth == 0:
        return heuristic(position)
    best = -math.inf
    for column in CENTRE_FIRST:
        if position.can_play(column):
            best = max(best, -negamax(position.play(column), depth - 1, -beta, -alpha))
            alpha = max(alpha, best)
            if alpha >= beta:
                break
    return best


class AlphaBetaPlayer:
    """Searches `depth` plies with the heuristic at the leaves; equal moves by lot."""

    def __init__(self, depth: int, rng: np.random.Generator) -> None:
        self.depth, self.rng = depth, rng

    def __call__(self, position: Position) -> int:
        scores = {c: -negamax(position.play(c), self.depth - 1, -math.inf, math.inf)
                  for c in position.legal()}
        top = max(scores.values())
        best = [c for c, s in scores.items() if s == top]
        return int(best[self.rng.integers(len(best))])


class RandomPlayer:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def __call__(self, position: Position) -> int:
        legal = position.legal()
        return int(legal[self.rng.integers(len(legal))])
