"""The digits data: scikit-learn's bundled 8x8 handwritten digits, read from the input folder.

Reads the CSV that the recipe's input names by digest, not `sklearn.datasets`, so
the build uses exactly the bytes the derivation covers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_digits(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1], shape (N, 1, 8, 8), and labels, shape (N,)."""
    table = np.loadtxt(folder / "digits.csv.gz", delimiter=",")
    images = (table[:, :-1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8)
    labels = table[:, -1].astype(np.int64)  # (N,)
    return images, labels


def split(count: int, seed: int, held_out: float) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices; the held-out set depends only on `seed`, not on the
    training seed, so every build of this recipe is judged on the same images."""
    order = np.random.default_rng(seed).permutation(count)
    cut = round(count * (1.0 - held_out))
    return np.sort(order[:cut]), np.sort(order[cut:])
