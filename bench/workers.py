"""Data-parallel workers: the speed-up, the price of the fixed order, the memory.

The training step of examples/fortunes-lm (its model, batch and shards, from the
recipe's parameters) run three ways, each in fresh processes on one thread apiece:

- `shards` on 1 worker: the build's plain path, every shard in one process;
- `shards` on N workers: reweigh's data parallelism (`reweigh.shards`, what `build
  --workers N` runs): each worker its block of the shards, the fixed-order reduction;
- `ddp` on N workers: torch's DistributedDataParallel on gloo, the same model, batch
  and world size: each worker one forward and backward of its part of the batch, the
  gradients averaged by DDP's bucketed all-reduce.

It prints per configuration the median seconds a step (after warm-up steps, over
alternating rounds), the speed-up over one worker, the fixed order's cost against DDP
(step-time ratio; and the seconds a step spent in the gather of the workers' subtree
sums, the wait for the slowest worker included), the speed-up and the cost also by CPU
seconds a step of one worker (what the ratios would be with a core for each worker and
no waiting: on a machine busy with other work, two workers get two shares of it whatever
its cores, and wall-time ratios mislead), each worker's peak memory (ru_maxrss, and its
growth over the process after imports), and the digest of the weights after the steps:
one digest for every worker count of `shards`, while DDP's follow the world size (`ddp`
on 1 worker is run for that).

Goals (issue 14): speed-up from 1 to 2 workers >= 1.7x on the 2-core machine; shards
over DDP at the same world size <= 1.25x. Wall time on a shared machine is mostly other
people's work: the load average is printed before and after, and CPU seconds a step beside.

`--builds STEPS` adds whole builds: `reweigh build` of the recipe cut to STEPS steps,
fresh stores, on 1 worker and on each N, alternating over the rounds: wall time, the
speed-up, and the weights digest of each (start-up, evaluation and samples included:
what a user waits for).

The workers start with a build's environment: the numerics platform's kernel caps
(`--platform`, default the recipe default), the pinned settings, one thread.

Usage: python bench/workers.py [--workers 2 ...] [--steps 8] [--warmup 2] [--rounds 3]
                               [--recipe examples/fortunes-lm/recipe.toml] [--no-ddp-1]
                               [--builds STEPS] [--skip-steps] [--platform P]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "fortunes-lm" / "recipe.toml"


@dataclass(frozen=True)
class Run:
    mode: str  # "shards" or "ddp"
    workers: int


@dataclass(frozen=True)
class Setup:
    params: dict[str, Any]  # the recipe's
    source: str  # the recipe's folder, where model.py is
    steps: int
    warmup: int


@dataclass(frozen=True)
class Measured:
    step_s: float  # wall seconds a step, rank 0, after warm-up
    cpu_s: float  # CPU seconds a step, the mean over workers
    exchange_s: float  # seconds a step in the gather of subtree sums, waits included (shards)
    peak_mib: float  # the largest worker's peak resident memory
    growth_mib: float  # the largest growth of a worker's peak over its start (after imports)
    digest: str  # the weights after the steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--no-ddp-1", action="store_true",
                        help="skip DDP on one worker (only there to show its digest moves)")
    parser.add_argument("--builds", type=int, default=0, metavar="STEPS",
                        help="also time whole builds of the recipe cut to STEPS steps")
    parser.add_argument("--skip-steps", action="store_true",
                        help="only the whole builds")
    parser.add_argument("--platform", default="portable",
                        help="the numerics platform the workers run on, as a build's do "
                        "(default: the recipe default, portable: x86-64-v3 on x86-64)")
    args = parser.parse_args()
    if not args.skip_steps:
        steps_side_by_side(args)
    if args.builds:
        builds_side_by_side(args)


def steps_side_by_side(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from reweigh import environment, numerics

    # the environment a build's process starts with (kernels capped at the platform's
    # level: AVX2 for x86-64-v3 on this AVX-512 machine), for the spawned workers
    platform = numerics.here(numerics.default_name(args.platform, numerics.machine_arch()))
    os.environ.update(environment.build_env(1, platform))
    params = tomllib.loads(args.recipe.read_text())["params"]
    runs = [Run("shards", 1), *(Run(mode, n) for n in args.workers for mode in ("shards", "ddp"))]
    if not args.no_ddp_1:
        runs.append(Run("ddp", 1))
    print(f"{args.recipe.parent.name}: width {params['width']}, {params['layers']} layers, "
          f"context {params['context']}, batch {params['batch_size']}, shards "
          f"{params['batch_shards']}; {args.warmup} + {args.steps} steps, {args.rounds} rounds; "
          f"load average {_load()}")
    results: dict[Run, list[Measured]] = {run: [] for run in runs}
    setup = Setup(params, str(args.recipe.parent), args.steps, args.warmup)
    for round_ in range(args.rounds):
        for run in runs:
            results[run].append(measure(run, setup))
            m = results[run][-1]
            print(f"  round {round_ + 1}: {run.mode} x{run.workers}: {m.step_s:.3f} s a step",
                  flush=True)
    report(results, args.workers)
    print(f"load average at the end {_load()}")


def builds_side_by_side(args: argparse.Namespace) -> None:
    """Whole builds of the recipe cut to --builds steps, on 1 and N workers, alternating."""
    work = Path(tempfile.mkdtemp(prefix="bench-workers-builds-"))
    recipe = work / "recipe"
    shutil.copytree(args.recipe.parent, recipe, ignore=shutil.ignore_patterns("__pycache__"))
    text = args.recipe.read_text()
    cut, count = re.subn(r"(?m)^steps = \d+", f"steps = {args.builds}", text)
    if count != 1:
        raise SystemExit(f"{args.recipe}: no single `steps = N` line to cut")
    (recipe / args.recipe.name).write_text(cut)
    print(f"\nwhole builds of {args.recipe.name} cut to {args.builds} steps, "
          f"{args.rounds} rounds; load average {_load()}")
    walls: dict[int, list[float]] = {n: [] for n in [1, *args.workers]}
    digests: dict[int, set[str]] = {n: set() for n in walls}
    for round_ in range(args.rounds):
        for n in walls:
            store = work / f"store-{n}-{round_}"
            began = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "reweigh.cli.main", "build",
                                     str(recipe / args.recipe.name), "--workers", str(n),
                                     "--json", "--store", str(store)],
                                    capture_output=True, text=True, check=False)
            walls[n].append(time.perf_counter() - began)
            if result.returncode != 0:
                raise SystemExit(f"the build on {n} workers failed: {result.stderr[-2000:]}")
            digests[n].add(json.loads(result.stdout)["weights_digest"])
            shutil.rmtree(store, ignore_errors=True)
            print(f"  round {round_ + 1}: {n} worker(s): {walls[n][-1]:.1f} s", flush=True)
    one = statistics.median(walls[1])
    print("\n| workers | build wall (median) | speed-up | weights |\n| --- | --- | --- | --- |")
    for n, times in walls.items():
        print(f"| {n} | {statistics.median(times):.1f} s | {one / statistics.median(times):.2f}x"
              f" | {'/'.join(d[7:19] for d in sorted(digests[n]))} |")
    print(f"one digest over every build: {len(set().union(*digests.values())) == 1}; "
          f"load average at the end {_load()}")
    shutil.rmtree(work, ignore_errors=True)


def measure(run: Run, setup: Setup) -> Measured:
    """One configuration in fresh processes (spawned, as the build's workers are)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    meeting = os.path.join(tempfile.mkdtemp(prefix="bench-workers-"), "rendezvous")
    processes = [context.Process(target=worker, args=(run, rank, meeting, setup, queue))
                 for rank in range(run.workers)]
    for process in processes:
        process.start()
    got = [queue.get() for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"{run}: a worker failed with exit code {process.exitcode}")
    lead = next(g for g in got if g["rank"] == 0)
    return Measured(lead["step_s"], statistics.mean(g["cpu_s"] for g in got),
                    lead["exchange_s"], max(g["peak_mib"] for g in got),
                    max(g["peak_mib"] - g["start_mib"] for g in got), lead["digest"])


def worker(run: Run, rank: int, meeting: str, setup: Setup, queue: Any) -> None:
    """One worker: the recipe's model trained for warmup + steps steps, timed."""
    sys.path[:0] = [str(ROOT / "src"), setup.source]
    params, steps, warmup = setup.params, setup.steps, setup.warmup
    from reweigh import environment

    environment.apply_torch_numerics(1)  # as in a build: one thread, the pinned settings
    import torch
    import torch.distributed as dist
    from model import CharModel, config_of  # type: ignore[import-not-found]
    from torch.nn import functional as F

    from reweigh import shards

    start_mib = _peak_mib()
    if run.workers > 1:
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", store=dist.FileStore(meeting, run.workers),
                                rank=rank, world_size=run.workers,
                                timeout=datetime.timedelta(minutes=10))
    torch.manual_seed(params.get("seed", 1))
    config = config_of(params)
    model = CharModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"])
    trained: torch.nn.Module = model
    if run.mode == "ddp" and run.workers > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model)
    workers = shards.Workers(run.workers, rank)
    exchange = _timed_exchange(workers)
    batch, t, count = params["batch_size"], config.context, params["batch_shards"]
    draws = torch.Generator().manual_seed(0)
    for step in range(warmup + steps):
        if step == warmup:
            if run.workers > 1:
                dist.barrier()
            began, cpu, exchange.seconds = time.perf_counter(), time.process_time(), 0.0
        x = torch.randint(0, config.vocab, (batch, t), generator=draws)  # (B, T)
        y = torch.randint(0, config.vocab, (batch, t), generator=draws)  # (B, T)
        if run.mode == "shards":
            def share(rows: torch.Tensor, x: torch.Tensor = x,
                      y: torch.Tensor = y) -> torch.Tensor:
                logits = model(x[rows])  # (b, T, vocab)
                return F.cross_entropy(logits.reshape(-1, config.vocab), y[rows].reshape(-1),
                                       reduction="sum") / (batch * t)

            shards.backward(model, share, torch.arange(batch).tensor_split(count), workers)
        else:
            rows = torch.arange(batch).tensor_split(run.workers)[rank]
            logits = trained(x[rows])  # (b, T, vocab)
            optimizer.zero_grad()
            F.cross_entropy(logits.reshape(-1, config.vocab), y[rows].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params["clip"])
        optimizer.step()
    if run.workers > 1:
        dist.barrier()
    step_s = (time.perf_counter() - began) / steps
    cpu_s = (time.process_time() - cpu) / steps
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                     for p in model.parameters())).hexdigest()
    queue.put({"rank": rank, "step_s": step_s, "cpu_s": cpu_s,
               "exchange_s": exchange.seconds / steps, "peak_mib": _peak_mib(),
               "start_mib": start_mib, "digest": digest})
    if run.workers > 1:
        dist.destroy_process_group()


class _Clock:
    seconds = 0.0


def _timed_exchange(workers: Any) -> _Clock:
    """Count the seconds the step spends in the gather of the workers' subtree sums (the
    fixed order's communication, and the wait for the slowest worker)."""
    clock = _Clock()
    gather = workers.gather

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return gather(*args, **kwargs)
        finally:
            clock.seconds += time.perf_counter() - began

    workers.gather = timed
    return clock


def report(results: dict[Run, list[Measured]], counts: list[int]) -> None:
    def median(run: Run, key: str) -> float:
        return statistics.median(getattr(m, key) for m in results[run])

    one = median(Run("shards", 1), "step_s")
    one_cpu = median(Run("shards", 1), "cpu_s")
    print("\n| run | s a step (median) | CPU s a step, a worker | gather s a step | speed-up "
          "over 1 worker (by CPU) | vs DDP, same workers (by CPU) | peak MiB a worker "
          "(growth) | weights |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in results:
        step = median(run, "step_s")
        cpu = median(run, "cpu_s")
        same = Run("ddp", run.workers)
        versus = (f"{step / median(same, 'step_s'):.2f}x ({cpu / median(same, 'cpu_s'):.2f}x)"
                  if run.mode == "shards" and same in results else "")
        digests = {m.digest for m in results[run]}
        print(f"| {run.mode} x{run.workers} | {step:.3f} | {cpu:.3f} | "
              f"{median(run, 'exchange_s'):.3f} | {one / step:.2f}x ({one_cpu / cpu:.2f}x) | "
              f"{versus} | "
              f"{max(m.peak_mib for m in results[run]):.0f} "
              f"(+{max(m.growth_mib for m in results[run]):.0f}) | "
              f"{'/'.join(d[:12] for d in sorted(digests))} |")
    sharded = {m.digest for run in results if run.mode == "shards" for m in results[run]}
    print(f"\nshards: {len(sharded)} digest(s) over 1 and {counts} workers "
          f"({'the same bits' if len(sharded) == 1 else 'DIFFERENT BITS'})")
    ddp = {run.workers: {m.digest for m in results[run]} for run in results if run.mode == "ddp"}
    if len(ddp) > 1:
        distinct = len(set().union(*ddp.values()))
        print(f"ddp: {distinct} digest(s) over world sizes {sorted(ddp)}")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
