"""What checking a transcript costs against rebuilding: `verify --spot K` with K = 5% of
the segments, beside a full `build --check`, in one run. Budget: <= 10%.

For each recipe: build it once into a fresh store (not timed), then time, as fresh
processes the way a user runs them, `reweigh build RECIPE --check` (a whole second
training run, compared bit for bit), `reweigh verify ITEM --transcript ... --spot K
--largest 0` (K random segments plus the last, in one sandboxed process: verify before
the largest updates) and the same with the default `--largest` (the first segment and
the largest update of each of 3 stretches added). Then, in this process, what measuring
the updates alone costs (`states.updates` over every checkpoint, no training).

Usage: python bench/verify_cost.py [--store DIR] [--param KEY=VALUE ...] [RECIPE ...]
(default: digits-cnn and connect4-zero; with --store, a recipe already built there is
not built again). `--param epochs=150` times a copy of each recipe with that parameter
changed: how the ratio moves as training grows against the fixed start-up costs.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "examples" / "digits-cnn", ROOT / "examples" / "connect4-zero"]


def reweigh(*args: str) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reweigh.cli.main", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(done.stderr)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="a store to build in and keep (default: a fresh one)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="change a parameter in a copy of each recipe (repeatable)")
    parser.add_argument("recipes", nargs="*", type=Path, default=DEFAULT)
    args = parser.parse_args()
    for recipe in args.recipes:
        with tempfile.TemporaryDirectory() as scratch:
            if args.param:
                recipe = _variant(recipe, args.param, Path(scratch) / recipe.name)
            store = args.store or str(Path(scratch) / "store")
            _, out = reweigh("build", str(recipe), "--json", "--store", store)
            item = Path(json.loads(out)["path"])
            check, _ = reweigh("build", str(recipe), "--check", "--store", store)
            random_only = _verify(item, store, "--largest", "0")
            with_largest = _verify(item, store)
            measuring = _measure(item)
        report = with_largest[1]
        changed = f" ({', '.join(args.param)})" if args.param else ""
        print(f"{recipe.name}{changed}: {report['segments_total']} segments, --spot "
              f"{report['sampling']['random']} (+ the last); --largest "
              f"{report['sampling']['stretches']} (+ the first)")
        print(f"  build --check:               {check:7.1f} s")
        for label, (spent, done) in (("verify --largest 0:", random_only),
                                     ("verify (largest updates):", with_largest)):
            print(f"  {label:<28} {spent:7.1f} s  ({spent / check:.1%} of build --check; "
                  f"{len(done['segments'])} segments, {done['compute_fraction']:.1%} of the "
                  f"training steps; verdict {done['verdict']})   budget <= 10%")
        print(f"  measuring the updates alone: {measuring:7.3f} s  (every checkpoint, "
              "in this process)")


def _verify(item: Path, store: str, *args: str) -> tuple[float, dict]:
    spent, out = reweigh("verify", str(item), "--transcript", str(item / "transcript.json"),
                         "--spot", "5%", "--seed", "1", *args, "--json", "--store", store)
    return spent, json.loads(out)


def _measure(item: Path) -> float:
    from reweigh.states import updates
    from reweigh.weights import read_header

    checkpoints = [item / c["file"] for c in
                   json.loads((item / "transcript.json").read_text())["checkpoints"]]
    started = time.perf_counter()
    updates(checkpoints, read_header(item / "weights.safetensors"))
    return time.perf_counter() - started


def _variant(recipe: Path, params: list[str], folder: Path) -> Path:
    """A copy of the recipe's directory with `KEY = VALUE` lines of recipe.toml changed."""
    shutil.copytree(recipe, folder)
    toml = folder / "recipe.toml"
    text = toml.read_text()
    for param in params:
        key, _, value = param.partition("=")
        text, found = re.subn(rf"^{re.escape(key)}\s*=.*$", f"{key} = {value}", text,
                              count=1, flags=re.MULTILINE)
        if not found:
            raise SystemExit(f"{recipe}/recipe.toml: no parameter {key!r}")
    toml.write_text(text)
    return folder


if __name__ == "__main__":
    main()
