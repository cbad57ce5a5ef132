"""The digits data as flat feature vectors, read from the input folder the recipe names."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features in [0, 1], shape (N, 64), and labels, shape (N,)."""
    table = np.loadtxt(folder / "digits.csv.gz", delimiter=",")
    return table[:, :-1] / 16.0, table[:, -1].astype(np.int64)


def split(count: int, seed: int, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices, fixed by `seed` alone."""
    order = np.random.default_rng(seed).permutation(count)
    cut = round(count * (1.0 - held_out))
    return np.sort(order[:cut]), np.sort(order[cut:])
