"""Playing games: the players (the network, pubeval, random), seeded dice, matches.

Dice come from the seed: game g of a stream draws every roll from
`numpy.random.default_rng([seed, stream, g])`, two dice a turn, and the opening roll is
drawn again while it is a double (the first player cannot start with one). A match plays
its games in pairs on the same dice with the sides swapped (as duplicate backgammon
does), so luck cancels out between the two games of a pair as far as the moves allow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pubeval
import torch
from backgammon import START, Position, flip, is_race, moves, winner_moved
from tdnet import ValueNet, features

# chooses among the positions a roll allows (from the mover's side): the index of one
Chooser = Callable[[Position, list[Position]], int]
MAX_PLIES = 10_000


def network_player(net: ValueNet) -> Chooser:
    def choose(before: Position, after: list[Position]) -> int:
        with torch.no_grad():
            return int(net.value(features(after)).argmax())
    return choose


def pubeval_player(before: Position, after: list[Position]) -> int:
    return int(pubeval.scores(after, is_race(before)).argmax())


def random_player(rng: np.random.Generator) -> Chooser:
    return lambda before, after: int(rng.integers(len(after)))


class Dice:
    """A game's rolls, from its own seeded generator."""

    def __init__(self, seed: list[int]) -> None:
        self.rng = np.random.default_rng(seed)
        self.first = True

    def roll(self) -> tuple[int, int]:
        while True:
            a, b = (int(d) for d in self.rng.integers(1, 7, size=2))
            if not (self.first and a == b):
                self.first = False
                return a, b


def play(first: Chooser, second: Chooser, dice: Dice) -> int:
    """One game; 0 when the first player wins, 1 when the second does."""
    pos, players, side = START, (first, second), 0
    for _ in range(MAX_PLIES):
        after = [p for p, _ in moves(pos, dice.roll())]
        pos = after[players[side](pos, after)]
        if winner_moved(pos):
            return side
        pos, side = flip(pos), 1 - side
    raise RuntimeError(f"a game went past {MAX_PLIES} plies")


@dataclass(frozen=True)
class Score:
    wins: int
    games: int

    @property
    def win_rate(self) -> float:
        return self.wins / self.games


def match(ours: Chooser, theirs: Callable[[int], Chooser], games: int,
          seed: list[int]) -> Score:
    """`games` games (an even count) of our player against a fresh opponent each game;
    pairs share their dice, we move first in the even game of each pair."""
    wins = 0
    for g in range(games):
        dice = Dice([*seed, g // 2])
        if g % 2 == 0:
            wins += play(ours, theirs(g), dice) == 0
        else:
            wins += play(theirs(g), ours, dice) == 1
    return Score(wins, games)
