"""The digits-cnn training as a plain PyTorch script: default settings, no reweigh.

The baseline for bench/overhead.py. It imports the example's own model and data
code and runs the same loop (same data, batches, optimiser, epochs), with none of
the builder's guards, seeding or pinned numerics.
"""

from __future__ import annotations

import math
import sys
import tomllib
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-cnn"
sys.path.insert(0, str(EXAMPLE))

import torch  # noqa: E402
from data import load_digits, split  # noqa: E402
from model import DigitsCNN  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def main(digits_folder: Path, out: Path) -> None:
    recipe = tomllib.loads((EXAMPLE / "recipe.toml").read_text())
    p = recipe["params"]
    images, labels = load_digits(digits_folder)
    train_idx, _ = split(len(labels), p["split_seed"], p["held_out"])
    x, y = torch.from_numpy(images[train_idx]), torch.from_numpy(labels[train_idx])
    model = DigitsCNN(p["channels"], p["hidden"])
    optimizer = torch.optim.Adam(model.parameters(), lr=p["lr"])
    batches = math.ceil(len(y) / p["batch_size"])
    for _ in range(p["epochs"]):
        permutation = torch.randperm(len(y))
        for b in range(batches):
            index = permutation[b * p["batch_size"]:(b + 1) * p["batch_size"]]
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    save_file(model.state_dict(), str(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
