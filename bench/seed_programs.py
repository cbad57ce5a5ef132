"""The seed's two programs side by side: what recomputing each costs here, and what it gives.

For examples/translate-en-de (LibreTranslate's kind: a translator) and
examples/backgammon-td (GNU Backgammon's kind: a self-taught player), in one store:

1. `reweigh estimate RECIPE --json`: a few seconds of the real build, extrapolated;
2. `reweigh build RECIPE --json` from scratch (or reused, with --reuse): wall time, and
   the CPU time of the recipe's own processes (the `runtime` processes descending from
   the build's command, read from /proc while they run: the sandbox's processes are not
   reaped into the caller's CPU time, and another build's are not this one's);
3. the build's metrics: BLEU and chrF against both baselines; win rates against random
   and pubeval.

The machine's load average is printed at the start and end of each build: on a shared
machine, wall time is mostly other people's work, the CPU time is this build's.

Usage: python bench/seed_programs.py [--store DIR] [--reuse] [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"translate-en-de": ROOT / "examples" / "translate-en-de",
           "backgammon-td": ROOT / "examples" / "backgammon-td"}
METRICS = {"translate-en-de": ("bleu", "bleu_dictionary", "bleu_copy", "chrf",
                               "chrf_dictionary", "chrf_copy", "exact_match"),
           "backgammon-td": ("win_rate_vs_random", "win_rate_vs_pubeval", "games")}


def reweigh(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reweigh.cli.main", *args, "--store",
                           str(store)], capture_output=True, text=True, check=False)


class RuntimeCPU(threading.Thread):
    """Sums the CPU time of the `reweigh.runtime` processes that descend from process
    `root` (the build's command) while it runs (the last reading of each pid), from
    /proc/PID/stat (utime + stime)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.seen: dict[int, float] = {}
        self.stop = threading.Event()
        self.ticks = os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for pid in _runtimes():
                fields = _stat(pid)
                if fields and _descends(pid, self.root):
                    self.seen[pid] = (int(fields[11]) + int(fields[12])) / self.ticks

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _descends(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        fields = _stat(pid)
        pid = int(fields[1]) if fields else 0
    return False


def _runtimes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"reweigh.runtime" in command:
                found.append(int(entry.name))
    return found


def measure(name: str, recipe: Path, store: Path) -> None:
    estimate = reweigh("estimate", str(recipe), "--json", store=store)
    if estimate.returncode == 0:
        e = json.loads(estimate.stdout)
        print(f"  estimate: {e['core_hours']:.3g} core-hours here (start-up "
              f"{e['startup_seconds']:.0f} s, {e['seconds_per_step']:.3g} s a step x "
              f"{e['total_steps']}; {e['flops']:.3g} FLOP; load average "
              f"{os.getloadavg()[0]:.1f})")
    else:
        print(f"  estimate failed: {estimate.stderr.strip()[-300:]}")
    load = os.getloadavg()[0]
    started = time.perf_counter()
    command = subprocess.Popen([sys.executable, "-m", "reweigh.cli.main", "build", str(recipe),
                                "--json", "--store", str(store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    watch = RuntimeCPU(command.pid)
    watch.start()
    out, err = command.communicate()
    wall = time.perf_counter() - started
    watch.stop.set()
    watch.join()
    if command.returncode != 0:
        print(f"  build failed: {err.strip()[-500:]}")
        return
    report = json.loads(out)
    print(f"  build: {wall:.0f} s wall, {watch.seconds:.0f} s CPU of its runtime processes, "
          f"reused={report['reused']}, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"  weights {report['weights_digest']}")
    evaluation = json.loads((Path(report["path"]) / "metrics.json").read_text())["evaluation"]
    print("  " + ", ".join(f"{k} {evaluation[k]:.4g}" for k in METRICS[name]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="keep built items (no rebuild)")
    parser.add_argument("--only", choices=sorted(RECIPES), default=None)
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="seed-programs-")) / "store"
    if not args.reuse and args.store is not None and (store / "items").exists():
        sys.exit(f"{store}: already has items; give a new store or --reuse")
    for name, recipe in RECIPES.items():
        if args.only in (None, name):
            print(name)
            measure(name, recipe, store)


if __name__ == "__main__":
    main()
