"""One self-play shard: a seeded batch of games of the network against itself.

A shard's games depend only on its task (weights, settings, its own seed), never on
which process plays it or what else runs, so shards can be spread over processes (or
machines) and merged in shard order with the same result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from board import Position
from mcts import Node, best_move, expand_roots, sampled_move, search
from net import Evaluator, encode, load_model, pack


def play_shard(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Play task["games"] games; return their positions with search and result targets."""
    evaluate = Evaluator(load_model(task["weights"], task["shape"]))
    s = task["search"]
    rngs = [np.random.default_rng([*task["seed"], game]) for game in range(task["games"])]
    roots = [Node(Position()) for _ in rngs]
    history: list[list[tuple[Position, np.ndarray]]] = [[] for _ in rngs]
    live = list(range(len(roots)))
    while live:
        expand_roots([roots[g] for g in live], evaluate)
        for g in live:
            noise = rngs[g].dirichlet([s["dirichlet_alpha"]] * len(roots[g].moves))
            roots[g].add_noise(noise, s["noise_fraction"])
        search([roots[g] for g in live], evaluate, s["simulations"], s["c_puct"])
        for g in live:
            root = roots[g]
            counts = root.visit_counts()
            history[g].append((root.position, counts))
            explore = root.position.ply < s["temperature_plies"]
            column = sampled_move(root, rngs[g]) if explore else best_move(root)
            roots[g] = root.after(column)
        live = [g for g in live if roots[g].result is None]
    return _samples(history, [roots[g].result for g in range(len(roots))])


def _samples(history: list[list[tuple[Position, np.ndarray]]],
             final: list[float | None]) -> dict[str, np.ndarray]:
    """Positions (packed planes), the search's visit counts (the policy target) and the
    result for the player to move (the value target), compactly: see `net.pack`."""
    positions, visits, values = [], [], []
    for moves, result in zip(history, final, strict=True):
        assert result is not None
        # the result is for the player to move at the end; alternate back through the game
        for back, (position, counts) in enumerate(reversed(moves)):
            positions.append(position)
            visits.append(counts)
            values.append(result if back % 2 == 1 else -result)
    return {"planes": pack(encode(positions)), "visits": np.array(visits, dtype=np.uint16),
            "value": np.array(values, dtype=np.int8),
            "plies": np.array([len(m) for m in history], dtype=np.int64)}
