"""bench/big's training as a plain PyTorch script: the baseline for bench/big.py.

It calls the recipe's own `train` with a bare stand-in for the build context: the same
model, batches, optimiser and steps, with PyTorch's default settings and none of
reweigh's sandbox, pinned numerics or bookkeeping. Checkpoints are what a plain script
writes: `torch.save` of the same training state at the same steps (`--no-checkpoints`:
none); the weights are written with safetensors' `save_file`.

Usage: python bench/plain_big.py RECIPE_DIR OUT_DIR [--threads T] [--no-checkpoints]
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

# bench/ holds a platform.py of its own, which must not hide the standard library's
# from torch: this script's folder leaves the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-checkpoints", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(args.recipe))
    import torch
    from safetensors.torch import save_file
    from train import train

    torch.set_num_threads(args.threads)
    recipe = tomllib.loads((args.recipe / "recipe.toml").read_text())
    every = recipe["build"].get("checkpoint_every", 0)
    args.out.mkdir(parents=True, exist_ok=True)

    def checkpoint(step: int, state: dict, final: bool = False) -> bool:
        if args.no_checkpoints or not (final or (every and step % every == 0)):
            return False
        torch.save(state, args.out / f"step-{step:09d}.pt")
        return True

    def training_state(model, optimizer, generator=None, **more):  # type: ignore[no-untyped-def]
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), **more}

    torch.manual_seed(recipe["seed"])
    ctx = SimpleNamespace(
        params=recipe["params"], seed=recipe["seed"], inputs={}, threads=args.threads,
        save_weights=lambda tensors, metadata=None: save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(args.out / "weights.safetensors")),
        progress=lambda *a, **k: None, log_metric=lambda *a, **k: None,
        checkpoint=checkpoint, training_state=training_state, resume=lambda: None,
        resume_into=lambda *a, **k: {})
    train(ctx)
    sys.stdout.flush()
    os._exit(0)  # as reweigh's build process ends: without the interpreter's teardown


if __name__ == "__main__":
    main()
