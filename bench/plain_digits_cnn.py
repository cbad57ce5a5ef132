"""The digits-cnn training as a plain PyTorch script: default settings, no reweigh.

The baseline for bench/overhead.py. It calls the example's own `train` function
with a bare stand-in for the build context, so the training is the same code
(same data, batches, optimiser, epochs), but runs with none of the builder's
sandbox, seeding, guards or pinned numerics: PyTorch as it comes.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-cnn"
sys.path.insert(0, str(EXAMPLE))

from safetensors.torch import save_file  # noqa: E402
from train import train  # noqa: E402


def main(digits_folder: Path, out: Path) -> None:
    recipe = tomllib.loads((EXAMPLE / "recipe.toml").read_text())
    ctx = SimpleNamespace(
        inputs={"digits": digits_folder}, params=recipe["params"], seed=recipe["seed"],
        save_weights=lambda tensors, metadata=None: save_file(dict(tensors), str(out)),
        progress=lambda *args, **kwargs: None, log_metric=lambda *args, **kwargs: None,
        checkpoint=lambda *args, **kwargs: False, resume=lambda: None)
    train(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
