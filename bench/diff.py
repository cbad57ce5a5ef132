"""`reweigh diff`: weight space on two large files, and the trigger search on digits-cnn.

1. Weight space. Writes two ~500 MB safetensors files (float32 tensors of 64 MB; B is
   A plus small noise in every tensor, the worst case: every tensor needs the full
   distance pass), then measures, each in a fresh process, alternating, best of N:
   - reweigh: `reweigh.audit.weights.layer_diffs` on the memory-mapped files
     (max abs, relative L2 and cosine distance per tensor, float64 accumulation);
   - baseline: plain numpy, `safetensors.numpy.load_file` of both files, then per
     tensor `a - b`, `abs().max()`, norms and a dot product on whole arrays.
   Prints MB/s (both files' bytes over the time) and peak memory: the process's peak
   resident set (which counts memory-mapped file pages while they are touched) and its
   peak anonymous memory (sampled every 5 ms: what the process itself allocated).
   The files are read once before timing, so both methods read from the page cache.

2. Trigger search. Builds digits-cnn (one thread), plants the tests' 3x3 trigger, and
   runs `reweigh.diff` with and without the trigger search; prints the search's own
   time (measured inside the sandboxed child) and the whole command's difference.

Usage: python bench/diff.py [--size-mib 512] [--runs 3] [--skip-trigger]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, resource, sys, threading, time
from pathlib import Path

peak_anon = 0
def sample():
    global peak_anon
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                peak_anon = max(peak_anon, int(line.split()[1]) * 1024)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

method, a, b = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
import numpy as np
if method == "reweigh":
    from reweigh.audit.weights import layer_diffs
    from reweigh.weights import read_header
    start = time.perf_counter()
    rows = [(d.name, d.max_abs, d.rel_l2, d.cosine_distance)
            for d in layer_diffs(read_header(a), read_header(b), 1e-3)]
else:
    from safetensors.numpy import load_file
    start = time.perf_counter()
    ta, tb = load_file(str(a)), load_file(str(b))
    rows = []
    for name in sorted(ta):
        x, y = ta[name], tb[name]
        d = x - y
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        rows.append((name, float(np.abs(d).max()), float(np.linalg.norm(d) / nx),
                     float(1 - np.dot(x, y) / (nx * ny))))
seconds = time.perf_counter() - start
time.sleep(0.02)
print(json.dumps({"seconds": seconds, "peak_rss": resource.getrusage(
    resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_anon": peak_anon,
    "rows": sorted(rows)}))
"""


def measure(method: str, a: Path, b: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, method, str(a), str(b)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def weight_space(size_mib: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        a, b = Path(scratch) / "a.safetensors", Path(scratch) / "b.safetensors"
        rng = np.random.default_rng(0)
        per = 64 << 20  # bytes per tensor
        count = max(1, size_mib * (1 << 20) // per)
        tensors = {f"layer{i}.weight": rng.standard_normal(per // 4, dtype=np.float32)
                   for i in range(count)}
        save_file(tensors, str(a))
        for name in tensors:
            tensors[name] += rng.standard_normal(per // 4, dtype=np.float32) * np.float32(1e-3)
        save_file(tensors, str(b))
        del tensors
        for path in (a, b):  # warm the page cache for both methods alike
            with open(path, "rb") as handle:
                while handle.read(1 << 24):
                    pass
        total = (a.stat().st_size + b.stat().st_size) / 1e6
        results: dict[str, list[dict]] = {"reweigh": [], "numpy": []}
        for _ in range(runs):
            for method in results:
                results[method].append(measure(method, a, b))
    ours = min(results["reweigh"], key=lambda r: r["seconds"])
    plain = min(results["numpy"], key=lambda r: r["seconds"])
    # max abs and relative L2 agree; the baseline's float32 cosine (1 - a.b / |a||b|) is
    # rounding noise at this distance (about 5e-7), which is why reweigh computes it from a-b
    agree = all(np.allclose(x[1:3], y[1:3], rtol=1e-4) for x, y in
                zip(ours["rows"], plain["rows"], strict=True))
    print(f"weight space: two files of {total / 2:.0f} MB ({count} tensors each), "
          f"best of {runs}, results agree: {agree}")
    for label, r in (("reweigh (memory-mapped)", ours), ("numpy load + subtract", plain)):
        print(f"  {label:26} {total / r['seconds']:7.0f} MB/s  {r['seconds']:6.2f} s  "
              f"peak RSS {r['peak_rss'] / 1e6:6.0f} MB  peak anonymous {r['peak_anon'] / 1e6:6.0f}"
              " MB")
    print(f"  throughput ratio reweigh/numpy: {plain['seconds'] / ours['seconds']:.2f}; "
          f"anonymous memory ratio: {ours['peak_anon'] / max(plain['peak_anon'], 1):.2f}")


def trigger_search() -> None:
    sys.path.insert(0, str(ROOT))
    from reweigh import DiffOptions, build, diff
    from reweigh.store import Store
    from tests import backdoor

    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch) / "store")
        item = build(ROOT / "examples" / "digits-cnn", store=store, threads=1).path
        suspect = Path(scratch) / "suspect.safetensors"
        backdoor.plant(item / "weights.safetensors", suspect, target=3, layers=("fc1.",))
        recipe = ROOT / "examples" / "digits-cnn"
        start = time.perf_counter()
        without = diff(item, suspect, recipe, store=store,
                       options=DiffOptions(trigger=None, threads=1))
        middle = time.perf_counter()
        report = diff(item, suspect, recipe, store=store, options=DiffOptions(threads=1))
        end = time.perf_counter()
    assert without.trigger is None and report.trigger is not None
    best = report.trigger["best"]
    print(f"trigger search on digits-cnn (359 held-out 8x8 images, 10 classes, budget "
          f"{report.trigger['pixels']} pixels, one thread):")
    print(f"  search itself (in the child): {report.trigger['seconds']:.1f} s; whole diff "
          f"{end - middle:.1f} s vs {middle - start:.1f} s without the search")
    print(f"  found: class {best['class']}, success on B {best['success_b']:.2f}, on A "
          f"{best['success_a']:.2f}, flagged {report.trigger['flagged']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-trigger", action="store_true")
    args = parser.parse_args()
    weight_space(args.size_mib, args.runs)
    if not args.skip_trigger:
        trigger_search()


if __name__ == "__main__":
    main()
