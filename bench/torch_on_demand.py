"""What recipes save now that torch, and torch.compile's front end, load only when used.

Two pairs of recipes, each built from scratch with the real `reweigh build` (in the
sandbox, one thread) into a fresh store, alternately, --runs times each:

- `numpy`: the test suite's small recipe (numpy weights, no torch anywhere), against
  `numpy + import torch`, the same with `import torch` at its top: what every run paid
  before torch loaded on demand (the runtime loaded and pinned it before recipe code);
- `adam`: 20 Adam steps on a small network, against `adam + torch._dynamo`, the same
  after loading the real `torch._dynamo` first: what every run with an optimizer paid
  before `reweigh.dynamo` (torch's optimizers import it at their first step).

Prints the median wall time of each build, the ratio to its pair's baseline, and that
the two of a pair give the same bits. The figures go to bench/README.md.

Usage: python bench/torch_on_demand.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers import MINIMAL_TRAIN, write_recipe  # noqa: E402 (the suite's recipe)

ADAM = """
import importlib

import torch


def train(ctx):
    if ctx.params.get("real_dynamo"):
        importlib.import_module("torch._dynamo.eval_frame")  # the real module, first
    torch.manual_seed(ctx.seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        optimizer.zero_grad()
        model(torch.randn(16, 8, generator=g)).square().mean().backward()
        optimizer.step()
    ctx.save_weights(model.state_dict())
"""
# each pair: (the measured recipe, its baseline), as (train.py, [params])
PAIRS = {"numpy": ((MINIMAL_TRAIN, ""), ("import torch  # noqa: F401\n" + MINIMAL_TRAIN, "")),
         "adam": ((ADAM, ""), (ADAM, "real_dynamo = true"))}
BASELINE = {"numpy": "numpy + import torch", "adam": "adam + torch._dynamo"}


def build(recipe: Path, store: Path) -> tuple[float, str]:
    """One build from scratch: wall seconds and the weights digest."""
    shutil.rmtree(store, ignore_errors=True)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "reweigh.cli.main", "build", str(recipe),
                          "--store", str(store), "--json"],
                         capture_output=True, text=True, check=True).stdout
    return time.monotonic() - started, json.loads(out)["weights_digest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reweigh-bench-") as scratch:
        root = Path(scratch)
        recipes = {}
        for pair, kinds in PAIRS.items():
            for kind, (train, params) in zip((pair, BASELINE[pair]), kinds, strict=True):
                recipes[kind] = write_recipe(root / f"recipe-{len(recipes)}", train,
                                             params=params)
        walls: dict[str, list[float]] = {kind: [] for kind in recipes}
        digests: dict[str, set[str]] = {kind: set() for kind in recipes}
        for _ in range(args.runs):
            for kind, folder in recipes.items():
                wall, digest = build(folder, root / "store")
                walls[kind].append(wall)
                digests[kind].add(digest)
    for pair, baseline in BASELINE.items():
        base = statistics.median(walls[baseline])
        for kind in (pair, baseline):
            median = statistics.median(walls[kind])
            print(f"{kind:22} median {median:6.2f} s  {median / base:5.2f}x  "
                  f"weights {', '.join(sorted(d[:19] for d in digests[kind]))}")
        print(f"  same weights in both: {len(digests[pair] | digests[baseline]) == 1}")


if __name__ == "__main__":
    main()
