"""The engine: a network from the store plus search, choosing moves for a position.

It reads only safetensors (no pickle) and checks every tensor's shape against the
network it builds before loading, so weights of another model are refused with a
message that names the tensor, instead of a stack trace or a silently wrong player.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from board import Position
from mcts import Node, best_move, expand_roots, search
from net import Connect4Net, Evaluator, load_model
from safetensors.numpy import load_file

DEFAULT_SIMULATIONS = 200
C_PUCT = 1.5


class WeightsRefused(ValueError):
    pass


def network_shape(weights: dict[str, np.ndarray], source: str) -> dict[str, int]:
    """The Connect4Net hyper-parameters these tensors were made for, or WeightsRefused."""
    convs = sorted(k for k in weights if k.startswith("trunk.") and k.endswith(".weight"))
    if not convs or "value_hidden.weight" not in weights:
        raise WeightsRefused(f"{source}: not a Connect Four network (no trunk.*.weight or "
                             "value_hidden.weight tensor)")
    shape = {"channels": int(weights[convs[0]].shape[0]), "layers": len(convs),
             "hidden": int(weights["value_hidden.weight"].shape[0])}
    expected = Connect4Net(**shape).state_dict()
    for name in sorted(set(expected) | set(weights)):
        if name not in weights:
            raise WeightsRefused(f"{source}: tensor {name} is missing")
        if name not in expected:
            raise WeightsRefused(f"{source}: tensor {name} does not belong to the network")
        want, got = list(expected[name].shape), list(weights[name].shape)
        if want != got:
            raise WeightsRefused(f"{source}: tensor {name} has shape {got}; the engine's "
                                 f"network needs {want}")
    return shape


def find_weights(network: str, store: str | None = None) -> Path:
    """A weights file given directly, or the weights of a store item (name, path, digest)."""
    path = Path(network)
    if path.is_file():
        return path
    if (path / "weights.safetensors").is_file():
        return path / "weights.safetensors"
    from reweigh.store import Store  # only needed to look a name up in the store

    return Store(Path(store) if store else None).resolve(network).weights


@dataclass
class Engine:
    evaluate: Evaluator
    simulations: int = DEFAULT_SIMULATIONS

    @classmethod
    def load(cls, weights_file: Path, simulations: int = DEFAULT_SIMULATIONS) -> Engine:
        try:
            weights = load_file(str(weights_file))
        except Exception as e:  # safetensors reports a bad header in its own error types
            raise WeightsRefused(f"{weights_file}: not a readable safetensors file ({e})") from e
        shape = network_shape(weights, str(weights_file))
        return cls(Evaluator(load_model(weights, shape)), simulations)

    def think(self, position: Position, simulations: int | None = None) -> tuple[int, float]:
        """The move to play and the expected result for the side to move (-1..1)."""
        root = Node(position)
        expand_roots([root], self.evaluate)
        search([root], self.evaluate, simulations or self.simulations, C_PUCT)
        move = best_move(root)
        chosen = root.child(root.moves.index(move))
        return move, chosen.value_sum / max(chosen.visits, 1)
