"""What adapting costs, and which training carries over to drawings by another hand.

Parts (all by default, or the ones named with --part):

- choice: `reweigh adapt digits-cnn` on 40 drawings per class from generator A
  (examples/digits-cnn/shapes.py) under each configuration below, judged on 100
  drawings per class from generator B (tests/drawings2.py: another canvas, pen, paper,
  size, place and hand; never trained on) and on 100 unseen ones from A. Accuracy is
  the mean ± spread over S drawn training sets; the build time (the sandboxed build
  alone, training and evaluation) is the median of its ratio to the former default's
  (60 epochs, no augmentation, no early stopping), run side by side on the same data.
- curve: accuracy on B after training on 5, 10, 20 and 40 drawings per class, with the
  former default and with the default.
- ceiling: how recognisable B's drawings are at 8x8: the default strategy without
  augmentation trained on 300 of B's own drawings per class, judged on the same 300 fresh
  ones of B as the other parts.
- cost: wall time and peak memory of `--strategy head`, `full` and `scratch` on 30
  drawings per class (fresh processes, alternating, median of N runs).

Usage: python bench/adapt.py [--part choice|curve|ceiling|cost ...] [--seeds S]
                             [--runs N] [--threads T]
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
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-cnn"
FORMER = ("--no-augment", "--epochs", "60", "--patience", "0")  # the default until issue 17
CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "former default: 60 epochs, no augmentation": FORMER,
    "no augmentation, early stopping": ("--no-augment",),
    "default: all augmentation, early stopping": (),
    "  without shift": ("--augment", "scale,rotate,ink,noise"),
    "  without scale": ("--augment", "shift,rotate,ink,noise"),
    "  without rotate": ("--augment", "shift,scale,ink,noise"),
    "  without ink": ("--augment", "shift,scale,rotate,noise"),
    "  without noise": ("--augment", "shift,scale,rotate,ink"),
    "  200 epochs, no early stopping": ("--patience", "0"),
    "  100 epochs, no early stopping": ("--epochs", "100", "--patience", "0"),
    "  300 epochs at most": ("--epochs", "300"),
    "  --strategy head": ("--strategy", "head"),
    "  --strategy scratch": ("--strategy", "scratch"),
}
CURVE_SIZES = (5, 10, 20, 40)
SPEC = {"kind": "image", "shape": [1, 8, 8], "scale": 16}
# Runs one command and prints its wall time and the largest descendant's max RSS (KiB).
MEASURE = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
           "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss, r.returncode)\n")


def _module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


A = _module("shapes", EXAMPLE / "shapes.py")  # the drawings adapt trains on
B = _module("drawings2", ROOT / "tests" / "drawings2.py")  # another program's


@dataclass
class Bench:
    tmp: Path
    store: Path
    threads: int

    def adapt(self, data: Path, name: str, *options: str) -> list[str]:
        return [sys.executable, "-m", "reweigh.cli.main", "adapt", "digits-cnn", "--data",
                str(data), "--name", name, "--out", str(self.tmp / "recipes" / name),
                "--store", str(self.store), "--threads", str(self.threads), *options]

    def run(self, data: Path, name: str, *options: str) -> dict:
        """Adapt, and report the item, its build's seconds and its training metrics."""
        done = subprocess.run(self.adapt(data, name, *options, "--json"), capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"adapt {name} failed: {done.stderr.strip()}")
        report = json.loads(done.stdout)
        return {"path": Path(report["path"]), "seconds": self.build_seconds(name),
                "epochs": report["training"].get("epochs_trained")}

    def build_seconds(self, name: str) -> float:
        from reweigh.store import Store

        store = Store(self.store)
        attempt = store.attempts(store.resolve(name).derivation)[-1]
        return float(attempt["ended_at"] - attempt["started_at"])

    def drawings(self, generator: ModuleType, per_class: int, seed: int) -> Path:
        folder = self.tmp / f"{generator.__name__}-{per_class}-{seed}"
        return folder if folder.exists() else generator.write_dataset(folder, per_class,
                                                                       seed=seed)


def accuracy(item: Path, folder: Path) -> float:
    from reweigh.adapt_template.adapt_data import read_dataset
    from reweigh.network import load

    x, y, _ = read_dataset(folder, "images", SPEC)
    predicted = np.asarray([p.index for p in load(item).predict(x)])
    return float(np.mean(predicted == y))


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}"


def choice(bench: Bench, seeds: int) -> None:
    judge_b, judge_a = bench.drawings(B, 100, 1000), bench.drawings(A, 100, 1000)
    rows: dict[str, dict[str, list[float]]] = {
        c: {"b": [], "a": [], "ratio": [], "epochs": []} for c in CONFIGURATIONS}
    for seed in range(seeds):
        data = bench.drawings(A, 40, 100 + seed)
        former = None
        for n, (config, options) in enumerate(CONFIGURATIONS.items()):
            got = bench.run(data, f"choice-{n}-{seed}", *options)
            former = former or got["seconds"]
            row = rows[config]
            row["b"].append(accuracy(got["path"], judge_b))
            row["a"].append(accuracy(got["path"], judge_a))
            row["ratio"].append(got["seconds"] / former)
            row["epochs"].append(got["epochs"])
        print(f"  training set {seed + 1} of {seeds} done", flush=True)
    print(f"choice: 40 drawings per class from A (a quarter held out), {seeds} training sets; "
          "judged on 300 of B's and 300 unseen of A's")
    print(f"  {'configuration':44} {'accuracy on B':>15} {'on A':>15} {'epochs':>8} "
          f"{'build time':>10}")
    for config, row in rows.items():
        print(f"  {config:44} {spread(row['b']):>15} {spread(row['a']):>15} "
              f"{statistics.mean(row['epochs']):8.0f} {statistics.median(row['ratio']):9.2f}x")


def curve(bench: Bench, seeds: int) -> None:
    judge = bench.drawings(B, 100, 1000)
    print(f"curve: accuracy on 300 of B's drawings after training on N per class from A, "
          f"mean of {seeds} training sets")
    print(f"  {'per class':>9}   {'former default':>15}   {'default':>15}")
    for size in CURVE_SIZES:
        found: dict[str, list[float]] = {"former": [], "default": []}
        for seed in range(seeds):
            data = bench.drawings(A, size, 200 + seed)
            for label, options in (("former", FORMER), ("default", ())):
                got = bench.run(data, f"curve-{label}-{size}-{seed}", *options)
                found[label].append(accuracy(got["path"], judge))
        print(f"  {size:9d}   {spread(found['former']):>15}   {spread(found['default']):>15}",
              flush=True)


def ceiling(bench: Bench) -> None:
    got = bench.run(bench.drawings(B, 300, 7), "ceiling", "--no-augment")
    print(f"ceiling: trained on 300 per class of B's own drawings (no augmentation): "
          f"{accuracy(got['path'], bench.drawings(B, 100, 1000)):.3f} on 300 fresh ones of B")


def measure(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak MiB of one command, run in a fresh process."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True,
                         text=True, check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"failed: {' '.join(command)}")
    return float(out[0]), float(out[1]) / 1024


def cost(bench: Bench, runs: int) -> None:
    strategies = ("head", "full", "scratch")
    data = bench.drawings(A, 30, 0)
    found: dict[str, list[tuple[float, float, float]]] = {s: [] for s in strategies}
    for run in range(runs):
        for strategy in strategies:
            name = f"cost-{strategy}-{run}"
            wall, peak = measure(bench.adapt(data, name, "--strategy", strategy))
            found[strategy].append((wall, bench.build_seconds(name), peak))
    print(f"cost: reweigh adapt digits-cnn on 90 drawings (30 per class, a quarter held "
          f"out), {bench.threads} threads, median of {runs} runs; ratios to scratch")
    base = [statistics.median(run[k] for run in found["scratch"]) for k in range(3)]
    for strategy in strategies:
        wall, built, peak = (statistics.median(run[k] for run in found[strategy])
                             for k in range(3))
        print(f"  {strategy:8} command {wall:6.2f} s ({wall / base[0]:.2f}x)   build "
              f"{built:6.2f} s ({built / base[1]:.2f}x)   peak {peak:5.0f} MiB "
              f"({peak / base[2]:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", action="append",
                        choices=("choice", "curve", "ceiling", "cost"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    parts = args.part or ["choice", "curve", "ceiling", "cost"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        bench = Bench(Path(scratch), Path(scratch) / "store", args.threads)
        subprocess.run([sys.executable, "-m", "reweigh.cli.main", "build", str(EXAMPLE),
                        "--store", str(bench.store), "--threads", str(args.threads)],
                       check=True, stdout=subprocess.DEVNULL)
        if "choice" in parts:
            choice(bench, args.seeds)
        if "curve" in parts:
            curve(bench, args.seeds)
        if "ceiling" in parts:
            ceiling(bench)
        if "cost" in parts:
            cost(bench, args.runs)
    print(f"(whole run {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
