"""Strength of a Connect Four network: seeded matches against random and alpha-beta.

The moves the raw policy picks on a fixed set of positions are the predictions that
`challenge` compares between two weights files.
"""

from __future__ import annotations

import numpy as np
from arena import match
from board import Position
from net import Evaluator, load_model, shape_of
from players import AlphaBetaPlayer, RandomPlayer


def evaluate(ctx) -> dict:
    p, s = ctx.params, ctx.params["strength"]
    evaluate = Evaluator(load_model(ctx.weights, shape_of(ctx.params)))
    search = p["search"]
    rng = np.random.default_rng([ctx.seed, 1])
    metrics = {}
    for name, opponent in (("random", RandomPlayer), ("alphabeta", _alphabeta(s["depth"]))):
        opponents = [opponent(np.random.default_rng([ctx.seed, 2, g]))
                     for g in range(s["games"])]
        score = match(evaluate, opponents, s["simulations"], search["c_puct"], ctx.seed)
        metrics[f"win_rate_vs_{name}"] = score.win_rate
        metrics[f"draw_rate_vs_{name}"] = score.draws / score.games
        metrics[f"loss_rate_vs_{name}"] = score.losses / score.games
    probes = _probe_positions(rng, 256)
    logits, _ = evaluate(probes)
    legal_best = [max(pos.legal(), key=lambda c, row=row: row[c]) for pos, row in
                  zip(probes, logits, strict=True)]
    return {"metrics": metrics, "predictions": legal_best}


def _alphabeta(depth: int):
    return lambda rng: AlphaBetaPlayer(depth, rng)


def _probe_positions(rng: np.random.Generator, count: int) -> list[Position]:
    """Positions from random play, 0 to 20 plies in, none of them finished."""
    found: list[Position] = []
    while len(found) < count:
        position = Position()
        for _ in range(int(rng.integers(0, 21))):
            legal = position.legal()
            after = position.play(legal[int(rng.integers(len(legal)))])
            if after.result() is not None:
                break
            position = after
        found.append(position)
    return found
