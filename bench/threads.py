"""What the thread count costs each command that runs recipe code: one thread against
every usable core, so that the defaults are never slower than one thread.

For each recipe: build it once at one thread into a fresh store (not timed), write a
copy of its weights with one tensor scaled by 1.001 (the suspect for `challenge` and
`diff`), then time, as fresh processes the way a user runs them and alternating the
thread counts run by run, `build --check` (a whole second training), `verify --spot 2`
(the first segment, the largest update of each of 3 stretches, two random segments and
the last), `challenge --published COPY` (two evaluations) and `diff ITEM COPY` (the
audit, with its trigger search). Prints the median wall time of each and the ratio to
one thread; the load average before and after says how busy the (shared) machine was.

Usage: python bench/threads.py [--runs N] [--threads T ...] [--skip CMD ...] [RECIPE ...]
(default: digits-cnn and textgen, 3 runs, 1 thread and all usable cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

from verify_cost import reweigh  # bench/ is on the path when a bench runs

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = [ROOT / "examples" / "digits-cnn", ROOT / "examples" / "textgen"]
COMMANDS = ("build-check", "verify", "challenge", "diff")


def arguments(command: str, recipe: Path, item: Path, suspect: Path) -> list[str]:
    return {
        "build-check": ["build", str(recipe), "--check"],
        "verify": ["verify", str(item), "--transcript", str(item / "transcript.json"),
                   "--spot", "2", "--seed", "1"],
        "challenge": ["challenge", str(recipe), "--published", str(suspect)],
        "diff": ["diff", str(item), str(suspect), "--recipe", str(recipe)],
    }[command]


def scaled_copy(weights: Path, target: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 1.001
    save_file(tensors, str(target))


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, cores}))
    parser.add_argument("--skip", nargs="*", default=[], choices=COMMANDS)
    parser.add_argument("recipes", nargs="*", type=Path, default=DEFAULT)
    args = parser.parse_args()
    print(f"{cores} usable cores; load average {os.getloadavg()[0]:.2f}")
    for recipe in args.recipes:
        with tempfile.TemporaryDirectory() as scratch:
            store = str(Path(scratch) / "store")
            _, out = reweigh("build", str(recipe), "--json", "--threads", "1", "--store", store)
            item = Path(json.loads(out)["path"])
            suspect = Path(scratch) / "suspect.safetensors"
            scaled_copy(item / "weights.safetensors", suspect)
            for command in (c for c in COMMANDS if c not in args.skip):
                times: dict[int, list[float]] = {t: [] for t in args.threads}
                for _ in range(args.runs):
                    for threads in args.threads:
                        spent, _ = reweigh(*arguments(command, recipe, item, suspect),
                                           "--threads", str(threads), "--store", store)
                        times[threads].append(spent)
                one = statistics.median(times[args.threads[0]])
                cells = [f"{t} thread(s) {statistics.median(s):6.1f} s "
                         f"({statistics.median(s) / one:.2f}x)" for t, s in times.items()]
                print(f"{recipe.name:12} {command:12} " + "  ".join(cells), flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
