"""The sandbox's start-up cost per launch, side by side with a plain process start.

Every run of recipe code (build, check, evaluation, replay, audit, estimate) starts one
process in the bubblewrap sandbox. This times, alternating, N starts of the same
interpreter doing the same small work: plainly, and in the sandbox exactly as the
builder makes it (namespaces, mounts, the seccomp filter compiled once per command).
Two kinds of work: `pass` (the sandbox's fixed cost shows) and `import torch` (what
every recipe pays anyway, so the share the sandbox adds to a real launch shows).

Usage: python bench/sandbox.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reweigh import builder, sandbox
from reweigh.job import Job, Sandbox


def sandboxed_command(work: Path, code: str) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
    (work / "src").mkdir(exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    job = Job("build", str(work / "src"), str(work / "out"), "train.py:train", None, {}, 0, 0,
              1, {}, sandbox=Sandbox(sandbox.BUBBLEWRAP))
    launch = builder.launch_for(job, work, "reweigh.runtime", 2)
    command = [*launch.command[:-4], sys.executable, "-c", code]
    return command, launch.env, launch.fds


def timed(command: list[str], env: dict[str, str] | None = None,
          fds: tuple[int, ...] = ()) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, pass_fds=fds)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    start = time.perf_counter()
    sandbox.seccomp_program()
    compile_ms = (time.perf_counter() - start) * 1000
    print(f"seccomp filter compiled once per command: {compile_ms:.1f} ms")
    for code in ("pass", "import torch"):
        plain, boxed = [], []
        with tempfile.TemporaryDirectory() as scratch:
            for run in range(args.runs):
                plain.append(timed([sys.executable, "-c", code]))
                work = Path(scratch) / f"run-{run}"
                work.mkdir()
                command, env, fds = sandboxed_command(work, code)
                try:
                    boxed.append(timed(command, env, fds))
                finally:
                    for fd in fds:
                        os.close(fd)
        p, b = statistics.median(plain), statistics.median(boxed)
        print(f"python -c {code!r:15} plain {p * 1000:7.1f} ms   sandboxed {b * 1000:7.1f} ms"
              f"   +{(b - p) * 1000:6.1f} ms per launch ({b / p:.3f}x), median of {args.runs}")


if __name__ == "__main__":
    main()
