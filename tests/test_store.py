"""The store: verification, killed builds, concurrent builds, lookups."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from reweigh.store import Store

from .conftest import Examples
from .helpers import ROOT, run_json, run_reweigh, write_recipe

SLOW_TRAIN = """
import time
import numpy as np

def train(ctx):
    for step in range(ctx.params["steps"]):  # long enough for the test to kill it first
        ctx.checkpoint(step, {"w": np.full(2, step, dtype=np.float32)})
        print(f"step {step}", flush=True)  # to the build's log: where the test sees it
        time.sleep(0.05)
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


@pytest.mark.slow
def test_store_verify_finds_a_corrupted_byte_in_a_weights_file(
        examples: Examples, tmp_path: Path) -> None:
    built = examples.copy("minimal", tmp_path)
    store = built.store
    clean = run_reweigh("store", "verify", store=store)
    assert clean.returncode == 0 and "all 1 items verified" in clean.stdout
    weights = built.item / "weights.safetensors"
    weights.chmod(0o644)
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    result = run_reweigh("store", "verify", "--json", store=store)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["corrupted"] == [{"item": built.item.name,
                                    "relpath": "weights.safetensors", "problem": "modified"}]


CHECKPOINTED = """
import numpy as np

def train(ctx):
    for step in range(2):
        ctx.checkpoint(step, {"w": np.full(2, step, dtype=np.float32)}, final=step == 1)
    ctx.save_weights({"w": np.ones(2, dtype=np.float32)})
"""


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_build_killed_mid_training_leaves_no_item_and_the_next_build_succeeds(
        tmp_path: Path, store: Path) -> None:
    recipe = write_recipe(tmp_path / "r", SLOW_TRAIN, params="steps = 100",
                          build="checkpoint_every = 1")
    command = [sys.executable, "-m", "reweigh.cli.main", "build", str(recipe), "--store",
               str(store)]
    builder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # killed mid-training: checkpoints go down a pipe (no file shows how far it got), and
    # waiting for one made this kill land after training, between its end and the commit
    _wait_for(lambda: any("step 5\n" in log.read_text(errors="replace")
                          for log in (store / "tmp").glob("build-*/build.log")))
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    _wait_for(lambda: not _runtime_processes(store), timeout=10)
    assert not any((store / "items").iterdir())

    again = run_json("build", recipe, store=store)
    assert not again["reused"]
    assert [p.name for p in (store / "items").iterdir()] == [Path(again["path"]).name]
    assert not any((store / "tmp").iterdir())
    statuses = [a["status"] for a in Store(store).attempts()]
    assert statuses == ["interrupted", "built"]


@pytest.mark.slow
def test_two_builds_of_one_recipe_at_once_train_once(tmp_path: Path, store: Path) -> None:
    """The sandbox sees nothing outside its build: the attempts the index records say
    how many times the recipe trained."""
    recipe = write_recipe(tmp_path / "r", """
        import time
        import numpy as np

        def train(ctx):
            time.sleep(2)
            ctx.save_weights({"w": np.ones(3, dtype=np.float32)})
        """)
    command = [sys.executable, "-m", "reweigh.cli.main", "build", str(recipe), "--json",
               "--store", str(store)]
    Store(store)  # create the store first, so both processes find one index
    builds = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    reports = [json.loads(b.communicate(timeout=300)[0]) for b in builds]
    assert all(b.returncode == 0 for b in builds)
    assert sorted(r["reused"] for r in reports) == [False, True]
    assert reports[0]["path"] == reports[1]["path"]
    assert [a["status"] for a in Store(store).attempts()] == ["built"]


@pytest.mark.slow
def test_list_show_and_path_find_an_item_by_name_and_by_digest(examples: Examples) -> None:
    built = examples.built("minimal")  # only read
    store, item = built.store, Store(built.store).resolve(built.item.name)
    data = {"path": str(item.path), "derivation": item.derivation,
            "weights_digest": item.weights_digest}
    listed = run_json("list", store=store)
    assert [i["path"] for i in listed] == [data["path"]]
    for ref in ("test-recipe", data["derivation"], data["weights_digest"], data["path"],
                Path(data["path"]).name[:12]):
        found = run_reweigh("path", ref, store=store)
        assert found.returncode == 0 and found.stdout.strip() == data["path"], ref
    shown = run_json("show", "test-recipe", store=store)
    assert shown["weights_digest"] == data["weights_digest"]
    assert shown["environment"]["threads"] >= 1


@pytest.mark.slow
def test_a_prefix_of_two_items_is_ambiguous(examples: Examples, tmp_path: Path) -> None:
    """Two items whose hashes share their first 8 characters: a prefix names neither."""
    built = examples.copy("minimal", tmp_path)
    store, name = built.store, built.item.name
    twin = name[:8] + "0" * 24 + name[32:]
    with sqlite3.connect(store / "index.sqlite") as db:  # the index as a collision leaves it
        db.execute("INSERT INTO items SELECT ?, ?, name, version, weights_digest, "
                   "environment_digest, created_at FROM items WHERE path = ?",
                   (twin, "sha256:" + "0" * 64, name))
    (store / "items" / twin).mkdir()  # a row without its folder would read as absent
    result = run_reweigh("path", name[:8], store=store)
    assert result.returncode == 2 and "ambiguous" in result.stderr
    assert name in result.stderr and twin in result.stderr
    assert run_reweigh("path", name[:12], store=store).stdout.strip() == str(built.item)


def test_an_unknown_item_is_a_usage_error(store: Path) -> None:
    result = run_reweigh("path", "no-such-model", store=store)
    assert result.returncode == 2
    assert result.stderr.strip() == f"reweigh: no-such-model: no such item in the store {store}"


@pytest.mark.slow
def test_reweigh_store_overrides_the_default_location(examples: Examples,
                                                     tmp_path: Path) -> None:
    built = examples.copy("minimal", tmp_path / "elsewhere")  # the item is found there
    result = run_reweigh("build", write_recipe(tmp_path / "r"),
                         env={"REWEIGH_STORE": str(built.store)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(built.item)


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


NOT_ROOT_COMMIT = """
import sys
from pathlib import Path

from reweigh.digest import path_digest
from reweigh.store import Store

store = Store(Path(sys.argv[1]))
built = store.new_build_dir("sha256:" + "ab" * 32)
(built / "sub").mkdir()
(built / "sub" / "notes.txt").write_text("kept")
(built / "weights.safetensors").write_bytes(b"weights")
item = store.commit(built, "ab" * 16 + "-test-1", {
    "derivation": "sha256:" + "ab" * 32, "name": "test", "version": "1",
    "weights_digest": "sha256:" + "0" * 64})
writable = [str(p) for p in [item.path, *item.path.rglob("*")] if p.stat().st_mode & 0o222]
assert not writable, writable
staged = store.new_staging_dir() / "data"
(staged / "deeper").mkdir(parents=True)
(staged / "deeper" / "table.csv").write_text("x,y")
digest = path_digest(staged)
kept = store.add_input(staged, digest, "path", {"path": "data"})
assert store.input_path(digest) == kept and not kept.stat().st_mode & 0o222
store.forget([item.path.name], [digest])
assert not item.path.exists() and not kept.exists()
assert not list((store.root / "tmp").glob("trash-*"))
print("committed and removed as uid", __import__("os").getuid())
"""


def _as_nobody(store: Path) -> list[str]:
    """The command that runs Python as `nobody` (uid 65534) on a store it owns. The
    venv's own interpreter lives under /root, out of nobody's reach: Debian's python3.11
    (the same ABI) is given the source and the venv's packages instead."""
    if not (shutil.which("setpriv") and Path("/usr/bin/python3.11").is_file()):
        pytest.skip("running as root, without setpriv or /usr/bin/python3.11 to drop it")
    for folder in (store.parent, store):
        folder.mkdir(exist_ok=True)
        os.chown(folder, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "/usr/bin/python3.11", "-s"]


def test_a_user_who_is_not_root_commits_an_item_and_an_input_and_removes_them() -> None:
    """Linux moves a folder to another parent only if the user may write to it (its `..`
    changes): committing a read-only folder failed for everyone but root."""
    with tempfile.TemporaryDirectory() as scratch:  # /tmp: reachable by any user
        os.chmod(scratch, 0o755)
        store = Path(scratch) / "owned" / "store"
        command = _as_nobody(store) if os.geteuid() == 0 else [sys.executable]
        packages = sysconfig.get_paths()["purelib"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(store.parent),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), packages])}
        result = subprocess.run([*command, "-c", NOT_ROOT_COMMIT, str(store)], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "committed and removed as uid" in result.stdout
        if os.geteuid() == 0:
            assert "uid 65534" in result.stdout


@pytest.mark.slow
def test_a_symbolic_link_in_the_output_is_refused_and_what_it_points_to_is_untouched(
        tmp_path: Path, store: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not the store's")
    outside.chmod(0o644)
    recipe = write_recipe(tmp_path / "r", f"""
        import os
        import numpy as np

        def train(ctx):
            ctx.save_weights({{"w": np.ones(2, dtype=np.float32)}})
            os.symlink({str(outside)!r}, ctx.out / "escape")
        """)
    result = run_reweigh("build", recipe, store=store)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "escape" in line and "not a regular file" in line
    assert outside.stat().st_mode & 0o777 == 0o644
    assert not any((store / "items").iterdir())


@pytest.mark.slow
def test_store_verify_names_item_folders_a_lost_index_no_longer_knows(
        examples: Examples, tmp_path: Path) -> None:
    built = examples.copy("minimal", tmp_path)
    store, data = built.store, {"path": str(built.item)}
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (store / name).unlink(missing_ok=True)
    result = run_reweigh("store", "verify", store=store)
    assert result.returncode == 1
    assert "all 0 items verified" not in result.stdout
    assert f"unknown    {Path(data['path']).name}" in result.stdout
    assert "reweigh store repair" in result.stdout
    report = run_json("store", "verify", store=store)
    assert not report["ok"] and report["corrupted"] == [
        {"item": Path(data["path"]).name, "relpath": "", "problem": "unknown"}]


@pytest.mark.slow
def test_an_unreadable_index_stops_every_command_with_one_line(
        examples: Examples, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r")
    built = examples.copy("minimal", tmp_path)
    store, data = built.store, {"path": str(built.item)}
    index = store / "index.sqlite"
    index.write_bytes(random.Random(1).randbytes(index.stat().st_size))
    for command in (["list"], ["show", "test-recipe"], ["path", data["path"]],
                    ["build", recipe], ["gc"], ["store", "verify"]):
        result = run_reweigh(*command, store=store)
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert str(index) in lines[0] and "reweigh store repair" in lines[0], lines[0]
