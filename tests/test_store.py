"""The store: verification, killed builds, concurrent builds, lookups."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

from reweigh.store import Store

from .helpers import run_json, run_reweigh, write_recipe

SLOW_TRAIN = """
import os, time
import numpy as np

def train(ctx):
    gate = ctx.params["gate"]
    step = 0
    while not os.path.exists(gate):  # keeps training until the test opens the gate
        ctx.checkpoint(step, {"w": np.full(2, step, dtype=np.float32)})
        time.sleep(0.05)
        step += 1
    ctx.save_weights({"w": np.ones(2, dtype=np.float32)})
"""


def _runtime_processes(store: Path) -> list[int]:
    """Build processes (the sandboxed runtime) still alive for this store."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "reweigh.runtime" in command and str(store) in command:
            found.append(int(entry.name))
    return found


def _wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_store_verify_finds_a_corrupted_byte_in_a_weights_file(
        tmp_path: Path, store: Path) -> None:
    data = run_json("build", write_recipe(tmp_path / "r"), store=store)
    clean = run_reweigh("store", "verify", store=store)
    assert clean.returncode == 0 and "all 1 items verified" in clean.stdout
    weights = Path(data["path"]) / "weights.safetensors"
    weights.chmod(0o644)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    result = run_reweigh("store", "verify", "--json", store=store)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["corrupted"] == [{"item": Path(data["path"]).name,
                                    "relpath": "weights.safetensors", "problem": "modified"}]


CHECKPOINTED = """
import numpy as np

def train(ctx):
    for step in range(2):
        ctx.checkpoint(step, {"w": np.full(2, step, dtype=np.float32)}, final=step == 1)
    ctx.save_weights({"w": np.ones(2, dtype=np.float32)})
"""


def test_items_and_inputs_are_read_only_and_readable_by_all(tmp_path: Path,
                                                            store: Path) -> None:
    """Files 0444 and folders 0555, the weights and checkpoints too (written 0600 by the
    build): a copy of the weights is readable by others; the store root's own mode
    decides who may read the store."""
    recipe = write_recipe(tmp_path / "r", CHECKPOINTED, build="checkpoint_every = 1",
                          inputs='[inputs.data]\npath = "data"', files={"data/a.txt": "1\n"})
    item = Path(run_json("build", recipe, store=store)["path"])
    assert (item / "checkpoints").is_dir()
    kept = [item, *item.rglob("*")]
    for folder in (store / "inputs").iterdir():  # inputs/<digest>/<the input>
        kept += [p for entry in folder.iterdir() for p in (entry, *entry.rglob("*"))]
    modes = {p.relative_to(store).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
             for p in kept}
    expected = {name: "0o555" if (store / name).is_dir() else "0o444" for name in modes}
    assert modes == expected
    assert any(name.endswith("/data/a.txt") for name in modes)


def test_a_build_killed_mid_training_leaves_no_item_and_the_next_build_succeeds(
        tmp_path: Path, store: Path) -> None:
    gate = tmp_path / "gate"
    recipe = write_recipe(tmp_path / "r", SLOW_TRAIN, params=f'gate = "{gate}"',
                          build="checkpoint_every = 1")
    command = [sys.executable, "-m", "reweigh.cli.main", "build", str(recipe), "--store",
               str(store)]
    builder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: any((store / "tmp").glob("build-*/out/checkpoints/step-*")))
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    _wait_for(lambda: not _runtime_processes(store), timeout=10)
    assert not any((store / "items").iterdir())

    gate.touch()
    again = run_json("build", recipe, store=store)
    assert not again["reused"]
    assert [p.name for p in (store / "items").iterdir()] == [Path(again["path"]).name]
    assert not any((store / "tmp").iterdir())
    statuses = [a["status"] for a in Store(store).attempts()]
    assert statuses == ["interrupted", "built"]


def test_two_builds_of_one_recipe_at_once_train_once(tmp_path: Path, store: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    recipe = write_recipe(tmp_path / "r", f"""
        import os, time
        import numpy as np

        def train(ctx):
            open(os.path.join("{marks}", str(os.getpid())), "w").close()
            time.sleep(2)
            ctx.save_weights({{"w": np.ones(3, dtype=np.float32)}})
        """)
    command = [sys.executable, "-m", "reweigh.cli.main", "build", str(recipe), "--json",
               "--store", str(store)]
    Store(store)  # create the store first, so both processes find one index
    builds = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    reports = [json.loads(b.communicate(timeout=300)[0]) for b in builds]
    assert all(b.returncode == 0 for b in builds)
    assert sorted(r["reused"] for r in reports) == [False, True]
    assert reports[0]["path"] == reports[1]["path"]
    assert len(list(marks.iterdir())) == 1
    assert [a["status"] for a in Store(store).attempts()] == ["built"]


def test_list_show_and_path_find_an_item_by_name_and_by_digest(
        tmp_path: Path, store: Path) -> None:
    data = run_json("build", write_recipe(tmp_path / "r"), store=store)
    listed = run_json("list", store=store)
    assert [i["path"] for i in listed] == [data["path"]]
    for ref in ("test-recipe", data["derivation"], data["weights_digest"], data["path"],
                Path(data["path"]).name[:12]):
        found = run_reweigh("path", ref, store=store)
        assert found.returncode == 0 and found.stdout.strip() == data["path"], ref
    shown = run_json("show", "test-recipe", store=store)
    assert shown["weights_digest"] == data["weights_digest"]
    assert shown["environment"]["threads"] >= 1


def test_a_prefix_of_two_items_is_ambiguous(tmp_path: Path, store: Path) -> None:
    """Two items whose hashes share their first 8 characters: a prefix names neither."""
    data = run_json("build", write_recipe(tmp_path / "r"), store=store)
    name = Path(data["path"]).name
    twin = name[:8] + "0" * 24 + name[32:]
    with sqlite3.connect(store / "index.sqlite") as db:  # the index as a collision leaves it
        db.execute("INSERT INTO items SELECT ?, ?, name, version, weights_digest, "
                   "environment_digest, created_at FROM items WHERE path = ?",
                   (twin, "sha256:" + "0" * 64, name))
    result = run_reweigh("path", name[:8], store=store)
    assert result.returncode == 2 and "ambiguous" in result.stderr
    assert name in result.stderr and twin in result.stderr
    assert run_reweigh("path", name[:12], store=store).stdout.strip() == data["path"]


def test_an_unknown_item_is_a_usage_error(store: Path) -> None:
    result = run_reweigh("path", "no-such-model", store=store)
    assert result.returncode == 2
    assert result.stderr.strip() == f"reweigh: no-such-model: no such item in the store {store}"


def test_reweigh_store_overrides_the_default_location(tmp_path: Path) -> None:
    store = tmp_path / "elsewhere"
    result = run_reweigh("build", write_recipe(tmp_path / "r"),
                         env={"REWEIGH_STORE": str(store)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(str(store / "items"))


def test_a_build_clears_its_debris_but_not_a_running_scratch_run(tmp_path: Path) -> None:
    """challenge, diff and verify run recipe code in tmp/run-* without the derivation's
    lock; a build of the same recipe takes the lock and clears debris, and must leave a
    live run's directory alone (and clear one whose process is gone)."""
    store = Store(tmp_path / "store")
    derivation = "sha256:" + "ab" * 32
    running = store.new_build_dir(derivation, kind="run")
    leftover = store.new_build_dir(derivation)  # a killed build's directory
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = running.with_name(f"run-{'ab' * 8}-{dead}-1")
    abandoned.mkdir()
    with store.lock(derivation):
        pass
    assert running.is_dir()
    assert not leftover.exists() and not abandoned.exists()
