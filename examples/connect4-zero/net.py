"""The policy/value network and how positions become its input.

Input: three 6x7 planes (stones of the player to move, stones of the other player,
ones, so that the zero padding of the convolutions marks the edge of the board).
Output: a logit per column (policy) and the expected result for the player to move
(value, in -1..1). Small on purpose: self-play evaluates it thousands of times a second
on one core.
"""

from __future__ import annotations

import numpy as np
import torch
from board import COLS, HEIGHT, ROWS, Position
from torch import nn

PLANES = 3
# bit index of (row, column) in a bitboard, in the planes' layout (row 0 at the top)
_BITS = np.array([[(ROWS - 1 - r) + c * HEIGHT for c in range(COLS)] for r in range(ROWS)],
                 dtype=np.int64)


class Connect4Net(nn.Module):
    def __init__(self, channels: int = 32, layers: int = 3, hidden: int = 64) -> None:
        super().__init__()
        trunk: list[nn.Module] = []
        for i in range(layers):
            trunk += [nn.Conv2d(PLANES if i == 0 else channels, channels, 3, padding=1),
                      nn.ReLU()]
        self.trunk = nn.Sequential(*trunk)
        self.policy = nn.Linear(channels * ROWS * COLS, COLS)
        self.value_hidden = nn.Linear(channels * ROWS * COLS, hidden)
        self.value = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).flatten(1)  # (N, channels*42)
        value = torch.tanh(self.value(torch.relu(self.value_hidden(h)))).squeeze(1)
        return self.policy(h), value  # (N, 7), (N,)


def shape_of(params: dict) -> dict:
    return {"channels": params["channels"], "layers": params["layers"],
            "hidden": params["hidden"]}


def encode(positions: list[Position]) -> np.ndarray:
    """(N, 3, 6, 7) uint8 planes for positions, from the point of view of the player to move."""
    current = np.array([p.current for p in positions], dtype=np.int64)[:, None, None]
    other = np.array([p.current ^ p.mask for p in positions], dtype=np.int64)[:, None, None]
    planes = np.ones((len(positions), PLANES, ROWS, COLS), dtype=np.uint8)
    planes[:, 0] = (current >> _BITS) & 1
    planes[:, 1] = (other >> _BITS) & 1
    return planes


class Evaluator:
    """Batched inference: positions in, (priors over legal columns, values) out."""

    def __init__(self, model: Connect4Net) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, positions: list[Position]) -> tuple[np.ndarray, np.ndarray]:
        logits, values = self.model(torch.from_numpy(encode(positions)).float())
        return logits.numpy(), values.numpy()


def masked_softmax(logits: np.ndarray, legal: list[int]) -> np.ndarray:
    """Probabilities over the legal columns only (float64, in column order of `legal`)."""
    chosen = logits[legal].astype(np.float64)
    chosen = np.exp(chosen - chosen.max())
    return chosen / chosen.sum()


def pack(planes: np.ndarray) -> np.ndarray:
    """(N, 3, 6, 7) planes as (N, 11) bytes: the two stone planes, a bit per cell (the
    third plane is all ones). Self-play keeps its games this way: checkpoints carry the
    replay window, and bits are a sixth of the size."""
    return np.packbits(planes[:, :2].reshape(len(planes), -1), axis=1)


def unpack(packed: np.ndarray) -> np.ndarray:
    stones = np.unpackbits(packed, axis=1, count=2 * ROWS * COLS)
    planes = np.ones((len(packed), PLANES, ROWS, COLS), dtype=np.uint8)
    planes[:, :2] = stones.reshape(len(packed), 2, ROWS, COLS)
    return planes


def load_model(weights: dict, shape: dict) -> Connect4Net:
    """A network from a weights mapping (numpy arrays or tensors)."""
    model = Connect4Net(**shape)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    return model
