"""What adapting costs and what the base's weights are worth, measured in one run.

- cost: wall time (of the whole command, and of its build alone) and peak memory
  of `reweigh adapt digits-cnn --strategy head` and `--strategy full` on the tests'
  data set (30 drawings per class of circles, squares and triangles,
  examples/digits-cnn/shapes.py), against `--strategy scratch` (the same
  architecture and training from random weights) in the same run: fresh
  processes, alternating, median of N runs. Each run builds (a new name, so a new
  derivation). Peak memory is the largest process's maximum RSS (the command or
  its build process).
- learning curve: accuracy of head, full and scratch on unseen drawings when trained on 5,
  10 and 30 drawings per class (nothing held out of training), judged on 100 unseen
  drawings per class; the mean over several drawn data sets.

Usage: python bench/adapt.py [--runs N] [--seeds S] [--threads T] [--skip-curve]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-cnn"
STRATEGIES = ("head", "full", "scratch")
SIZES = (5, 10, 30)
# Runs one command and prints its wall time and the largest descendant's max RSS (KiB).
MEASURE = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
           "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss, r.returncode)\n")


def _shapes():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("shapes", EXAMPLE / "shapes.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak MiB of one command, run in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                         text=True, check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"failed: {' '.join(command)}")
    return float(out[0]), float(out[1]) / 1024


def adapt(store: Path, data: Path, name: str, strategy: str, threads: int,
          *extra: str) -> list[str]:
    return [sys.executable, "-m", "reweigh.cli.main", "adapt", "digits-cnn", "--data",
            str(data), "--name", name, "--strategy", strategy, "--out",
            str(store.parent / "recipes" / name), "--store", str(store), "--threads",
            str(threads), *extra]


def build_seconds(store: Path, name: str) -> float:
    """How long the build itself took (the sandboxed process: training and evaluation)."""
    from reweigh.store import Store

    the_store = Store(store)
    attempt = the_store.attempts(the_store.resolve(name).derivation)[-1]
    return attempt["ended_at"] - attempt["started_at"]


def cost(store: Path, data: Path, runs: int,
         threads: int) -> dict[str, list[tuple[float, float, float]]]:
    """Per strategy: (command wall seconds, build seconds, peak MiB) of each run."""
    results: dict[str, list[tuple[float, float, float]]] = {s: [] for s in STRATEGIES}
    for run in range(runs):
        for strategy in STRATEGIES:
            name = f"cost-{strategy}-{run}"
            wall, peak = measure(adapt(store, data, name, strategy, threads))
            results[strategy].append((wall, build_seconds(store, name), peak))
    return results


def report_cost(costs: dict[str, list[tuple[float, float, float]]]) -> None:
    base = [statistics.median(run[k] for run in costs["scratch"]) for k in range(3)]
    for strategy in STRATEGIES:
        wall, built, peak = (statistics.median(run[k] for run in costs[strategy])
                             for k in range(3))
        print(f"  {strategy:8} command {wall:6.2f} s ({wall / base[0]:.2f}x)   build "
              f"{built:6.2f} s ({built / base[1]:.2f}x)   peak {peak:5.0f} MiB "
              f"({peak / base[2]:.2f}x)   command runs "
              + " ".join(f"{run[0]:.1f}" for run in costs[strategy]))


def curve(store: Path, tmp: Path, seeds: int, threads: int) -> dict[tuple[int, str], list[float]]:
    from reweigh.adapt_template.adapt_data import read_dataset
    from reweigh.network import load

    shapes = _shapes()
    unseen = shapes.write_dataset(tmp / "unseen", 100, seed=1000)
    spec = {"kind": "image", "shape": [1, 8, 8], "scale": 16}
    x, y, _ = read_dataset(unseen, "images", spec)
    accuracy: dict[tuple[int, str], list[float]] = {}
    for size in SIZES:
        for seed in range(seeds):
            data = shapes.write_dataset(tmp / f"curve-{size}-{seed}", size, seed=100 + seed)
            for strategy in STRATEGIES:
                name = f"curve-{strategy}-{size}-{seed}"
                report = subprocess.run(adapt(store, data, name, strategy, threads,
                                              "--held-out", "0", "--json"),
                                        capture_output=True, text=True, check=True)
                network = load(Path(json.loads(report.stdout)["path"]))
                predicted = np.asarray([p.index for p in network.predict(x)])
                accuracy.setdefault((size, strategy), []).append(float(np.mean(predicted == y)))
            print(f"  {size:2d} per class, data set {seed}: " + ", ".join(
                f"{s} {accuracy[(size, s)][-1]:.3f}" for s in STRATEGIES), flush=True)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-curve", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        store = tmp / "store"
        subprocess.run([sys.executable, "-m", "reweigh.cli.main", "build", str(EXAMPLE),
                        "--store", str(store), "--threads", str(args.threads)], check=True,
                       stdout=subprocess.DEVNULL)
        data = _shapes().write_dataset(tmp / "shapes", 30, seed=0)
        started = time.perf_counter()
        costs = cost(store, data, args.runs, args.threads)
        print(f"cost: reweigh adapt digits-cnn on 90 drawings (30 per class, a quarter held "
              f"out), {args.threads} threads, median of {args.runs} runs; ratios to scratch")
        report_cost(costs)
        if args.skip_curve:
            return
        print(f"learning curve: accuracy on 300 unseen drawings, mean of {args.seeds} data sets")
        accuracy = curve(store, tmp, args.seeds, args.threads)
        print("  per class   " + "   ".join(f"{s:>13}" for s in STRATEGIES))
        for size in SIZES:
            print(f"  {size:9d}   " + "   ".join(
                f"{statistics.mean(accuracy[(size, s)]):.3f} ± "
                f"{statistics.pstdev(accuracy[(size, s)]):.3f}" for s in STRATEGIES))
        print(f"(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
