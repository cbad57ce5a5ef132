"""`gc`: remove the store items and inputs that nothing needs any more.

The roots are the items named by any generation of any profile registered with
the store (`install` registers them, as Guix's gcroots). What is live is decided
by one pure function: the roots, every item whose weights a live item took as an
input (a fine-tuned network keeps its base), and every input a live item was built
from. Everything else goes: the index rows in one transaction, then the files. The
whole collection holds the store's gc lock exclusively, so it never runs beside a
build or an install. Then the lock files nobody holds are removed and the index is
compacted, so a store that built and collected many items keeps no trace of them
(`store_locks` says why removing a lock file is safe). Inputs younger than
`GRACE_SECONDS` stay: a build may have just resolved them and not yet taken its lock.

An interrupted `pull` keeps what it received in `tmp/pull-<archive digest>/`, so the next
pull of the same archive resumes. gc removes such a partial when its item is in the store
by now (nothing will resume it), when it holds no item, or when nothing was written to it
for `PARTIAL_AGE` seconds (a day: a resume is for the same day's retry, not for next
month's); the rest stay for their resume. A running pull holds the gc lock shared for as
long as it writes there, so under the exclusive lock every partial is an interrupted one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..profile import Profile
from ..store import Store, remove_tree

GRACE_SECONDS = 600.0
PARTIAL_AGE = 86400.0
PULL_PREFIX = "pull-"  # `pull`'s transfers under tmp/


@dataclass(frozen=True)
class GcReport:
    roots: list[Path]  # the registered profiles
    kept: list[str]  # item directory names
    removed_items: list[str]
    removed_inputs: list[str]  # digests
    freed_bytes: int
    dry_run: bool = False
    cleared: list[str] = field(default_factory=list)  # what interrupted removals left
    locks: list[str] = field(default_factory=list)  # lock files nobody held, removed
    # interrupted pulls' folders removed: {"folder": tmp/ name, "reason": why}
    partials: list[dict[str, str]] = field(default_factory=list)
    kept_partials: list[str] = field(default_factory=list)  # kept for a resume
    vanished: list[str] = field(default_factory=list)  # index rows of deleted item folders

    def to_json(self) -> dict[str, Any]:
        return {"roots": [str(r) for r in self.roots], "kept": self.kept,
                "removed_items": self.removed_items, "removed_inputs": self.removed_inputs,
                "freed_bytes": self.freed_bytes, "dry_run": self.dry_run,
                "cleared": self.cleared, "removed_locks": self.locks,
                "removed_partials": self.partials, "kept_partials": self.kept_partials,
                "vanished_items": self.vanished}


def live_items(roots: Iterable[str], weights: dict[str, str],
               dependencies: dict[str, set[str]]) -> set[str]:
    """The roots and, transitively, every item whose weights a live item was built from.

    `weights` maps item -> weights digest; `dependencies` item -> its input digests."""
    by_weights: dict[str, set[str]] = {}
    for item, digest in weights.items():
        by_weights.setdefault(digest, set()).add(item)
    live: set[str] = set()
    todo = [r for r in roots if r in weights]
    while todo:
        item = todo.pop()
        if item not in live:
            live.add(item)
            for digest in dependencies.get(item, ()):
                todo.extend(by_weights.get(digest, ()))
    return live


def profile_roots(store: Store, profiles: list[Path]) -> set[str]:
    """Items of this store named by any generation of the given profiles."""
    items = (store.root / "items").resolve()
    names = set()
    for root in profiles:
        for generation in Profile(root).generations():
            for entry in generation.networks.values():
                if entry.item.parent.resolve() == items:
                    names.add(entry.item.name)
    return names


def partial_pulls(store: Store) -> list[tuple[Path, set[str]]]:
    """The folders interrupted pulls left under tmp/, each with the items it holds."""
    return [(work, {e.name for e in work.iterdir() if e.is_dir() and e.name != "chunks"})
            for work in sorted((store.root / "tmp").glob(f"{PULL_PREFIX}*")) if work.is_dir()]


def _stale_partials(store: Store, now: float,
                    age: float) -> tuple[list[tuple[Path, str]], list[Path]]:
    """(partials to remove with why, partials kept for a resume); the caller holds the
    gc lock exclusively, so no pull is writing to any of them."""
    present = {i.path.name for i in store.items()}
    stale, kept = [], []
    for work, items in partial_pulls(store):
        written = _last_written(work)
        if not items:
            stale.append((work, "holds no item"))
        elif items & present:
            stale.append((work, f"{', '.join(sorted(items & present))} is in the store"))
        elif written < now - age:
            stale.append((work, f"nothing written for {(now - written) / 3600:.0f} hours"))
        else:
            kept.append(work)
    return stale, kept


def _last_written(path: Path) -> float:
    """When anything in the folder was last written (its own or any entry's mtime)."""
    latest = path.stat().st_mtime
    for folder, _, files in os.walk(path):
        for name in [*files, "."]:
            with contextlib.suppress(OSError):
                latest = max(latest, os.stat(os.path.join(folder, name)).st_mtime)
    return latest


def gc(store: Store | None = None, *, dry_run: bool = False,
       grace: float = GRACE_SECONDS, partial_age: float = PARTIAL_AGE) -> GcReport:
    """Remove what no profile needs; inputs added less than `grace` seconds ago stay, and
    so do interrupted pulls written to less than `partial_age` seconds ago."""
    store = store or Store()
    started = time.time()
    with store.gc_lock(exclusive=True):
        cleared = [] if dry_run else store.clear_trash()
        vanished = store.vanished_items(drop=not dry_run)
        stale, kept_partials = _stale_partials(store, started, partial_age)
        profiles = store.roots(prune=not dry_run)
        weights = {i.path.name: i.weights_digest for i in store.items()}
        _refuse_lost_index(store)
        dependencies = store.item_dependencies()
        live = live_items(profile_roots(store, profiles), weights, dependencies)
        needed = set().union(*(dependencies.get(i, set()) for i in live))
        doomed = sorted(set(weights) - live)
        inputs = [(digest, rel) for digest, rel, added in store.input_records()
                  if digest not in needed and added < started - grace]
        freed = sum(_size(store.root / "items" / i) for i in doomed) + sum(
            _size(store.root / rel) for _, rel in inputs) + sum(_size(w) for w, _ in stale)
        locks = []
        if not dry_run:
            store.forget(doomed, [digest for digest, _ in inputs])
            for work, _ in stale:
                remove_tree(work)
            locks = store.tidy()
    return GcReport(profiles, sorted(live), doomed, [d for d, _ in inputs], freed, dry_run,
                    cleared, locks, [{"folder": w.name, "reason": why} for w, why in stale],
                    [w.name for w in kept_partials], vanished)


def _refuse_lost_index(store: Store) -> None:
    """An item folder the index does not know is a whole item whose row was lost (or a
    commit interrupted after its rename): gc cannot tell which profile needs it, so it
    removes nothing until `store repair` has indexed it again."""
    if unknown := store.unknown_items():
        more = ", ..." if len(unknown) > 1 else ""
        raise StoreError(f"{store.root / 'index.sqlite'} does not know {len(unknown)} of the "
                         f"item folders in items/ ({unknown[0]}{more}): gc removes nothing "
                         "while they may be needed",
                         hint="`reweigh store repair` indexes them again")


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
               for f in files)
