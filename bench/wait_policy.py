"""How OpenMP threads wait for work, on a busy machine: spinning (the library's default)
against sleeping (`OMP_WAIT_POLICY=PASSIVE`, which the builder now sets for recipe code).

A small MLP (64 -> 256 -> 64, Adam, batches of 32: many tiny kernels a step, as in the
examples) trains for --steps steps in a fresh process, on one thread, on two threads as
OpenMP waits by default, and on two threads with the passive policy; the three are run
alternately, --runs times each. Prints the median wall and CPU time of each, the ratio to
one thread, the final loss (the same in all three: the policy decides how a thread waits,
not what it computes) and the load average before and after. Run it while the machine is
busy (other test suites, another build) to see the spinning; on an idle machine the
three are close.

Usage: python bench/wait_policy.py [--steps N] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

TRAIN = """
import json, resource, sys, time
import torch
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[1]))
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
optimiser = torch.optim.Adam(model.parameters())
x = torch.randn(32, 64)  # (B, 64)
started = time.monotonic()
for _ in range(int(sys.argv[2])):
    optimiser.zero_grad()
    loss = model(x).pow(2).mean()
    loss.backward()
    optimiser.step()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.monotonic() - started, "cpu": usage.ru_utime + usage.ru_stime,
                  "loss": loss.item()}))
"""
KINDS = {"1 thread": ("1", None), "2 threads, spinning": ("2", None),
         "2 threads, passive": ("2", "PASSIVE")}


def run(threads: str, policy: str | None, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", TRAIN, threads, str(steps)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    seen: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    for _ in range(args.runs):
        for kind, (threads, policy) in KINDS.items():
            seen[kind].append(run(threads, policy, args.steps))
    base = statistics.median(r["wall"] for r in seen["1 thread"])
    for kind, runs in seen.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        losses = sorted({r["loss"] for r in runs})
        print(f"{kind:22s} wall {wall:7.2f} s ({wall / base:5.2f}x)  CPU {cpu:7.2f} s  "
              f"loss {losses}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
