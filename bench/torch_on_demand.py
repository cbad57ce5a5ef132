"""What a numpy recipe saves now that torch loads only when recipe code imports it.

Two recipes, side by side, each built from scratch with the real `reweigh build` (in the
sandbox, one thread) into a fresh store, alternately, --runs times each:

- `numpy`: the test suite's small recipe (numpy weights, no torch anywhere);
- `numpy + import torch`: the same recipe with `import torch` at its top, which is what
  every run paid before (the runtime loaded and pinned torch before any recipe code).

Prints the median wall time of each build, the ratio, and that the weights are the same
bits (torch computes none of them either way). The figures go to bench/README.md.

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

KINDS = {"numpy": MINIMAL_TRAIN,
         "numpy + import torch": "import torch  # noqa: F401\n" + MINIMAL_TRAIN}


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
        for index, (kind, train) in enumerate(KINDS.items()):
            recipes[kind] = write_recipe(root / f"recipe-{index}", train)
        walls: dict[str, list[float]] = {kind: [] for kind in KINDS}
        digests: dict[str, set[str]] = {kind: set() for kind in KINDS}
        for _ in range(args.runs):
            for kind, folder in recipes.items():
                wall, digest = build(folder, root / "store")
                walls[kind].append(wall)
                digests[kind].add(digest)
    base = statistics.median(walls["numpy + import torch"])
    for kind in KINDS:
        median = statistics.median(walls[kind])
        print(f"{kind:22} median {median:6.2f} s  {median / base:5.2f}x  "
              f"weights {', '.join(sorted(d[:19] for d in digests[kind]))}")
    same = len(set().union(*digests.values())) == 1
    print(f"same weights in every build: {same}")


if __name__ == "__main__":
    main()
