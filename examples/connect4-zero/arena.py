"""Matches of the network (with search) against fixed opponents: the strength report.

Every pair of games starts from the same seeded two-ply opening with colours swapped, so
the network meets varied positions and neither side gains from moving first. All the
network's games are searched in lockstep, one batch per simulation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from board import Position
from mcts import Evaluate, Node, best_move, expand_roots, search

Player = Callable[[Position], int]
OPENING_PLIES = 2


@dataclass(frozen=True)
class Score:
    wins: int
    draws: int
    losses: int

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    @property
    def win_rate(self) -> float:
        return self.wins / self.games


def openings(games: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng([seed, 7])
    pairs = [[int(c) for c in rng.integers(0, 7, OPENING_PLIES)] for _ in range((games + 1) // 2)]
    return [pairs[g // 2] for g in range(games)]


def match(evaluate: Evaluate, opponents: list[Player], simulations: int, c_puct: float,
          seed: int) -> Score:
    """The network plays first in even games, second in odd ones; one opponent per game."""
    games = len(opponents)
    positions = [Position() for _ in range(games)]
    for g, opening in enumerate(openings(games, seed)):
        for column in opening:
            positions[g] = positions[g].play(column)
    roots = [Node(p) for p in positions]
    live = [g for g in range(games) if roots[g].result is None]
    while live:
        ours = {g for g in live if roots[g].position.ply % 2 == g % 2}
        searched = [roots[g] for g in sorted(ours)]
        expand_roots(searched, evaluate)
        search(searched, evaluate, simulations, c_puct)
        for g in live:
            root = roots[g]
            column = best_move(root) if g in ours else opponents[g](root.position)
            roots[g] = root.after(column)
        live = [g for g in live if roots[g].result is None]
    return _score(roots)


def _score(roots: list[Node]) -> Score:
    wins = draws = losses = 0
    for g, root in enumerate(roots):
        if root.result == 0.0:
            draws += 1
        elif (root.position.ply % 2 == g % 2):  # the network is to move, and has lost
            losses += 1
        else:
            wins += 1
    return Score(wins, draws, losses)
