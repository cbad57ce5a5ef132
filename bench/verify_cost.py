"""What checking a transcript costs against rebuilding: `verify --spot K` with K = 5% of
the segments, beside a full `build --check`, in one run. Budget: <= 10%.

For each recipe: build it once into a fresh store (not timed), then time, as fresh
processes the way a user runs them, `reweigh build RECIPE --check` (a whole second
training run, compared bit for bit) and `reweigh verify ITEM --transcript ... --spot K`
(K random segments plus the last, in one sandboxed process).

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
            spent, out = reweigh("verify", str(item), "--transcript",
                                 str(item / "transcript.json"), "--spot", "5%",
                                 "--seed", "1", "--json", "--store", store)
            report = json.loads(out)
            segments, spot = report["segments_total"], len(report["segments"]) - 1
        changed = f" ({', '.join(args.param)})" if args.param else ""
        print(f"{recipe.name}{changed}: {segments} segments, --spot {spot} (+ the last)")
        print(f"  build --check: {check:7.1f} s")
        print(f"  verify:        {spent:7.1f} s  ({spent / check:.1%} of build --check; "
              f"replayed {report['compute_fraction']:.1%} of the training steps; "
              f"verdict {report['verdict']})   budget <= 10%")


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
