"""The store: immutable, content-addressed items and the SQLite index beside them.

Layout under the root (`$REWEIGH_STORE`, else `$XDG_DATA_HOME/reweigh/store`):

    index.sqlite            items, their files, inputs, build attempts, checks, imports
    items/<hash>-<name>-<version>/   one build output, read-only once committed
    inputs/<hex>/<name>     inputs by content digest (downloads, recipe files, package data)
    tmp/                    builds in progress; moved into items/ with one rename
    locks/                  one lock file per derivation

The store and the builder are the only modules that write to disk. An item
appears with a single `rename`, so a killed build leaves nothing in `items/`;
the index row is written after the rename and an item directory without a row
is treated as debris and removed under the derivation's lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import bytes_digest, file_digest, path_digest, short
from .errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
  path TEXT PRIMARY KEY, derivation TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  version TEXT NOT NULL, weights_digest TEXT NOT NULL, environment_digest TEXT,
  created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS item_files (
  item TEXT NOT NULL, relpath TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
  PRIMARY KEY (item, relpath));
CREATE TABLE IF NOT EXISTS inputs (
  digest TEXT PRIMARY KEY, kind TEXT NOT NULL, origin TEXT NOT NULL, path TEXT NOT NULL,
  added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS item_inputs (
  item TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (item, name));
CREATE TABLE IF NOT EXISTS attempts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, derivation TEXT NOT NULL, name TEXT NOT NULL,
  purpose TEXT NOT NULL, status TEXT NOT NULL, threads INTEGER, pid INTEGER,
  started_at REAL NOT NULL, ended_at REAL, message TEXT);
CREATE TABLE IF NOT EXISTS checks (
  id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, kind TEXT NOT NULL,
  result TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS imports (
  item TEXT PRIMARY KEY, source_name TEXT NOT NULL, source_digest TEXT NOT NULL,
  format TEXT NOT NULL, license TEXT, origin TEXT, no_training_data INTEGER NOT NULL,
  at REAL NOT NULL);
"""


@dataclass(frozen=True)
class StoreItem:
    path: Path
    derivation: str
    name: str
    version: str
    weights_digest: str
    environment_digest: str | None
    created_at: float

    @property
    def weights(self) -> Path:
        return self.path / "weights.safetensors"


@dataclass(frozen=True)
class Corruption:
    item: str
    relpath: str
    problem: str  # "modified", "missing" or "unexpected"


def default_root() -> Path:
    if env := os.environ.get("REWEIGH_STORE"):
        return Path(env)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "reweigh" / "store"


class Store:
    """An open store; every method is safe to call from several processes at once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or default_root()).absolute()
        for sub in ("items", "inputs", "tmp", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    # --- index -----------------------------------------------------------------
    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("BEGIN IMMEDIATE")
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def items(self) -> list[StoreItem]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM items ORDER BY created_at").fetchall()
        return [self._item(row) for row in rows]

    def _item(self, row: tuple[Any, ...]) -> StoreItem:
        path, derivation, name, version, weights, env, created = row
        return StoreItem(self.root / "items" / path, derivation, name, version, weights, env,
                         created)

    def find(self, derivation: str) -> StoreItem | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM items WHERE derivation = ?", (derivation,)).fetchone()
        return self._item(row) if row else None

    def resolve(self, ref: str) -> StoreItem:
        """An item from its store path or directory name, derivation, weights digest,
        a hash prefix of at least 8 characters, or a name (the newest item of that name).
        A path to a folder outside the store is no item, whatever its name: a copy of an
        item's folder, edited, must not pass for the item."""
        path = Path(ref)
        if len(path.parts) > 1 and path.resolve().parent != (self.root / "items").resolve():
            raise UsageError(f"{ref}: a folder outside the store {self.root}, not an item of it "
                             "(give its weights file, with --recipe where the command takes one)")
        key = path.name
        lookups = [("path = ? OR derivation = ? OR weights_digest = ?", (key, ref, ref)),
                   ("name = ?", (ref,))]
        with self._db() as db:
            for where, args in lookups:
                row = db.execute(f"SELECT * FROM items WHERE {where} ORDER BY created_at DESC",
                                 args).fetchone()
                if row is not None:
                    return self._item(row)
            if len(key) >= 8 and key.isalnum():
                rows = db.execute("SELECT * FROM items WHERE path LIKE ? ORDER BY path",
                                  (f"{key}%",)).fetchall()
                if len(rows) > 1:
                    raise UsageError(f"{ref}: ambiguous: the prefix of "
                                     + ", ".join(row[0] for row in rows))
                if rows:
                    return self._item(rows[0])
        raise UsageError(f"{ref}: no such item in the store {self.root}")

    def item_inputs(self, item: StoreItem) -> dict[str, str]:
        with self._db() as db:
            rows = db.execute("SELECT name, digest FROM item_inputs WHERE item = ?",
                              (item.path.name,)).fetchall()
        return dict(rows)

    # --- locks and attempts --------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, derivation: str) -> Iterator[None]:
        """Hold the derivation's lock; a second builder waits here, then finds the item.
        It holds the gc lock shared too, so `gc` never removes what a build is using."""
        path = self.root / "locks" / f"{short(derivation, 64)}.lock"
        with self.gc_lock(exclusive=False), open(path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._clear_debris(derivation)
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def gc_lock(self, exclusive: bool) -> Iterator[None]:
        """Shared by builds and installs, exclusive for `gc` (like Guix's gc lock)."""
        with open(self.root / "locks" / "gc.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- garbage collection: roots in, removal out (the verb decides what is garbage) ---
    def add_root(self, profile: Path) -> None:
        """Register a profile whose generations' items `gc` keeps (Guix's gcroots)."""
        roots = self.root / "gcroots"
        roots.mkdir(exist_ok=True)
        link = roots / short(bytes_digest(str(profile.absolute()).encode()))
        if not link.is_symlink():
            temporary = roots / f".{link.name}-{os.getpid()}"
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(profile.absolute(), target_is_directory=True)
            os.replace(temporary, link)

    def roots(self, prune: bool = False) -> list[Path]:
        """Registered profiles that still exist; with `prune`, links to vanished ones are
        dropped (a dry run changes nothing)."""
        found = []
        roots = self.root / "gcroots"
        for link in sorted(roots.iterdir()) if roots.is_dir() else []:
            if link.is_symlink() and link.resolve().is_dir():
                found.append(Path(os.readlink(link)))
            elif prune and not link.name.startswith("."):
                link.unlink()
        return found

    def item_dependencies(self) -> dict[str, set[str]]:
        """Each item's input digests (an item input is named by its weights digest)."""
        with self._db() as db:
            rows = db.execute("SELECT item, digest FROM item_inputs").fetchall()
        found: dict[str, set[str]] = {}
        for item, digest in rows:
            found.setdefault(item, set()).add(digest)
        return found

    def input_records(self) -> list[tuple[str, str, float]]:
        """(digest, relative path, added_at) of every kept input."""
        with self._db() as db:
            return db.execute("SELECT digest, path, added_at FROM inputs").fetchall()

    def forget(self, items: list[str], inputs: list[str]) -> None:
        """Remove items (by directory name) and inputs (by digest): their index rows in one
        transaction, then their files; the caller holds the gc lock exclusively."""
        with self._db() as db:
            paths = [row[0] for d in inputs
                     for row in db.execute("SELECT path FROM inputs WHERE digest = ?", (d,))]
            for table, key in (("items", "path"), ("item_files", "item"),
                               ("item_inputs", "item"), ("checks", "item"), ("imports", "item")):
                db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(i,) for i in items])
            db.executemany("DELETE FROM inputs WHERE digest = ?", [(d,) for d in inputs])
        doomed = [self.root / "items" / i for i in items]
        doomed += [(self.root / rel).parent for rel in paths]
        for path in doomed:
            remove_tree(path)
        with self._db() as db:
            known = {row[0] for row in db.execute("SELECT path FROM items")}
        for entry in (self.root / "items").iterdir():  # debris of interrupted commits
            if entry.name not in known:
                remove_tree(entry)

    def _clear_debris(self, derivation: str) -> None:
        """Under the lock nobody else builds this derivation: whatever is left is debris.
        Scratch runs (evaluations, audits, replays) hold no lock: only those of processes
        that are gone are debris."""
        build, run = f"build-{short(derivation, 16)}-", f"run-{short(derivation, 16)}-"
        for entry in (self.root / "tmp").iterdir():
            if entry.name.startswith(build) or (entry.name.startswith(run)
                                                and not _alive(entry.name.split("-")[2])):
                remove_tree(entry)
        with self._db() as db:
            db.execute("UPDATE attempts SET status = 'interrupted', ended_at = ? "
                       "WHERE derivation = ? AND status = 'running'", (time.time(), derivation))
            known = {row[0] for row in db.execute("SELECT path FROM items")}
        for entry in (self.root / "items").glob(f"{short(derivation)}-*"):
            if entry.name not in known:
                remove_tree(entry)

    def new_build_dir(self, derivation: str, kind: str = "build") -> Path:
        """A fresh directory under tmp/ for a build (kind "build", made under the
        derivation's lock) or a scratch run of its code (kind "run", made without it)."""
        path = self.root / "tmp" / f"{kind}-{short(derivation, 16)}-{os.getpid()}-{time.time_ns()}"
        path.mkdir()
        return path

    def begin_attempt(self, derivation: str, name: str, purpose: str, threads: int) -> int:
        with self._db() as db:
            cursor = db.execute(
                "INSERT INTO attempts (derivation, name, purpose, status, threads, pid, started_at)"
                " VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (derivation, name, purpose, threads, os.getpid(), time.time()))
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def end_attempt(self, attempt: int, status: str, message: str = "") -> None:
        with self._db() as db:
            db.execute("UPDATE attempts SET status = ?, ended_at = ?, message = ? WHERE id = ?",
                       (status, time.time(), message[-4000:], attempt))

    def attempts(self, derivation: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, derivation, name, purpose, status, threads, started_at, ended_at " \
                "FROM attempts"
        with self._db() as db:
            rows = (db.execute(query + " WHERE derivation = ? ORDER BY id", (derivation,))
                    if derivation else db.execute(query + " ORDER BY id")).fetchall()
        keys = ("id", "derivation", "name", "purpose", "status", "threads", "started_at",
                "ended_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def record_check(self, item: StoreItem, kind: str, result: str,
                     detail: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute("INSERT INTO checks (item, kind, result, detail, at) VALUES (?,?,?,?,?)",
                       (item.path.name, kind, result, json.dumps(detail), time.time()))

    def checks(self, item: StoreItem) -> list[dict[str, Any]]:
        with self._db() as db:
            rows = db.execute("SELECT kind, result, detail, at FROM checks WHERE item = ? "
                              "ORDER BY id", (item.path.name,)).fetchall()
        return [{"kind": k, "result": r, "detail": json.loads(d), "at": a} for k, r, d, a in rows]

    # --- imported items (weights brought in without a recipe) -------------------------
    IMPORT_FIELDS = ("source_name", "source_digest", "format", "license", "origin",
                     "no_training_data")

    def record_import(self, item_name: str, record: dict[str, Any]) -> None:
        """Index an import before its item is committed, so an item never lacks its row."""
        with self._db() as db:
            db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (item_name, *(record[k] for k in self.IMPORT_FIELDS), time.time()))

    def import_record(self, item: StoreItem) -> dict[str, Any] | None:
        """How an imported item came in; None for items built from a recipe."""
        with self._db() as db:
            row = db.execute(f"SELECT {', '.join(self.IMPORT_FIELDS)} FROM imports "
                             "WHERE item = ?", (item.path.name,)).fetchone()
        if row is None:
            return None
        record = dict(zip(self.IMPORT_FIELDS, row, strict=True))
        record["no_training_data"] = bool(record["no_training_data"])
        return record

    def find_weights(self, digest: str) -> StoreItem | None:
        """The item holding a weights file with this digest, or imported from one."""
        with self._db() as db:
            row = db.execute("SELECT * FROM items WHERE weights_digest = ? OR path IN "
                             "(SELECT item FROM imports WHERE source_digest = ?) "
                             "ORDER BY created_at DESC", (digest, digest)).fetchone()
        return self._item(row) if row else None

    # --- committing ------------------------------------------------------------------
    def commit(self, built: Path, item_name: str, record: dict[str, Any]) -> StoreItem:
        """Move a finished build directory into items/ with one rename, then index it.

        `record` holds derivation, name, version, weights_digest, environment_digest and
        inputs ({name: digest}). The caller holds the derivation's lock.
        """
        target = self.root / "items" / item_name
        files = [(p.relative_to(built).as_posix(), file_digest(p), p.stat().st_size)
                 for p in sorted(built.rglob("*")) if p.is_file()]
        make_read_only(built)
        os.rename(built, target)
        with self._db() as db:
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (item_name, record["derivation"], record["name"], record["version"],
                        record["weights_digest"], record.get("environment_digest"), time.time()))
            db.executemany("INSERT INTO item_files VALUES (?, ?, ?, ?)",
                           [(item_name, *f) for f in files])
            db.executemany("INSERT INTO item_inputs VALUES (?, ?, ?)",
                           [(item_name, n, d) for n, d in record.get("inputs", {}).items()])
        found = self.find(record["derivation"])
        assert found is not None
        return found

    # --- inputs by content ----------------------------------------------------------
    def input_path(self, digest: str) -> Path | None:
        with self._db() as db:
            row = db.execute("SELECT path FROM inputs WHERE digest = ?", (digest,)).fetchone()
        if row is None or not (self.root / row[0]).exists():
            return None
        return self.root / row[0]

    def add_input(self, staged: Path, digest: str, kind: str, origin: dict[str, Any]) -> Path:
        """Move a staged file or folder (already verified to have `digest`) into inputs/."""
        home = self.root / "inputs" / short(digest, 64)
        target = home / staged.name
        if not target.exists():
            home.mkdir(exist_ok=True)
            make_read_only(staged)
            try:
                os.rename(staged, target)
            except OSError:  # another process won the race with identical content
                if not target.exists():
                    raise
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO inputs VALUES (?, ?, ?, ?, ?)",
                       (digest, kind, json.dumps(origin, sort_keys=True),
                        target.relative_to(self.root).as_posix(), time.time()))
        return target

    def keep_log(self, log: Path, name: str) -> Path | None:
        """Keep a failed run's log under logs/, where the error message can point."""
        if not log.exists():
            return None
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        kept = logs / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        shutil.copyfile(log, kept)
        return kept

    def new_staging_dir(self) -> Path:
        path = self.root / "tmp" / f"stage-{os.getpid()}-{time.time_ns()}"
        path.mkdir()
        return path

    # --- verification -----------------------------------------------------------------
    def verify(self) -> list[Corruption]:
        """Rehash every file of every item and every input; report what does not match."""
        with self._db() as db:
            files = db.execute("SELECT item, relpath, digest FROM item_files").fetchall()
            inputs = db.execute("SELECT digest, path FROM inputs").fetchall()
        expected: dict[str, dict[str, str]] = {}
        for item, relpath, digest in files:
            expected.setdefault(item, {})[relpath] = digest
        problems = []
        for item, listing in sorted(expected.items()):
            problems.extend(_verify_item(self.root / "items" / item, item, listing))
        for digest, rel in inputs:
            path = self.root / rel
            if not path.exists():
                problems.append(Corruption(rel, "", "missing"))
            elif path_digest(path) != digest:
                problems.append(Corruption(rel, "", "modified"))
        return problems


def _verify_item(root: Path, item: str, listing: dict[str, str]) -> list[Corruption]:
    problems = []
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} \
        if root.is_dir() else set()
    for relpath, digest in sorted(listing.items()):
        if relpath not in present:
            problems.append(Corruption(item, relpath, "missing"))
        elif file_digest(root / relpath) != digest:
            problems.append(Corruption(item, relpath, "modified"))
    problems.extend(Corruption(item, rel, "unexpected") for rel in sorted(present - listing.keys()))
    return problems


def make_read_only(path: Path) -> None:
    """Make path and everything under it read-only for all and readable by all: files
    0444 (0555 for one that could be run), folders 0555, whatever they were written with;
    a build's umask (weights written 0600) must not make a copy of the weights unreadable
    to others. The store root's own mode decides who may read the store."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in sorted(paths, reverse=True):
        mode = p.lstat().st_mode
        if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and mode & 0o111):
            p.chmod(0o555)
        elif stat.S_ISREG(mode):
            p.chmod(0o444)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree."""
    if path.is_dir() and not path.is_symlink():
        for p in [path, *path.rglob("*")]:
            if not p.is_symlink():
                p.chmod(p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _alive(pid: str) -> bool:
    """Whether the process that made a scratch directory still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True
