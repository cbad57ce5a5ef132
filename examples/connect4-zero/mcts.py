"""Monte Carlo tree search guided by the network (PUCT, as in AlphaZero), many trees at once.

The trees of all games in flight are searched in lockstep: each round takes one leaf
from every tree and evaluates them in one batch. Which leaves form a batch depends only
on the trees, so a search gives the same tree however many other processes run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from board import COLS, Position
from net import masked_softmax

Evaluate = Callable[[list[Position]], tuple[np.ndarray, np.ndarray]]


class Node:
    __slots__ = ("children", "moves", "position", "priors", "result", "value_sum", "visits")

    def __init__(self, position: Position) -> None:
        self.position = position
        self.result = position.result()  # for the player to move; None while it goes on
        self.moves: list[int] = []
        self.priors: list[float] = []
        self.children: list[Node | None] | None = None  # None: not expanded yet
        self.visits = 0
        self.value_sum = 0.0  # from the point of view of the player who moved into this node

    def expand(self, logits: np.ndarray) -> None:
        self.moves = self.position.legal()
        self.priors = masked_softmax(logits, self.moves).tolist()
        self.children = [None] * len(self.moves)

    def child(self, index: int) -> Node:
        assert self.children is not None
        found = self.children[index]
        if found is None:
            found = self.children[index] = Node(self.position.play(self.moves[index]))
        return found

    def after(self, column: int) -> Node:
        """The subtree after `column` is played (kept, so search carries over)."""
        if self.children is not None and column in self.moves:
            return self.child(self.moves.index(column))
        return Node(self.position.play(column))

    def visit_counts(self) -> np.ndarray:
        """Visits per column (7 entries, zero for illegal ones)."""
        counts = np.zeros(COLS)
        for move, child in zip(self.moves, self.children or (), strict=True):
            counts[move] = child.visits if child is not None else 0
        return counts

    def add_noise(self, noise: np.ndarray, fraction: float) -> None:
        self.priors = [(1 - fraction) * p + fraction * float(n)
                       for p, n in zip(self.priors, noise, strict=True)]


def _descend(root: Node, c_puct: float) -> list[Node]:
    path, node = [root], root
    while node.children is not None and node.result is None:
        scale = c_puct * math.sqrt(node.visits)
        best, best_score = 0, -math.inf
        for i, child in enumerate(node.children):
            if child is None or child.visits == 0:
                score = scale * node.priors[i]
            else:
                score = (child.value_sum / child.visits
                         + scale * node.priors[i] / (1 + child.visits))
            if score > best_score:
                best, best_score = i, score
        node = node.child(best)
        path.append(node)
    return path


def _backup(path: list[Node], value: float) -> None:
    """`value` is for the player to move at the end of the path."""
    for node in reversed(path):
        node.visits += 1
        node.value_sum -= value
        value = -value


def expand_roots(roots: list[Node], evaluate: Evaluate) -> None:
    fresh = [r for r in roots if r.children is None and r.result is None]
    if fresh:
        logits, values = evaluate([r.position for r in fresh])
        for root, row, value in zip(fresh, logits, values, strict=True):
            root.expand(row)
            _backup([root], float(value))


def search(roots: list[Node], evaluate: Evaluate, simulations: int, c_puct: float) -> None:
    """Run `simulations` more simulations in each tree (roots already expanded)."""
    live = [r for r in roots if r.result is None]
    for _ in range(simulations):
        waiting: list[list[Node]] = []
        for root in live:
            path = _descend(root, c_puct)
            leaf = path[-1]
            if leaf.result is not None:
                _backup(path, leaf.result)
            else:
                waiting.append(path)
        if waiting:
            logits, values = evaluate([path[-1].position for path in waiting])
            for path, row, value in zip(waiting, logits, values, strict=True):
                path[-1].expand(row)
                _backup(path, float(value))


def best_move(root: Node) -> int:
    """The most visited column (the lowest column among equals)."""
    return int(np.argmax(root.visit_counts()))


def sampled_move(root: Node, rng: np.random.Generator) -> int:
    counts = root.visit_counts()
    return int(rng.choice(COLS, p=counts / counts.sum()))
