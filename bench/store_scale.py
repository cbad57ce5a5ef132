"""The store's bookkeeping from 10 to 1000 items: list, show, store verify and gc.

Fills fresh stores with N small items (N = 10, 100, 1000 by default) the way a build
commits one: under its derivation's lock, with weights, a derivation record and one kept
checkpoint (its chunks in chunks/), then times each command as a fresh process: `list`
and `show` should stay flat, `store verify` and `gc` (which removes every item: no
profile names any) grow linearly. After gc it counts what is left: lock files (gc.lock
alone, since gc removes the ones nobody holds) and the index's size against an empty
store's (gc compacts it).

Usage: python bench/store_scale.py [--counts 10 100 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds a platform.py of its own, which must not hide the standard library's.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from reweigh.digest import bytes_digest  # noqa: E402
from reweigh.keeper import pack  # noqa: E402
from reweigh.store import Store  # noqa: E402


def fill(root: Path, count: int, scratch: Path) -> None:
    store = Store(root)
    for i in range(count):
        derivation = bytes_digest(f"item {i}".encode())
        out = scratch / f"out-{i}"
        (out / "checkpoints").mkdir(parents=True)
        values = np.full(256, i, np.float32)
        save_file({"w": values}, str(out / "weights.safetensors"))
        state = out / "checkpoints" / "step-000000001.safetensors"
        save_file({"t0": values, "t1": np.arange(256, dtype=np.float32)}, str(state))
        manifest = pack(state, store.chunks)
        state.unlink()
        (out / "checkpoints" / "step-000000001.json").write_text(
            json.dumps(manifest.to_json()))
        (out / "derivation.json").write_text(json.dumps({"i": i}))
        with store.lock(derivation):
            store.commit(out, f"{derivation[7:39]}-item-{i}", {
                "derivation": derivation, "name": f"item-{i}", "version": "1",
                "weights_digest": bytes_digest(values.tobytes()), "inputs": {}})


def timed(root: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reweigh.cli.main", *args, "--store", str(root)],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    print(f"{'items':>6} {'list':>7} {'show':>7} {'verify':>7} {'gc':>7} "
          f"{'locks left':>11} {'index before':>13} {'after gc':>9} {'empty':>7}")
    for count in args.counts:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            root = folder / "store"
            fill(root, count, folder)
            index = root / "index.sqlite"
            listing = min(timed(root, "list") for _ in range(3))
            shown = min(timed(root, "show", f"item-{count // 2}") for _ in range(3))
            verified = timed(root, "store", "verify")
            before = index.stat().st_size + (root / "index.sqlite-wal").stat().st_size \
                if (root / "index.sqlite-wal").exists() else index.stat().st_size
            collected = timed(root, "gc", "--grace", "0")
            locks = len(list((root / "locks").iterdir()))
            empty = Store(folder / "empty").root / "index.sqlite"
            print(f"{count:>6} {listing:>6.2f}s {shown:>6.2f}s {verified:>6.2f}s "
                  f"{collected:>6.2f}s {locks:>11} {before / 1e3:>11.0f}kB "
                  f"{index.stat().st_size / 1e3:>7.0f}kB {empty.stat().st_size / 1e3:>5.0f}kB")


if __name__ == "__main__":
    main()
