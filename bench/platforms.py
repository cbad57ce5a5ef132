"""What the portable numerics platform costs: each example built on x86-64-v3 (the
default) and on the machine's native kernels, side by side in one run.

Each round builds every example once per platform, each build a fresh process into a
fresh store (so it trains), the order of the two platforms alternating from round to
round. Reported per example: the median wall and CPU seconds of each platform, the
median of the per-round ratios (portable / native), and both weights digests (the same
digest on both would mean the machine's kernels are the portable ones). Budget: at most
1.10x on digits-cnn and connect4-zero. The builds run with `--sandbox none` unless
`--sandbox bubblewrap` is given: the platform's cost does not depend on the sandbox, and
only an unsandboxed build's training process is counted in this process's CPU time (the
sandbox's own process reaps it). On a shared machine the CPU ratio is the one to read.

Usage: python bench/platforms.py [--rounds N] [--threads T] [--examples a,b] [--full]
(--full: connect4-zero's and textgen's full recipes instead of their smoke variants)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SMOKE = {"connect4-zero": EXAMPLES / "connect4-zero" / "smoke.toml"}
PLATFORMS = ("native", "portable")


def recipe_of(name: str, full: bool) -> Path:
    if full:
        return EXAMPLES / name
    if name in SMOKE:
        return SMOKE[name]
    if name == "textgen":  # 400 of its 1500 steps, as the tests build it
        text = (EXAMPLES / "textgen" / "recipe.toml").read_text()
        variant = EXAMPLES / "textgen" / "bench-smoke.toml"
        variant.write_text(text.replace("\nsteps = 1500\n", "\nsteps = 400\n"))
        return variant
    return EXAMPLES / name


def build(recipe: Path, platform: str, threads: int, store: Path,
          sandbox: str) -> tuple[float, float, str]:
    """Wall and CPU seconds (the build and its children) and the weights digest."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reweigh.cli.main", "build", str(recipe),
                           "--platform", platform, "--threads", str(threads), "--json",
                           "--sandbox", sandbox,
                           "--store", str(store)], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, json.loads(done.stdout)["weights_digest"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", default="digits-logreg,digits-cnn,textgen,connect4-zero")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--sandbox", default="none", choices=("none", "bubblewrap"))
    args = parser.parse_args()
    names = args.examples.split(",")
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    digests: dict[tuple[str, str], set[str]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        recipes = {name: recipe_of(name, args.full) for name in names}
        try:
            for round_ in range(args.rounds):
                for name in names:
                    order = PLATFORMS if round_ % 2 == 0 else PLATFORMS[::-1]
                    for platform in order:
                        store = tmp / f"{name}-{platform}-{round_}"
                        w, c, digest = build(recipes[name], platform, args.threads, store,
                                             args.sandbox)
                        wall.setdefault((name, platform), []).append(w)
                        cpu.setdefault((name, platform), []).append(c)
                        digests.setdefault((name, platform), set()).add(digest)
                        print(f"round {round_ + 1} {name:14} {platform:9} {w:7.2f} s wall "
                              f"{c:7.2f} s cpu {digest[:19]}", file=sys.stderr)
        finally:
            variant = EXAMPLES / "textgen" / "bench-smoke.toml"
            variant.unlink(missing_ok=True)
    print(f"\n{args.rounds} rounds, {args.threads} thread(s), "
          f"{'full' if args.full else 'smoke'} recipes where they have one\n")
    print(f"{'example':15} {'native s':>9} {'portable s':>10} {'ratio':>6} {'cpu ratio':>9}  "
          "digests native / portable")
    for name in names:
        n, p = wall[(name, "native")], wall[(name, "portable")]
        ratios = [b / a for a, b in zip(n, p, strict=True)]
        cpu_ratios = [b / a for a, b in zip(cpu[(name, "native")], cpu[(name, "portable")],
                                             strict=True)]
        seen = [", ".join(sorted(d[:19] for d in digests[(name, pl)])) for pl in PLATFORMS]
        print(f"{name:15} {statistics.median(n):9.2f} {statistics.median(p):10.2f} "
              f"{statistics.median(ratios):6.2f} {statistics.median(cpu_ratios):9.2f}  "
              f"{seen[0]} / {seen[1]}")


if __name__ == "__main__":
    main()
