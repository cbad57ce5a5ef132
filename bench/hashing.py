"""Hashing throughput: reweigh's file digest against one plain hashlib.sha256 pass.

Writes a 1 GiB safetensors file (random float32 tensors), then hashes it with
`reweigh.digest.file_digest` and with a plain loop of `hashlib.sha256().update`
over 1 MiB reads (the practical ceiling), alternating, best of N; and coreutils
`sha256sum` once for reference. Prints MB/s and the ratio.

Then what decides whether a second, faster internal digest is worth having (issue 18):
BLAKE3 (the `blake3` package, when installed: it is not a dependency) on one thread and
on every core, against sha256; `copy_hashing` (import's copy that hashes as it copies)
against a plain copy followed by one sha256 pass; and keeping a checkpoint
(`keeper.pack`: the whole file's sha256, each chunk's sha256, byte planes,
zstd) split into its parts, so that the share a chunk digest takes is seen.

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

from reweigh.digest import copy_hashing, file_digest
from reweigh.keeper import pack
from reweigh.store_checkpoints import Chunks, chunk_digest, encode


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


def internal_digests(args: argparse.Namespace) -> None:
    """What a faster internal digest would save: the parts of keeping a checkpoint."""
    import hashlib
    import os

    rng = np.random.default_rng(1)
    block = rng.standard_normal(8 << 20 >> 2, dtype=np.float32).tobytes()  # one 8 MiB chunk
    mb = len(block) / 1e6

    def rate(function) -> float:  # type: ignore[no-untyped-def]
        times = []
        for _ in range(max(args.runs, 3)):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return mb / min(times)

    print(f"one {mb:.1f} MB chunk of float32, best of {max(args.runs, 3)}, MB/s:")
    print(f"  sha256                    {rate(lambda: hashlib.sha256(block).digest()):8.0f}")
    try:
        import blake3  # type: ignore[import-not-found]
    except ImportError:
        print("  blake3                    (not installed)")
    else:
        cores = len(os.sched_getaffinity(0))
        print(f"  blake3, 1 thread          {rate(lambda: blake3.blake3(block).digest()):8.0f}")
        print(f"  blake3, {cores} threads         "
              f"{rate(lambda: blake3.blake3(block, max_threads=cores).digest()):8.0f}")
    print(f"  byte planes + zstd        {rate(lambda: encode(block, 4)):8.0f}")
    print(f"  chunk as kept (sha256 + planes + zstd) "
          f"{rate(lambda: (chunk_digest(block), encode(block, 4))):8.0f}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "tmp").mkdir()
        source = folder / "state.safetensors"
        save_file({f"t{i}": rng.standard_normal(16 << 20 >> 2, dtype=np.float32)
                   for i in range(8)}, str(source))  # 128 MiB, 8 tensors
        size = source.stat().st_size / 1e6
        start = time.perf_counter()
        copy_hashing(source, folder / "copy")
        copied = time.perf_counter() - start
        start = time.perf_counter()
        shutil.copyfile(source, folder / "copy2")
        plain_sha256(folder / "copy2")
        plain = time.perf_counter() - start
        print(f"import of {size:.0f} MB: copy_hashing {size / copied:6.0f} MB/s, copy then "
              f"sha256 {size / plain:6.0f} MB/s ({plain / copied:.2f}x)")
        start = time.perf_counter()
        pack(source, Chunks(folder))
        packed = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in (folder / "chunks").rglob("*") if p.is_file())
        print(f"pack of {size:.0f} MB (one thread): {size / packed:6.0f} MB/s, kept "
              f"{stored / 1e6 / size:.3f} of the bytes")


if __name__ == "__main__":
    main()
    internal_digests(argparse.Namespace(runs=3))
