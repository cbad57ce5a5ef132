"""Determinism overhead and reuse time, measured side by side in one run.

- overhead: wall time of `reweigh build examples/digits-cnn` (fresh store, so it
  trains) against the same training as a plain PyTorch script with default
  settings (bench/plain_digits_cnn.py), both as fresh processes, alternating,
  median of N runs. Budget: <= 1.10x.
  A third column runs the plain script with reweigh's pinned numerics only, to
  split the overhead into determinism and sandbox/bookkeeping. A fourth ends the
  plain script with a bare `os._exit` (reweigh's build process ends with a shortened
  teardown, then `os._exit`): against it, the ratio shows what reweigh's own work
  costs, its shortened teardown included, apart from what skipping the rest saves.
  A fifth runs `reweigh build --sandbox none`: the same build without the OS-level
  sandbox (bubblewrap), so the sandbox's own share shows.
- reuse: wall time of a second `reweigh build` of the built recipe (a fresh
  process, as a user runs it). Budget: < 0.5 s.

Usage: python bench/overhead.py [--runs N] [--threads T]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "digits-cnn"


CPU: dict[str, list[float]] = {"plain": [], "pinned": [], "fast": [], "built": [],
                               "unisolated": []}


def timed(command: list[str], cpu: list[float] | None = None) -> float:
    """Wall seconds of the command; its CPU seconds (user + system, its children included)
    go to `cpu`: on a shared machine they vary less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reweigh = [sys.executable, "-m", "reweigh.cli.main"]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        # Resolve the digits input once, to hand the plain script the very same bytes.
        first_store = tmp / "store-0"
        subprocess.run([*reweigh, "build", str(RECIPE), "--store", str(first_store),
                        "--threads", str(args.threads)], check=True, stdout=subprocess.DEVNULL)
        digits = next((first_store / "inputs").glob("*/scikit-learn-digits"))
        plain, pinned, fast, built, unisolated = [], [], [], [], []
        script = [sys.executable, str(ROOT / "bench" / "plain_digits_cnn.py"), str(digits)]
        for run in range(args.runs):
            plain.append(timed([*script, str(tmp / f"plain-{run}.safetensors")], CPU["plain"]))
            pinned.append(timed([*script, str(tmp / f"pinned-{run}.safetensors"), "--pinned"],
                                CPU["pinned"]))
            fast.append(timed([*script, str(tmp / f"fast-{run}.safetensors"), "--fast-exit"],
                              CPU["fast"]))
            built.append(timed([*reweigh, "build", str(RECIPE), "--store",
                                str(tmp / f"store-{run + 1}"), "--threads",
                                str(args.threads)], CPU["built"]))
            unisolated.append(timed([*reweigh, "build", str(RECIPE), "--store",
                                     str(tmp / f"none-{run + 1}"), "--threads",
                                     str(args.threads), "--sandbox", "none"], CPU["unisolated"]))
        reuse = [timed([*reweigh, "build", str(RECIPE), "--store", str(first_store)])
                 for _ in range(5)]
    p, b = statistics.median(plain), statistics.median(built)
    q, f = statistics.median(pinned), statistics.median(fast)
    print(f"digits-cnn, {args.threads} threads, median of {args.runs} runs each")
    print(f"  plain PyTorch script (default settings): {p:7.2f} s   runs {_fmt(plain)}")
    print(f"  plain script, reweigh's numerics pinned: {q:7.2f} s   runs {_fmt(pinned)}"
          f"   ({q / p:.3f}x)")
    print(f"  plain script, ending with os._exit:      {f:7.2f} s   runs {_fmt(fast)}"
          f"   ({f / p:.3f}x)")
    print(f"  reweigh build (sandboxed, deterministic): {b:7.2f} s   runs {_fmt(built)}")
    u = statistics.median(unisolated)
    print(f"  reweigh build --sandbox none:             {u:7.2f} s   runs {_fmt(unisolated)}")
    print(f"  overhead ratio reweigh/plain: {b / p:.3f}x   (budget <= 1.10x); "
          f"unisolated {u / p:.3f}x; the sandbox's share {b / u:.3f}x")
    print(f"  reweigh/plain ending with os._exit: {b / f:.3f}x   (reweigh's own work)")
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    # The sandboxed build's training runs in bubblewrap's pid namespace, whose processes
    # are not reaped into this process's children's usage: only the unisolated build's
    # CPU time can be read here.
    print(f"  CPU seconds (user + system), medians: plain {cpu['plain']:.2f}, pinned "
          f"{cpu['pinned']:.2f} ({cpu['pinned'] / cpu['plain']:.3f}x), reweigh --sandbox none "
          f"{cpu['unisolated']:.2f} ({cpu['unisolated'] / cpu['plain']:.3f}x; "
          f"{cpu['unisolated'] / cpu['fast']:.3f}x of the plain script ending with os._exit)")
    print(f"reuse: reweigh build of a built recipe: median {statistics.median(reuse):.3f} s "
          f"(runs {_fmt(reuse)}; budget < 0.5 s)")


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
