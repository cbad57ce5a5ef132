"""The digits-cnn training as a plain PyTorch script: default settings, no reweigh.

The baseline for bench/overhead.py. It calls the example's own `train` function
with a bare stand-in for the build context, so the training is the same code
(same data, batches, optimiser, epochs), but runs with none of the builder's
sandbox, seeding, guards or pinned numerics: PyTorch as it comes.

With `--pinned` it applies reweigh's pinned numerics (and nothing else of the
builder), which splits the overhead into what determinism costs and what the
sandbox and the bookkeeping cost. With `--fast-exit` it ends with `os._exit` instead
of the interpreter's teardown (most of a second with torch loaded), as reweigh's
build process ends after a shortened teardown, which isolates what reweigh's own
work costs.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-cnn"
sys.path.insert(0, str(EXAMPLE))
PINNED = "--pinned" in sys.argv
FAST_EXIT = "--fast-exit" in sys.argv
if PINNED:  # before torch is imported: MKL reads its settings once
    from reweigh import environment, numerics

    os.environ.update(environment.build_env(int(os.environ.get("THREADS", "2")),
                                            numerics.here(numerics.default_name(
                                                numerics.PORTABLE, numerics.machine_arch()))))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from train import train  # noqa: E402


def main(digits_folder: Path, out: Path) -> None:
    if PINNED:
        environment.apply_torch_numerics(torch.get_num_threads())
    recipe = tomllib.loads((EXAMPLE / "recipe.toml").read_text())
    ctx = SimpleNamespace(
        inputs={"digits": digits_folder}, params=recipe["params"], seed=recipe["seed"],
        save_weights=lambda tensors, metadata=None: save_file(dict(tensors), str(out)),
        progress=lambda *args, **kwargs: None, log_metric=lambda *args, **kwargs: None,
        checkpoint=lambda *args, **kwargs: False, resume=lambda: None,
        resume_into=lambda *args, **kwargs: {}, training_state=lambda *args, **kwargs: {})
    train(ctx)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(arguments[0]), Path(arguments[1]))
    if FAST_EXIT:
        sys.stdout.flush()
        os._exit(0)
