"""A wide MLP: `layers` square hidden layers of `width`, then a `classes`-way head."""

from __future__ import annotations

import torch


class WideMLP(torch.nn.Module):
    def __init__(self, width: int, layers: int, classes: int) -> None:
        super().__init__()
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))
        self.head = torch.nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, width) -> (B, classes)
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.head(x)


def batch(step: int, size: int, width: int, classes: int, seed: int) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """Batch `step` of synthetic data: a function of the seed and the step alone, so a
    replayed segment draws the same batches. Labels: the class whose fixed random
    direction the input leans to most."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, width, generator=g)  # (B, width)
    directions = torch.randn(classes, width, generator=torch.Generator().manual_seed(seed))
    return x, (x @ directions.T).argmax(dim=1)  # (B,)
