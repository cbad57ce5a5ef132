"""Self-play shards of connect4-zero as Ray tasks: 1 worker against N, the same shards.

`reweigh build --workers N` runs ctx.map's items as Ray tasks on a local cluster of N
workers (reweigh.cluster). This plays the same S shards of G games (the default recipe's
search, 50 simulations a move, an untrained network: the figure is about the search) on
a cluster of 1 worker and on one of N, each in a fresh process, alternating, R rounds:
the very same tasks, so the results must be the same bits (their digest is printed), and
the ratio of the times is the speed-up from the workers alone. In each process the
cluster is started (timed apart), the shards played once to warm the workers (they load
torch), then timed. Also per worker its peak memory (VmHWM of each `ray::` process), and
what Ray's own processes (GCS, raylet, agents, dashboard head) hold.

Usage: python bench/ray_selfplay.py [--games G] [--shards S] [--workers 1 2] [--rounds R]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "connect4-zero"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--games", type=int, default=64)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: N workers
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_run(args.one, args.games, args.shards)))
        return
    runs: dict[int, list[dict]] = {n: [] for n in args.workers}
    for round_ in range(args.rounds):
        for n in args.workers if round_ % 2 == 0 else args.workers[::-1]:
            out = subprocess.run([sys.executable, __file__, "--one", str(n), "--games",
                                  str(args.games), "--shards", str(args.shards)],
                                 capture_output=True, text=True, check=True)
            runs[n].append(json.loads(out.stdout.strip().splitlines()[-1]))
    report(runs, args)


def report(runs: dict[int, list[dict]], args: argparse.Namespace) -> None:
    base = args.workers[0]
    median = {n: statistics.median(r["play"] for r in rs) for n, rs in runs.items()}
    print(f"connect4-zero self-play as Ray tasks: {args.shards} shards of "
          f"{args.games // args.shards} games, 50 simulations a move; {args.rounds} rounds, "
          f"fresh processes, alternating; load average {os.getloadavg()[0]:.1f} at the end")
    print("| Ray workers | start-up | play (median) | speed-up | positions/s | CPU s of each "
          "worker, of Ray's own, of the driver | peak RSS per worker | Ray's own RSS | "
          "results |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, rs in runs.items():
        digests = {r["digest"] for r in rs}
        workers = [m for r in rs for m in r["worker_peak_mib"]]
        each = ", ".join(f"{r['play']:.2f}" for r in rs)
        mid = sorted(rs, key=lambda r: r["play"])[len(rs) // 2]
        cpu = (f"{' + '.join(f'{c:.1f}' for c in mid['worker_cpu'])}, "
               f"{mid['ray_own_cpu']:.1f}, {mid['driver_cpu']:.1f}")
        print(f"| {n} | {statistics.median(r['startup'] for r in rs):.1f} s | "
              f"{median[n]:.2f} s ({each}) | "
              f"{median[base] / median[n]:.2f}x | {rs[0]['positions'] / median[n]:.0f} | "
              f"{cpu} | "
              f"{min(workers):.0f}-{max(workers):.0f} MiB | "
              f"{statistics.median(r['ray_own_mib'] for r in rs):.0f} MiB | "
              f"{'/'.join(d[:12] for d in digests)} |")
    same = len({r["digest"] for rs in runs.values() for r in rs}) == 1
    print(f"results of every run: {'the same bits' if same else 'DIFFERENT'}")


def one_run(workers: int, games: int, shards: int) -> dict:
    """In a fresh process: a local cluster of `workers`, the shards played twice. The
    process is set up as a build's is (pinned numerics, before torch loads): the workers
    check that they run on its platform."""
    from reweigh import cluster, environment, numerics

    os.environ.update(environment.build_env(1, numerics.here(numerics.NATIVE)))
    environment.apply_torch_numerics(1)
    sys.path.insert(0, str(EXAMPLE))
    import selfplay
    import torch
    from net import Connect4Net, shape_of

    params = tomllib.loads((EXAMPLE / "recipe.toml").read_text())["params"]
    torch.manual_seed(0)
    weights = {k: v.numpy().copy() for k, v in Connect4Net(**shape_of(params)).state_dict().items()}
    tasks = [{"weights": weights, "shape": shape_of(params), "games": games // shards,
              "seed": [0, 0, s], "search": params["search"]} for s in range(shards)]
    engine = cluster.Engine(cluster.Tasks(workers, None, str(EXAMPLE), (), numerics.NATIVE),
                            lambda *a, **k: None)
    try:
        started = time.perf_counter()
        engine.map(_noop, [0, 1])  # the cluster, up
        startup = time.perf_counter() - started
        engine.map(selfplay.play_shard, tasks)  # every worker has loaded torch, the network
        before = _cpu_seconds()
        started = time.perf_counter()
        results = engine.map(selfplay.play_shard, tasks)
        play = time.perf_counter() - started
        after = _cpu_seconds()
        memory = _ray_memory()
    finally:
        engine.close()
    digest = hashlib.sha256()
    for shard in results:
        for key in sorted(shard):
            digest.update(shard[key].tobytes())
    used = {key: after[key] - before.get(key, 0.0) for key in after}
    return {"startup": startup, "play": play, "digest": digest.hexdigest(),
            "positions": int(sum(int(s["plies"].sum()) for s in results)), **memory,
            "worker_cpu": sorted((v for k, v in used.items() if k[1] == "worker"),
                                 reverse=True),
            "ray_own_cpu": sum(v for k, v in used.items() if k[1] == "own"),
            "driver_cpu": sum(v for k, v in used.items() if k[1] == "driver")}


def _cpu_seconds() -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) so far of this process and each of its descendants,
    by (pid, kind): the driver, a Ray worker (`ray::` task process) or Ray's own."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for pid in [os.getpid(), *_descendants()]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            continue
        kind = ("driver" if pid == os.getpid() else
                "worker" if _is_worker(command) else "own")
        seconds[pid, kind] = (int(fields[11]) + int(fields[12])) / tick
    return seconds


def _is_worker(command: str) -> bool:
    return command.startswith("ray::") and command not in ("ray::DashboardAgent",
                                                            "ray::RuntimeEnvAgent")


def _noop(x: int) -> int:
    return x


def _descendants() -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    todo, mine = [os.getpid()], []
    while todo:
        pid = todo.pop()
        kids = children.get(pid, [])
        mine += kids
        todo += kids
    return mine


def _ray_memory() -> dict:
    """Peak RSS of each Ray worker (`ray::` processes) and the current RSS of Ray's own
    processes, among this process's descendants."""
    workers, own = [], 0.0
    for pid in _descendants():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            status = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if _is_worker(command):
            workers.append(int(status["VmHWM"].split()[0]) / 1024)
        else:
            own += int(status.get("VmRSS", "0 kB").split()[0]) / 1024
    return {"worker_peak_mib": workers, "ray_own_mib": own}


if __name__ == "__main__":
    main()
