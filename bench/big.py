"""A network of real size through reweigh, side by side with a plain script.

bench/big/ is a recipe for a wide MLP of about 1 GB of float32 weights (4 hidden layers
of 8192 x 8192) trained with Adam for 6 steps on synthetic batches, checkpointed every
2 steps (each checkpoint holds the model and Adam's two moments: 3.2 GB). This script
copies it into a work folder (`--width`, `--layers`, `--steps` make it smaller; the
tests run a few-MB variant) and measures, each as a fresh process:

- build: `reweigh build` (a fresh store) against `bench/plain_big.py`, the same `train`
  as a plain PyTorch script that writes its checkpoints with `torch.save` (and once
  without checkpoints): wall and CPU time, and peak memory: the largest resident set of
  one process (what `wait4` reports for the tree) and the largest sum over the whole
  process tree (sampled from /proc every 50 ms);
- item size: the item's folder, and what the store holds for it (checkpoint chunks
  included), against the weights;
- challenge and diff of the plain script's weights against the item, against a plain
  comparison (both files hashed, then loaded with safetensors.numpy and compared tensor
  by tensor);
- import of the plain script's weights, against a copy and one sha256 pass;
- verify of the last segment, store verify (against one sha256 pass over the store's
  files), and gc of everything.

`--src DIR` runs another reweigh source tree (a checkout of an older commit: the
"before" column). Nothing here is asserted; bench/README.md keeps the figures.

Usage: python bench/big.py [--work DIR] [--src DIR] [--threads T] [--width W]
       [--layers L] [--steps S] [--keep-every N] [--keep-last M] [--skip NAME ...]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds a platform.py of its own, which must not hide the standard library's from
# what this script imports: its folder leaves the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
RECIPE = ROOT / "bench" / "big"


@dataclass
class Run:
    wall: float
    cpu: float
    peak_process: int  # bytes: the largest resident set of one process of the tree
    peak_tree: int  # bytes: the largest sum of resident sets over the tree, sampled
    code: int
    out: str


TICK = os.sysconf("SC_CLK_TCK")


def _tree(pid: int, cpu: dict[int, float]) -> tuple[int, int]:
    """The resident set of pid and all its descendants, in bytes, and the largest one;
    each process's CPU seconds so far go to `cpu` (a process of the sandbox is not
    waited for by this one, so `wait4` does not count it)."""
    total, largest, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                        total, largest = total + rss, max(largest, rss)
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
                cpu[current] = (int(fields[11]) + int(fields[12])) / TICK
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total, largest


def measure(command: list[str], env: dict[str, str]) -> Run:
    """Run a command; its wall and CPU time, its peaks of memory, its exit and output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peak, done, cpu = [0, 0], threading.Event(), {}

    def sample() -> None:
        while not done.is_set():
            total, largest = _tree(process.pid, cpu)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    sampled = sum(cpu.values())  # up to 50 ms short for each process
    return Run(wall, max(usage.ru_utime + usage.ru_stime, sampled),
               max(usage.ru_maxrss * 1024, peak[1]), peak[0], process.returncode, output)


def sha256(path: Path) -> str:
    with open(path, "rb", buffering=0) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def plain_compare(a: Path, b: Path) -> None:
    """What a user without reweigh would run: hash both files, then load both and compare
    every tensor."""
    import numpy as np
    from safetensors.numpy import load_file

    same = sha256(a) == sha256(b)
    ta, tb = load_file(str(a)), load_file(str(b))
    worst = max(float(np.max(np.abs(ta[k] - tb[k]))) for k in ta)
    print(json.dumps({"same_bytes": same, "max_abs": worst}))


def plain_import(source: Path, target: Path) -> None:
    """A copy and one sha256 pass over it: what importing a file needs at least."""
    shutil.copyfile(source, target)
    print(sha256(target))


def plain_hash_all(folder: Path) -> None:
    """One sha256 pass over every file under folder (store verify's floor)."""
    count = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("index.sqlite"):
            sha256(path)
            count += 1
    print(count)


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def write_recipe(work: Path, args: argparse.Namespace) -> Path:
    recipe = work / "recipe"
    shutil.copytree(RECIPE, recipe)
    text = (recipe / "recipe.toml").read_text()
    for key in ("width", "layers", "steps"):
        if (value := getattr(args, key)) is not None:
            text = re.sub(rf"^{key} = \d+", f"{key} = {value}", text, flags=re.M)
    keep = "".join(f"{key} = {value}\n" for key, value in
                   (("keep_every", args.keep_every), ("keep_last", args.keep_last))
                   if value is not None)
    text = text.replace("checkpoint_every = 2\n", f"checkpoint_every = 2\n{keep}")
    (recipe / "recipe.toml").write_text(text)
    return recipe


STEPS = ("plain", "plain_no_checkpoints", "build", "challenge", "diff", "plain_compare",
         "import", "plain_import", "verify", "store_verify", "plain_hash_all", "gc")


def run_all(args: argparse.Namespace, work: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(args.src), "REWEIGH_STORE": str(work / "store")}
    reweigh = [sys.executable, "-m", "reweigh.cli.main"]
    me = [sys.executable, __file__]
    recipe = write_recipe(work, args)
    threads = ["--threads", str(args.threads)]
    plain_out, plain_bare = work / "plain", work / "plain-bare"
    published = plain_out / "weights.safetensors"
    commands: dict[str, list[str]] = {
        "plain": [sys.executable, str(ROOT / "bench" / "plain_big.py"), str(recipe),
                  str(plain_out), *threads],
        "plain_no_checkpoints": [sys.executable, str(ROOT / "bench" / "plain_big.py"),
                                 str(recipe), str(plain_bare), *threads, "--no-checkpoints"],
        "build": [*reweigh, "build", str(recipe), *threads, "--json"],
        "challenge": [*reweigh, "challenge", str(recipe), "--published", str(published),
                      *threads, "--json"],
        "diff": [*reweigh, "diff", "big-mlp", str(published), "--recipe", str(recipe),
                 "--no-trigger", *threads, "--json"],
        "plain_compare": [*me, "--plain-compare", str(published), "ITEM"],
        "import": [*reweigh, "import", str(published), "--name", "big-plain"],
        "plain_import": [*me, "--plain-import", str(published), str(work / "copy")],
        "verify": [*reweigh, "verify", "big-mlp", "--transcript", "TRANSCRIPT", "--spot", "0",
                   "--largest", "0", *threads, "--json"],
        "store_verify": [*reweigh, "store", "verify", "--json"],
        "plain_hash_all": [*me, "--plain-hash-all", str(work / "store")],
        "gc": [*reweigh, "gc", "--grace", "0", "--json"],
    }
    results: dict[str, object] = {"src": str(args.src), "threads": args.threads}
    item: Path | None = None
    for step in STEPS:
        if step in args.skip:
            continue
        command = [str(item / "weights.safetensors") if c == "ITEM" and item
                   else str(item / "transcript.json") if c == "TRANSCRIPT" and item else c
                   for c in commands[step]]
        print(f"... {step}", file=sys.stderr, flush=True)
        run = measure(command, env)
        results[step] = {k: v for k, v in asdict(run).items() if k != "out"}
        if run.code not in (0, 1):
            print(run.out[-3000:], file=sys.stderr)
        if step == "build" and run.code == 0:
            item = Path(json.loads(run.out)["path"])
            results["item_bytes"] = size_of(item)
            results["weights_bytes"] = size_of(item / "weights.safetensors")
            results["store_bytes"] = sum(size_of(work / "store" / sub) for sub in
                                         ("items", "inputs", "checkpoints", "chunks")
                                         if (work / "store" / sub).exists())
        if step == "plain":
            results["plain_bytes"] = size_of(plain_out)
        if step == "gc":
            results["store_bytes_after_gc"] = size_of(work / "store")
    return results


def show(results: dict[str, object]) -> None:
    def row(name: str, base: str | None = None) -> None:
        r = results.get(name)
        if not isinstance(r, dict):
            return
        ratio = ""
        b = results.get(base) if base else None
        if isinstance(b, dict):
            ratio = (f"  {r['wall'] / b['wall']:.2f}x wall, "
                     f"{r['peak_tree'] / max(b['peak_tree'], 1):.2f}x memory of {base}")
        print(f"{name:22s} {r['wall']:8.1f} s  cpu {r['cpu']:8.1f} s  peak process "
              f"{r['peak_process'] / 2**30:6.2f} GiB  tree {r['peak_tree'] / 2**30:6.2f} GiB"
              f"  exit {r['code']}{ratio}")

    for name, base in (("plain", None), ("plain_no_checkpoints", None), ("build", "plain"),
                       ("challenge", "plain_compare"), ("diff", "plain_compare"),
                       ("plain_compare", None), ("import", "plain_import"),
                       ("plain_import", None), ("verify", "build"),
                       ("store_verify", "plain_hash_all"), ("plain_hash_all", None),
                       ("gc", None)):
        row(name, base)
    for key in ("weights_bytes", "item_bytes", "store_bytes", "plain_bytes",
                "store_bytes_after_gc"):
        if key in results:
            print(f"{key:22s} {results[key] / 1e9:8.3f} GB")  # type: ignore[operator]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1].startswith("--plain-"):
        what, a, b = sys.argv[1:]
        {"--plain-compare": lambda: plain_compare(Path(a), Path(b)),
         "--plain-import": lambda: plain_import(Path(a), Path(b))}[what]()
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--plain-hash-all":
        plain_hash_all(Path(sys.argv[2]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--keep-every", type=int)
    parser.add_argument("--keep-last", type=int)
    parser.add_argument("--skip", nargs="*", default=[], choices=STEPS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        results = run_all(args, Path(scratch))
    show(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
