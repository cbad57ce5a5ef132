"""The store's inputs: files and folders kept by content digest under `inputs/`.

An input is verified once, when it enters (by `reweigh.inputs`); after that it is reused
by every build that names its digest, so damage from outside (a `gc` killed while it
deleted the folder, a hand edit, a disk error) would be trained on silently. Rehashing
every input at every build would cost as much as reading all the data, so each file's
size, inode, modification and change times are recorded when it enters, and compared
at each reuse: a `stat` per file. Only when one of them moved is the input rehashed;
if it no longer has its digest it is removed (rows first, then files, moved aside), and
the caller stages it again from its source, which for recipe files and package data is
at hand, and for a URL is one more download. The store's log says when this happened.

It deliberately does not catch a change that keeps size, inode and both times, which
takes privileges (setting the clock) or a disk that lies; `reweigh store verify`
rehashes everything.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .digest import path_digest, short
from .errors import ReweighError
from .store_index import transaction
from .store_locks import locked
from .trees import FileStat, discard, move_read_only, tree_stats


class KeptInputs:
    """The inputs of the store under `root`; safe to use from several processes at once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path | None:
        """The input's file or folder in the store, when it is there and whole; None when
        it is not kept, or was kept but damaged (and is now removed)."""
        kept = self._kept(digest)
        if kept is None:
            return None
        path, recorded = kept
        if recorded and tree_stats(path) == recorded:
            return path
        with self._lock(digest):
            return self._recheck(digest)

    def _kept(self, digest: str) -> tuple[Path, list[FileStat]] | None:
        """Where the index says the input is, and its files' statistics as recorded."""
        with transaction(self.root) as db:
            row = db.execute("SELECT path FROM inputs WHERE digest = ?", (digest,)).fetchone()
            recorded = _recorded_stats(db, digest)
        return None if row is None else (self.root / row[0], recorded)

    def find(self, kind: str, match: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The digest and origin of a kept input of `kind` whose origin holds every item
        of `match` (the Debian package a .deb was unpacked into), newest first."""
        with transaction(self.root) as db:
            rows = db.execute("SELECT digest, origin FROM inputs WHERE kind = ? "
                              "ORDER BY added_at DESC", (kind,)).fetchall()
        for digest, origin in rows:
            try:
                recorded = json.loads(origin)
            except ValueError:
                continue
            if isinstance(recorded, dict) and all(recorded.get(k) == v for k, v in match.items()):
                return str(digest), recorded
        return None

    def add(self, staged: Path, digest: str, kind: str, origin: dict[str, Any]) -> Path:
        """Move a staged file or folder (already verified to have `digest`) into inputs/.
        Whatever lies at its place without an index row (a copy whose adding or removal
        was cut short) is discarded first."""
        home = self.root / "inputs" / short(digest, 64)
        target = home / staged.name
        with self._lock(digest):
            with transaction(self.root) as db:
                row = db.execute("SELECT path FROM inputs WHERE digest = ?",
                                 (digest,)).fetchone()
            if row is not None:  # another process added it meanwhile
                return self.root / row[0]
            discard(home, self.root / "tmp")
            home.mkdir()
            move_read_only(staged, target)
            self.index(digest, kind, origin, target)
        return target

    def index(self, digest: str, kind: str, origin: dict[str, Any], path: Path) -> None:
        """The index rows of an input already in inputs/, with its files' statistics."""
        stats = tree_stats(path)
        with transaction(self.root) as db:
            db.execute("INSERT OR REPLACE INTO inputs VALUES (?, ?, ?, ?, ?)",
                       (digest, kind, json.dumps(origin, sort_keys=True),
                        path.relative_to(self.root).as_posix(), time.time()))
            _record_stats(db, digest, stats)

    def listings(self) -> dict[str, tuple[str, list[str]]]:
        """Each kept input: digest -> (path relative to the root, its files' relative paths
        as recorded when it entered; empty for inputs kept before they were recorded)."""
        with transaction(self.root) as db:
            inputs = db.execute("SELECT digest, path FROM inputs").fetchall()
            files = db.execute("SELECT digest, relpath FROM input_files").fetchall()
        listings: dict[str, tuple[str, list[str]]] = {d: (rel, []) for d, rel in inputs}
        for digest, relpath in sorted(files):
            if digest in listings:
                listings[digest][1].append(relpath)
        return listings

    def discard_unknown(self) -> list[str]:
        """Remove what lies under inputs/ without an index row (debris of an add cut short
        between its move and its row, or of a removal cut short after its rows); the
        caller holds the gc lock exclusively, so no build is adding one. The index is read
        once; only a folder it does not know is looked up again, under the input's lock, in
        case a caller without the gc lock has just added it."""
        with transaction(self.root) as db:
            known = {row[0] for row in db.execute("SELECT digest FROM inputs")}
        removed = []
        for home in sorted((self.root / "inputs").iterdir()):
            digest = f"sha256:{home.name}"
            if digest in known:
                continue
            with self._lock(digest):
                if self._kept(digest) is None:
                    discard(home, self.root / "tmp")
                    removed.append(home.name)
        return removed

    @contextlib.contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        """Held while an input is rechecked, removed or added: of two processes that both
        find it damaged, the second must not remove the good copy the first put back."""
        with locked(self.root / "locks" / f"input-{short(digest, 64)}.lock"):
            yield

    def _recheck(self, digest: str) -> Path | None:
        """Under the input's lock: rehash it; record its statistics again if it is whole
        (copied back with `cp -a`, say), remove it if it is not."""
        kept = self._kept(digest)
        if kept is None:  # another process removed it meanwhile
            return None
        path, recorded = kept
        stats = tree_stats(path)
        if recorded and stats == recorded:  # another process rechecked it meanwhile
            return path
        if holds(path, digest):
            with transaction(self.root) as db:
                _record_stats(db, digest, stats)
            return path
        with transaction(self.root) as db:
            for table in ("inputs", "input_files"):
                db.execute(f"DELETE FROM {table} WHERE digest = ?", (digest,))
        discard(path.parent, self.root / "tmp")
        note(self.root, f"{path.relative_to(self.root)}: damaged ({_damage(recorded, stats)}): "
             "removed; the next build that needs it stages it again from its source")
        return None


def note(root: Path, message: str) -> None:
    """Append a line to the store's logs/store.log: what the store did on its own, where
    a user who wonders why a build staged an input again can look."""
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / "store.log", "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")


def _recorded_stats(db: sqlite3.Connection, digest: str) -> list[FileStat]:
    rows = db.execute("SELECT relpath, size, inode, mtime_ns, ctime_ns FROM input_files "
                      "WHERE digest = ? ORDER BY relpath", (digest,))
    return sorted((str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows)


def _record_stats(db: sqlite3.Connection, digest: str, stats: list[FileStat]) -> None:
    db.execute("DELETE FROM input_files WHERE digest = ?", (digest,))
    db.executemany("INSERT INTO input_files VALUES (?, ?, ?, ?, ?, ?)",
                   [(digest, *s) for s in stats])


def holds(path: Path, digest: str) -> bool:
    """Whether a kept input still has its digest; a link or a vanished file in it means
    it does not."""
    try:
        return path_digest(path) == digest
    except (ReweighError, OSError):
        return False


def _damage(recorded: list[FileStat], found: list[FileStat]) -> str:
    """What changed between two statistics of a tree, in a few words for a log."""
    if not recorded:  # kept before statistics were recorded
        return "its content no longer has its digest"
    before, after = {s[0] for s in recorded}, {s[0] for s in found}
    words = [f"{len(before - after)} file(s) missing" if before - after else "",
             f"{len(after - before)} unexpected" if after - before else ""]
    return ", ".join(w for w in words if w) or "its content changed"
