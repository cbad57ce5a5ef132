"""gc: profiles are the roots; a fine-tuned item keeps its base; the rest goes, atomically."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reweigh import build, gc, install
from reweigh.store import Store

from .helpers import run_json, run_reweigh, write_recipe

pytestmark = pytest.mark.slow  # every test here builds

READS_DATA = """
import numpy as np

def train(ctx):
    value = float((ctx.inputs["data"]).read_text())
    ctx.save_weights({"w": np.full(4, value, dtype=np.float32)})
"""

FINE_TUNES = """
import numpy as np

def train(ctx):
    base = ctx.load_weights("base")["w"].numpy()
    ctx.save_weights({"w": base + 1.0})
"""


def _with_data(root: Path, name: str, value: str) -> Path:
    recipe = write_recipe(root / name, READS_DATA, inputs='[inputs.data]\npath = "data.txt"',
                          files={"data.txt": value})
    text = (recipe / "recipe.toml").read_text()
    (recipe / "recipe.toml").write_text(text.replace('name = "test-recipe"', f'name = "{name}"'))
    return recipe


def _fine_tuned(root: Path, base_weights: str) -> Path:
    return write_recipe(root / "tuned", FINE_TUNES,
                        inputs=f'[inputs.base]\nitem = "{base_weights}"')


def _names(store: Path) -> set[str]:
    return {i.name for i in Store(store).items()}


def test_gc_keeps_installed_items_and_their_bases_and_removes_the_rest(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store = Store(store_root)
    kept = build(_with_data(tmp_path, "kept", "1"), store=store)
    base = build(_with_data(tmp_path, "base", "2"), store=store)
    garbage = build(_with_data(tmp_path, "garbage", "3"), store=store)
    tuned = build(_fine_tuned(tmp_path, base.weights_digest), store=store)
    profile = tmp_path / "profile"
    install(str(kept.path), profile=profile, store=store)
    install(str(tuned.path), name="tuned", profile=profile, store=store)

    dry = run_reweigh("gc", "--dry-run", "--grace", "0", "--json", store=store_root)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["removed_items"] == [garbage.path.name] and plan["dry_run"]
    assert garbage.path.is_dir() and len(_names(store_root)) == 4

    result = run_reweigh("gc", "--grace", "0", "--json", store=store_root)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["removed_items"] == [garbage.path.name]
    assert sorted(report["kept"]) == sorted(p.name for p in (kept.path, base.path, tuned.path))
    assert report["roots"] == [str(profile)] and report["freed_bytes"] > 0
    assert not garbage.path.exists()
    assert _names(store_root) == {"kept", "base", "test-recipe"}
    # the garbage item's data input went with it; the kept items' inputs stayed
    kept_input = store.item_inputs(kept)["data"]
    assert len(report["removed_inputs"]) == 1 and report["removed_inputs"][0] != kept_input
    verified = run_reweigh("store", "verify", "--json", store=store_root)
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"]
    # nothing more to do, and what stays still builds from the store without retraining
    assert gc(store, grace=0).removed_items == []
    assert build(_with_data(tmp_path, "kept", "1"), store=store).reused


def test_every_generation_is_a_root_until_it_is_deleted(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store = Store(store_root)
    old = build(_with_data(tmp_path, "old", "1"), store=store)
    new = build(_with_data(tmp_path, "new", "2"), store=store)
    profile = tmp_path / "profile"
    install(str(old.path), name="net", profile=profile, store=store)
    install(str(new.path), name="net", profile=profile, store=store)
    assert gc(store, grace=0).removed_items == []  # generation 1 still names `old`
    deleted = run_reweigh("profile", "delete", "1", "--profile", profile)
    assert deleted.returncode == 0, deleted.stderr
    assert gc(store, grace=0).removed_items == [old.path.name]
    assert _names(store_root) == {"new"}


def test_a_deleted_profile_is_no_longer_a_root(tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store = Store(store_root)
    item = build(_with_data(tmp_path, "only", "1"), store=store)
    profile = tmp_path / "profile"
    install(str(item.path), profile=profile, store=store)
    assert gc(store, grace=0).removed_items == []
    for path in sorted(profile.rglob("*"), reverse=True):
        path.unlink() if path.is_symlink() or path.is_file() else path.rmdir()
    profile.rmdir()
    links = list((store_root / "gcroots").iterdir())
    dry = gc(store, grace=0, dry_run=True)  # says what it would do, changes nothing
    assert dry.removed_items == [item.path.name] and dry.roots == []
    assert list((store_root / "gcroots").iterdir()) == links and item.path.is_dir()
    report = gc(store, grace=0)
    assert report.removed_items == [item.path.name] and report.roots == []
    assert list((store_root / "gcroots").iterdir()) == []


def test_young_unused_inputs_stay_for_the_build_that_is_about_to_use_them(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    build(_with_data(tmp_path, "one", "1"), store=store)
    report = gc(store)  # default grace: the input was added moments ago
    assert len(report.removed_items) == 1 and report.removed_inputs == []
    assert len(store.input_records()) == 1


@pytest.mark.parametrize("holding", ["derivation lock", "shared gc lock"])
def test_gc_waits_for_a_build_holding_its_lock(tmp_path: Path, holding: str) -> None:
    """A build holds the gc lock shared from planning (its inputs are found) to the end;
    gc, in another thread here (a flock through another open file blocks there too),
    must wait until it is let go."""
    store_root = tmp_path / "store"
    store = Store(store_root)
    build(_with_data(tmp_path, "one", "1"), store=store)
    held = (store.lock("sha256:" + "ab" * 32) if holding == "derivation lock"
            else store.gc_lock(exclusive=False))
    reports: list = []
    with held:
        collector = threading.Thread(target=lambda: reports.append(gc(Store(store_root))))
        collector.start()
        collector.join(1.0)
        assert collector.is_alive()  # still waiting
        assert len(store.items()) == 1
    collector.join(120)
    assert not collector.is_alive() and len(reports[0].removed_items) == 1
    assert store.items() == []


KILLED_GC = """
import os
import shutil
import sys
from pathlib import Path

from reweigh import gc
from reweigh.store import Store


def killed(path, *args, **kwargs):
    # delete one file of the folder being removed, then die as a SIGKILL would
    for folder, _, files in os.walk(path):
        if files:
            os.unlink(os.path.join(folder, files[0]))
            break
    os._exit(9)


shutil.rmtree = killed
gc(Store(Path(sys.argv[1])), grace=0)
"""


def test_a_gc_killed_mid_delete_leaves_no_half_deleted_item_and_the_next_gc_clears_it(
        tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    store = Store(store_root)
    item = build(_with_data(tmp_path, "doomed", "1"), store=store)
    files = [p for p in item.path.rglob("*") if p.is_file()]
    killed = subprocess.run([sys.executable, "-c", KILLED_GC, str(store_root)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert killed.returncode == 9, killed.stderr
    assert not item.path.exists()  # moved aside whole before its first file went
    (debris,) = (store_root / "tmp").glob("trash-*")
    assert len([p for p in debris.rglob("*") if p.is_file()]) == len(files) - 1
    # the index rows went first: what is left at a real path is whole, and only unknown
    (left,) = (store_root / "inputs").glob("*/data.txt")  # the kill came before the inputs
    verified = run_json("store", "verify", store=store_root)
    assert verified["corrupted"] == [{"item": left.relative_to(store_root).as_posix(),
                                      "relpath": "", "problem": "unknown"}]

    result = run_reweigh("gc", "--grace", "0", "--json", store=store_root)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["cleared"] == [debris.name]
    assert not any((store_root / "tmp").iterdir())
    assert not any((store_root / "items").iterdir())
    assert not any((store_root / "inputs").iterdir())
    assert run_json("store", "verify", store=store_root)["ok"]


def test_gc_refuses_to_take_a_whole_store_for_debris_when_its_index_was_lost(
        tmp_path: Path) -> None:
    store_root = tmp_path / "store"
    item = build(_with_data(tmp_path, "kept", "1"), store=Store(store_root))
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (store_root / name).unlink(missing_ok=True)
    result = run_reweigh("gc", "--grace", "0", store=store_root)
    assert result.returncode == 1
    assert "reweigh store repair" in result.stderr and item.path.is_dir()


def test_gc_removes_nothing_while_the_index_has_lost_the_row_of_a_whole_item(
        tmp_path: Path) -> None:
    """A lost row is not debris: the item may be installed, and gc cannot know. Before,
    only an index that had lost every row stopped gc; one lost row deleted the item."""
    store_root = tmp_path / "store"
    store = Store(store_root)
    kept = build(_with_data(tmp_path, "kept", "1"), store=store)
    lost = build(_with_data(tmp_path, "lost", "2"), store=store)
    with sqlite3.connect(store_root / "index.sqlite") as db:
        db.execute("DELETE FROM items WHERE path = ?", (lost.path.name,))
    result = run_reweigh("gc", "--grace", "0", store=store_root)
    assert result.returncode == 1
    assert lost.path.name in result.stderr and "reweigh store repair" in result.stderr
    assert kept.path.is_dir() and lost.path.is_dir()
