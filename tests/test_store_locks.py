"""Store housekeeping: gc leaves no stale lock file and compacts the index; removing a lock
file never lets two holders in."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from reweigh.digest import bytes_digest
from reweigh.store import Store
from reweigh.store_locks import locked, remove_unused

from .helpers import run_reweigh


def _fake_items(store: Store, count: int, tmp: Path) -> list[str]:
    """`count` small items committed as a build commits them, each under its lock."""
    names = []
    for i in range(count):
        derivation = bytes_digest(f"item {i}".encode())
        out = tmp / f"out-{i}"
        out.mkdir()
        (out / "weights.safetensors").write_bytes(b"x" * 100)
        (out / "derivation.json").write_text(json.dumps({"i": i, "pad": "p" * 2000}))
        name = f"{derivation[7:39]}-fake-{i}"
        with store.lock(derivation):
            store.commit(out, name, {"derivation": derivation, "name": "fake",
                                     "version": str(i), "weights_digest": derivation,
                                     "inputs": {}})
        names.append(name)
    return names


@pytest.mark.slow  # 150 commits, then gc as a command
def test_gc_removes_the_lock_files_of_what_it_removed_and_compacts_the_index(
        tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    _fake_items(store, 150, tmp_path)
    assert len(list((root / "locks").glob("*.lock"))) == 151  # and gc.lock
    index = root / "index.sqlite"
    run_reweigh("list", store=root)  # the index's log is checkpointed into the file
    grown = index.stat().st_size

    result = run_reweigh("gc", "--grace", "0", "--json", store=root)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["removed_items"]) == 150 and len(report["removed_locks"]) == 150
    assert [p.name for p in (root / "locks").iterdir()] == ["gc.lock"]
    empty = Store(tmp_path / "empty").root / "index.sqlite"
    assert index.stat().st_size <= empty.stat().st_size < grown
    wal = root / "index.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert Store(root).items() == []


def test_a_lock_held_during_gc_stays() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        locks = Path(folder)
        (locks / "gc.lock").touch()
        with locked(locks / "held.lock"):
            (locks / "free.lock").touch()
            assert remove_unused(locks) == ["free.lock"]
            assert (locks / "held.lock").exists() and (locks / "gc.lock").exists()
        assert remove_unused(locks) == ["held.lock"]


def test_removing_lock_files_while_others_take_them_never_lets_two_in(tmp_path: Path) -> None:
    """Lockers and a remover race for one lock file; with the inode check in `locked`, a
    locker that opened the file just before it was removed takes the new one instead of
    holding the removed one beside another holder."""
    path = tmp_path / "one.lock"
    inside, overlaps, stop = [0], [0], threading.Event()

    def take(rounds: int) -> None:
        for _ in range(rounds):
            with locked(path):
                inside[0] += 1
                if inside[0] > 1:
                    overlaps[0] += 1
                time.sleep(0.0005)
                inside[0] -= 1

    def remove() -> None:
        while not stop.is_set():
            remove_unused(tmp_path)

    remover = threading.Thread(target=remove)
    remover.start()
    lockers = [threading.Thread(target=take, args=(300,)) for _ in range(3)]
    for t in lockers:
        t.start()
    for t in lockers:
        t.join()
    stop.set()
    remover.join()
    assert overlaps[0] == 0
