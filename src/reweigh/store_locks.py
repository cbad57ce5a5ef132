"""The store's lock files: taken safely, and removed safely when nothing needs them.

Every lock is an `flock` on a file under `locks/`: the gc lock (`gc.lock`, shared by
builds and installs, exclusive for `gc` and `store repair`), one per derivation (two
builders of one derivation train once) and one per kept input (its recheck). Without
care they pile up: a store that built and collected a thousand items kept a thousand
lock files.

Removing a lock file is the classic race: a process opens the file, another unlinks it,
a third creates a new one at the same path, and the first and the third both "hold" the
lock. So a lock is taken in two steps (`locked`): flock the file, then check that the
file still is the one at the path (same inode), else open the path again. And a lock
file is removed only while its remover holds it (`remove_unused`): whoever opened it
before then finds, once it gets the lock, that it holds a file no longer at the path,
and takes the new one. The gc lock itself is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

GC_LOCK = "gc.lock"


@contextlib.contextmanager
def locked(path: Path, exclusive: bool = True) -> Iterator[None]:
    """Hold an flock on the lock file at `path` (made when absent), waiting for it; the
    file held is the one at the path for as long as the lock is held."""
    while True:
        handle = open(path, "a+b")  # noqa: SIM115  # closed below, or kept until the end
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if _still_there(handle, path):
                break
        except BaseException:
            handle.close()
            raise
        handle.close()  # removed meanwhile by `remove_unused`: take the new one
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _still_there(handle: object, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino  # type: ignore[attr-defined]
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def gc_lock(root: Path, exclusive: bool) -> Iterator[None]:
    """Shared by builds and installs, exclusive for `gc` and `store repair` (like Guix's
    gc lock); a function of the root, since repair takes it before the index opens."""
    (root / "locks").mkdir(parents=True, exist_ok=True)
    with locked(root / "locks" / GC_LOCK, exclusive):
        yield


def remove_unused(locks: Path) -> list[str]:
    """Remove every lock file under `locks` that no process holds (all but the gc lock);
    the names removed. A lock held now is left, and so is one taken meanwhile."""
    removed = []
    for path in sorted(locks.glob("*.lock")):
        if path.name == GC_LOCK:
            continue
        try:
            handle = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            if _still_there(handle, path):
                path.unlink()
                removed.append(path.name)
    return removed
