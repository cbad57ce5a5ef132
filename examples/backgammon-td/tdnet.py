"""The network: TD-Gammon's kind (Tesauro, 1992/1995), one hidden layer of sigmoids.

It reads a position from the side of the player who has just moved (the opponent is to
roll) and estimates the probability that this player wins (gammons are not counted: the
game is scored one point a win). The inputs are Tesauro's: for each point and each side
four units (one checker or more, two or more, three or more, half of those past three),
then each side's checkers on the bar (halved) and borne off (in fifteenths): 196 inputs,
the side to move being implied by the point of view.
"""

from __future__ import annotations

import numpy as np
import torch
from backgammon import BAR, CHECKERS, OUR_OFF, THEIR_BAR, THEIR_OFF, Position

INPUTS = 196


def _units(count: int) -> list[float]:
    """Tesauro's four units for `count` checkers of one side on a point."""
    return [float(count >= 1), float(count >= 2), float(count >= 3),
            (count - 3) / 2.0 if count > 3 else 0.0]


# row c + 15: the units of a point holding c checkers (ours positive), ours then theirs
_TABLE = np.array([_units(max(c, 0)) + _units(max(-c, 0)) for c in range(-15, 16)],
                  dtype=np.float32)  # (31, 8)


def features(positions: list[Position]) -> torch.Tensor:
    """(N, 196) inputs of positions seen from the side that has just moved."""
    board = np.asarray(positions, dtype=np.int64)  # (N, 28)
    units = _TABLE[board[:, 1:25] + 15]  # (N, 24, 8)
    ours = units[:, :, :4].reshape(len(board), 96)
    theirs = units[:, :, 4:].reshape(len(board), 96)
    extra = np.stack([board[:, BAR] / 2.0, -board[:, THEIR_BAR] / 2.0,
                      board[:, OUR_OFF] / CHECKERS, -board[:, THEIR_OFF] / CHECKERS],
                     axis=1).astype(np.float32)  # (N, 4)
    return torch.from_numpy(np.concatenate([ours, theirs, extra], axis=1))


class ValueNet:
    """v(x) = sigmoid(w2 . sigmoid(W1 x + b1) + b2), with its gradient by hand (the TD
    update needs one per move, and a hand-written one is a few tensor operations)."""

    def __init__(self, hidden: int, generator: torch.Generator | None = None) -> None:
        g = generator or torch.Generator().manual_seed(0)
        scale = 1.0 / np.sqrt(INPUTS)
        self.w1 = (torch.rand(hidden, INPUTS, generator=g) * 2 - 1) * scale  # (H, 196)
        self.b1 = torch.zeros(hidden)
        self.w2 = (torch.rand(hidden, generator=g) * 2 - 1) / np.sqrt(hidden)  # (H,)
        self.b2 = torch.zeros(())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"hidden.weight": self.w1, "hidden.bias": self.b1,
                "out.weight": self.w2[None, :], "out.bias": self.b2[None]}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        hidden = self.w1.shape[0]
        shapes = {"hidden.weight": (hidden, INPUTS), "hidden.bias": (hidden,),
                  "out.weight": (1, hidden), "out.bias": (1,)}
        for name, shape in shapes.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                raise ValueError(f"tensor {name} is missing or not of shape {list(shape)}")
        self.w1 = tensors["hidden.weight"].float().clone()
        self.b1 = tensors["hidden.bias"].float().clone()
        self.w2 = tensors["out.weight"][0].float().clone()
        self.b2 = tensors["out.bias"][0].float().clone()

    def hidden(self, x: torch.Tensor) -> torch.Tensor:  # (N, 196) -> (N, H)
        return torch.sigmoid(x @ self.w1.T + self.b1)

    def value(self, x: torch.Tensor) -> torch.Tensor:  # (N, 196) -> (N,)
        return torch.sigmoid(self.hidden(x) @ self.w2 + self.b2)

    def gradient(self, x: torch.Tensor, h: torch.Tensor,
                 v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """d v / d (w1, b1, w2, b2) at one input x (196,), its hidden h (H,), value v."""
        dv = v * (1 - v)
        dh = dv * self.w2 * h * (1 - h)  # (H,)
        return torch.outer(dh, x), dh, dv * h, dv

    def parameters(self) -> tuple[torch.Tensor, ...]:
        return self.w1, self.b1, self.w2, self.b2

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ValueNet:
        weight = tensors.get("hidden.weight")
        if weight is None or weight.dim() != 2:
            raise ValueError("not a backgammon-td network: no 2-d hidden.weight tensor")
        net = cls(int(weight.shape[0]))
        net.load_state_dict(tensors)
        return net
