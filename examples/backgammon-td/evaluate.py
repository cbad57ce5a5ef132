"""Strength: win rates over seeded games against a random player and against pubeval.

Each match is `strength.games` games in pairs on shared dice with the sides swapped
(`games.match`); the network plays the move it values most (one ply, no search). The
predictions `challenge` compares are the moves the network picks (an index into the
positions the roll allows, in `backgammon.moves` order) on a fixed set of positions
taken from seeded random games.
"""

from __future__ import annotations

import numpy as np
import torch
from backgammon import START, flip, moves, winner_moved
from games import Dice, match, network_player, pubeval_player, random_player
from tdnet import ValueNet, features


def evaluate(ctx) -> dict:
    s = ctx.params["strength"]
    net = ValueNet.from_tensors(ctx.weights)
    ours = network_player(net)
    metrics = {"games": s["games"]}
    opponents = {"random": lambda g: random_player(np.random.default_rng([ctx.seed, 3, g])),
                 "pubeval": lambda g: pubeval_player}
    for stream, (name, opponent) in enumerate(opponents.items(), start=4):
        score = match(ours, opponent, s["games"], [ctx.seed, stream])
        metrics[f"wins_vs_{name}"] = score.wins
        metrics[f"win_rate_vs_{name}"] = score.win_rate
    choices = []
    with torch.no_grad():
        for before, roll in probe_positions(ctx.seed, s["probes"]):
            after = [p for p, _ in moves(before, roll)]
            choices.append(int(net.value(features(after)).argmax()))
    return {"metrics": metrics, "predictions": choices}


def probe_positions(seed: int, count: int) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    """(position, roll) pairs met in seeded random games, each allowing several moves."""
    rng = np.random.default_rng([seed, 2])
    found: list[tuple[tuple[int, ...], tuple[int, int]]] = []
    game = 0
    while len(found) < count:
        dice, pos = Dice([seed, 6, game]), START
        game += 1
        while not winner_moved(pos) and len(found) < count:
            roll = dice.roll()
            after = moves(pos, roll)
            if len(after) > 1 and rng.random() < 0.2:
                found.append((pos, roll))
            pos = after[int(rng.integers(len(after)))][0]
            if not winner_moved(pos):
                pos = flip(pos)
    return found
