"""Hashing throughput: reweigh's file digest against one plain hashlib.sha256 pass.

Writes a 1 GiB safetensors file (random float32 tensors), then hashes it with
`reweigh.digest.file_digest` and with a plain loop of `hashlib.sha256().update`
over 1 MiB reads (the practical ceiling), alternating, best of N; and coreutils
`sha256sum` once for reference. Prints MB/s and the ratio.

Usage: python bench/hashing.py [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from reweigh.digest import file_digest


def plain_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def best(function, path: Path, runs: int) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    times, digest = [], ""
    for _ in range(runs):
        start = time.perf_counter()
        digest = function(path)
        times.append(time.perf_counter() - start)
    return min(times), digest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.safetensors"
        rng = np.random.default_rng(0)
        per = 64 << 20  # bytes per tensor
        tensors = {f"layer{i}.weight": rng.standard_normal(per // 4, dtype=np.float32)
                   for i in range(args.size_mib * (1 << 20) // per)}
        save_file(tensors, str(path))
        del tensors
        size = path.stat().st_size / 1e6
        ours, d1 = best(file_digest, path, args.runs)
        plain, d2 = best(plain_sha256, path, args.runs)
        assert d1 == d2, "the two digests disagree"
        coreutils = None
        if shutil.which("sha256sum"):
            start = time.perf_counter()
            subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)
            coreutils = time.perf_counter() - start
    print(f"{size:.0f} MB safetensors file, best of {args.runs}")
    print(f"  reweigh file_digest:     {size / ours:8.0f} MB/s")
    print(f"  plain hashlib.sha256:    {size / plain:8.0f} MB/s")
    if coreutils:
        print(f"  coreutils sha256sum:     {size / coreutils:8.0f} MB/s (one run)")
    print(f"  ratio reweigh/plain throughput: {plain / ours:.3f}")


if __name__ == "__main__":
    main()
