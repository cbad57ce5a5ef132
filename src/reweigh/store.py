"""The store: immutable, content-addressed items and the SQLite index beside them.

Layout under the root (`$REWEIGH_STORE`, else `$XDG_DATA_HOME/reweigh/store`):

    index.sqlite            items, their files, inputs, build attempts, checks, imports
    items/<hash>-<name>-<version>/   one build output, read-only once committed
    inputs/<hex>/<name>     inputs by content digest (downloads, recipe files, package data)
    chunks/<2 hex>/<hex>    the chunks of kept checkpoints, by content (small ones compressed)
                            (`store_checkpoints`); an item keeps manifests naming them
    tmp/                    builds in progress; moved into items/ with one rename;
                            trash-*: what is being removed, moved aside first
    locks/                  one lock file per derivation (and per input, for its repair)
    logs/                   failed builds' logs; store.log: what the store repaired itself

The store and the builder are the only modules that write to disk. An item
appears with a single `rename`, so a killed build leaves nothing in `items/`;
the index row is written after the rename and an item directory without a row
is treated as debris and removed under the derivation's lock. What is removed is
first moved aside (`trees.discard`), so no half-deleted folder is ever at its path.
The other way round, a row whose folder is gone (someone deleted it by hand: reweigh
removes a row before its folder) names nothing: `find`, `find_weights` and `resolve`
drop such rows as they meet them (logs/store.log says so), so the item reads as absent
and the next build or pull makes it again; `items` leaves them out, and `gc` reports
and drops them all.

The index itself lives in `store_index` (with what happens when SQLite cannot read
it), and the inputs, with the cheap check that they are still whole each time they
are reused, in `store_inputs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import bytes_digest, file_digest, short, tree_files
from .errors import BuildError, ReweighError, UsageError
from .store_checkpoints import Chunks, Manifest
from .store_index import compact, create, transaction
from .store_inputs import KeptInputs, note
from .store_locks import gc_lock, locked, remove_unused
from .trees import discard, move_read_only, odd_entries, remove_tree

__all__ = ["Corruption", "Store", "StoreItem", "default_root", "file_rows", "gc_lock",
           "remove_tree"]


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
    problem: str  # "modified", "missing", "unexpected", or "unknown" (no index row)


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
        create(self.root)
        self._inputs = KeptInputs(self.root)
        self.chunks = Chunks(self.root)

    # --- index -----------------------------------------------------------------
    def _db(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self.root)

    def items(self) -> list[StoreItem]:
        """Every item whose folder is there (a vanished one's rows stay for `gc`)."""
        with self._db() as db:
            rows = db.execute("SELECT * FROM items ORDER BY created_at").fetchall()
        return [self._item(row) for row in rows if self._there(row[0])]

    def _there(self, name: str) -> bool:
        """Whether the item's folder is there; only its absence (not a folder this user
        may not look into) makes it gone."""
        try:
            os.lstat(self.root / "items" / name)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        return True

    def _present(self, db: sqlite3.Connection, rows: list[Any],
                 dropped: list[str]) -> list[Any]:
        """The rows whose item folder is there; the rows of the others are dropped in
        this transaction (in which no commit or removal can run: every transaction on
        the index is immediate, and reweigh itself renames a folder into items/ before
        its rows are written and removes rows before their folder)."""
        present = []
        for row in rows:
            if self._there(row[0]):
                present.append(row)
            else:
                self._drop_rows(db, [row[0]])
                dropped.append(row[0])
        return present

    def _drop_rows(self, db: sqlite3.Connection, items: list[str]) -> None:
        for table, key in _ITEM_TABLES:
            db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(i,) for i in items])

    def _forget_dropped(self, dropped: list[str]) -> None:
        """Say in the store's log which rows were dropped, and remove the signatures kept
        for those items."""
        for name in dropped:
            discard(self.root / "signatures" / name, self.root / "tmp")
            note(self.root, f"items/{name}: its folder was deleted, not by reweigh; its index "
                 "rows were dropped (build or pull it again)")

    def vanished_items(self, drop: bool = True) -> list[str]:
        """Items whose index rows remain while their folder was deleted; with `drop`,
        their rows are dropped."""
        with self._db() as db:
            rows = db.execute("SELECT path FROM items ORDER BY path").fetchall()
            gone = [row[0] for row in rows if not self._there(row[0])]
            if drop:
                self._drop_rows(db, gone)
        if drop:
            self._forget_dropped(gone)
        return gone

    def _item(self, row: tuple[Any, ...]) -> StoreItem:
        path, derivation, name, version, weights, env, created = row
        return StoreItem(self.root / "items" / path, derivation, name, version, weights, env,
                         created)

    def find(self, derivation: str) -> StoreItem | None:
        dropped: list[str] = []
        with self._db() as db:
            rows = self._present(db, db.execute("SELECT * FROM items WHERE derivation = ?",
                                                (derivation,)).fetchall(), dropped)
        self._forget_dropped(dropped)
        return self._item(rows[0]) if rows else None

    def resolve(self, ref: str) -> StoreItem:
        """An item from its store path or directory name, derivation, weights digest,
        a hash prefix of at least 8 characters, or a name (the newest item of that name).
        A path to a folder outside the store is no item, whatever its name: a copy of an
        item's folder, edited, must not pass for the item."""
        path = Path(ref)
        if len(path.parts) > 1 and path.resolve().parent != (self.root / "items").resolve():
            raise UsageError(f"{ref}: a folder outside the store {self.root}, not an item of it "
                             "(give its weights file, with --recipe where the command takes one)")
        dropped: list[str] = []
        try:
            found = self._resolve(ref, path.name, dropped)
        finally:
            self._forget_dropped(dropped)
        if found is None:
            raise UsageError(f"{ref}: no such item in the store {self.root}")
        return found

    def _resolve(self, ref: str, key: str, dropped: list[str]) -> StoreItem | None:
        lookups = [("path = ? OR derivation = ? OR weights_digest = ?", (key, ref, ref)),
                   ("name = ?", (ref,))]
        with self._db() as db:
            for where, args in lookups:
                rows = self._present(db, db.execute(
                    f"SELECT * FROM items WHERE {where} ORDER BY created_at DESC",
                    args).fetchall(), dropped)
                if rows:
                    return self._item(rows[0])
            if len(key) >= 8 and key.isalnum():
                rows = self._present(db, db.execute(
                    "SELECT * FROM items WHERE path LIKE ? ORDER BY path",
                    (f"{key}%",)).fetchall(), dropped)
                if len(rows) > 1:
                    raise UsageError(f"{ref}: ambiguous: the prefix of "
                                     + ", ".join(row[0] for row in rows))
                if rows:
                    return self._item(rows[0])
        return None

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
        with self.gc_lock(exclusive=False), locked(path):
            self._clear_debris(derivation)
            yield

    def gc_lock(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        """Shared by builds and installs, exclusive for `gc` and `store repair`."""
        return gc_lock(self.root, exclusive)

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
        transaction, then the items' folders and every input folder without a row, each
        moved aside before it is deleted; the caller holds the gc lock exclusively and has
        made sure that no item folder is unknown to the index (a whole item without its
        row is a lost row, for `store repair`, not debris)."""
        with self._db() as db:
            self._drop_rows(db, items)
            for table in ("inputs", "input_files"):
                db.executemany(f"DELETE FROM {table} WHERE digest = ?", [(d,) for d in inputs])
        for name in items:
            discard(self.root / "items" / name, self.root / "tmp")
            discard(self.root / "signatures" / name, self.root / "tmp")  # its kept bundles
        self._inputs.discard_unknown()
        for digest in self.unused_chunks():
            self.chunks.path(digest).unlink(missing_ok=True)

    def unused_chunks(self, without: tuple[str, ...] = ()) -> list[str]:
        """Chunk files no item's checkpoints need (once the items `without` are gone): a
        build adds its chunks before it commits, but holds the gc lock meanwhile, so under
        the gc lock held exclusively these are garbage."""
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT chunk FROM item_chunks WHERE item NOT IN "
                              f"({', '.join('?' * len(without))})", without).fetchall()
        needed = {row[0] for row in rows}
        return [digest for digest in self.chunks.all() if digest not in needed]

    def kept_checkpoint(self, digest: str) -> Manifest | None:
        """The manifest of a checkpoint with this digest that an item keeps, or None."""
        with self._db() as db:
            rows = db.execute("SELECT item, relpath FROM item_checkpoints WHERE digest = ?",
                              (digest,)).fetchall()
        for item, relpath in rows:
            try:
                return Manifest.read(self.root / "items" / item / relpath)
            except ReweighError:
                continue  # a damaged manifest; `store verify` says so
        return None

    def chunk_references(self) -> dict[str, set[str]]:
        """Each chunk the items' kept checkpoints need -> the items that need it."""
        with self._db() as db:
            rows = db.execute("SELECT item, chunk FROM item_chunks").fetchall()
        found: dict[str, set[str]] = {}
        for item, chunk in rows:
            found.setdefault(chunk, set()).add(item)
        return found

    def tidy(self) -> list[str]:
        """After a collection: remove the lock files nobody holds (a derivation's or an
        input's is made again when next needed) and give the index's free pages back to
        the file system; the lock files removed."""
        removed = remove_unused(self.root / "locks")
        compact(self.root)
        return removed

    def unknown_items(self) -> list[str]:
        """Folders in items/ that the index does not know."""
        with self._db() as db:
            known = {row[0] for row in db.execute("SELECT path FROM items")}
        return sorted(e.name for e in (self.root / "items").iterdir() if e.name not in known)

    def clear_trash(self) -> list[str]:
        """Remove what interrupted removals left in tmp/ (their process is gone)."""
        cleared = []
        for entry in (self.root / "tmp").glob("trash-*"):
            if not _alive(entry.name.split("-")[1]):
                remove_tree(entry)
                cleared.append(entry.name)
        return sorted(cleared)

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
                discard(entry, self.root / "tmp")

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

    def end_attempt(self, attempt: int, status: str, message: str = "",
                    cpu_seconds: float | None = None) -> None:
        """`cpu_seconds`: what the recipe's process (and the processes it waited for)
        spent, as it measured itself; None where it never said (it failed first)."""
        with self._db() as db:
            db.execute("UPDATE attempts SET status = ?, ended_at = ?, message = ?, "
                       "cpu_seconds = COALESCE(?, cpu_seconds) WHERE id = ?",
                       (status, time.time(), message[-4000:], cpu_seconds, attempt))

    def attempts(self, derivation: str | None = None) -> list[dict[str, Any]]:
        keys = ("id", "derivation", "name", "purpose", "status", "threads", "started_at",
                "ended_at", "cpu_seconds")
        query = f"SELECT {', '.join(keys)} FROM attempts"
        with self._db() as db:
            rows = (db.execute(query + " WHERE derivation = ? ORDER BY id", (derivation,))
                    if derivation else db.execute(query + " ORDER BY id")).fetchall()
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
        dropped: list[str] = []
        with self._db() as db:
            rows = self._present(db, db.execute(
                "SELECT * FROM items WHERE weights_digest = ? OR path IN "
                "(SELECT item FROM imports WHERE source_digest = ?) "
                "ORDER BY created_at DESC", (digest, digest)).fetchall(), dropped)
        self._forget_dropped(dropped)
        return self._item(rows[0]) if rows else None

    # --- committing ------------------------------------------------------------------
    def commit(self, built: Path, item_name: str, record: dict[str, Any],
               known: dict[str, str] | None = None) -> StoreItem:
        """Move a finished build directory into items/ with one rename, then index it.

        `record` holds derivation, name, version, weights_digest, environment_digest and
        inputs ({name: digest}), and may hold `import` (an imported item's row, as
        `record_import` takes it) and `checks` ([(kind, result, detail)]), indexed in the
        same transaction as the item (one commit to disk, not three: `pull`). The caller
        holds the derivation's lock. An item holds regular files and folders only: a link
        could point anywhere, and a fifo or a device is no weights, so either is refused
        and nothing enters items/. `known`:
        the digests of files the caller hashed as it wrote or copied them (relative path
        -> digest), which are not read again; the rest are hashed in parallel.
        """
        odd = odd_entries(built)
        if odd:
            raise BuildError(f"the build's output holds {', '.join(odd[:5])}, which is not a "
                             "regular file or folder (a symbolic link, fifo, socket or device); "
                             "an item holds only files and folders")
        files = file_rows(built, known)
        move_read_only(built, self.root / "items" / item_name)
        self.index_item(item_name, record, files, time.time())
        found = self.find(record["derivation"])
        assert found is not None
        return found

    def index_item(self, item_name: str, record: dict[str, Any],
                   files: list[tuple[str, str, int]], created_at: float) -> None:
        """The index rows of an item already in items/: its record (as `commit` takes it)
        and its files (relative path, digest, size)."""
        with self._db() as db:
            db.execute("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (item_name, record["derivation"], record["name"], record["version"],
                        record["weights_digest"], record.get("environment_digest"), created_at))
            db.executemany("INSERT INTO item_files VALUES (?, ?, ?, ?)",
                           [(item_name, *f) for f in files])
            db.executemany("INSERT INTO item_inputs VALUES (?, ?, ?)",
                           [(item_name, n, d) for n, d in record.get("inputs", {}).items()])
            if (imported := record.get("import")) is not None:
                db.execute("INSERT OR REPLACE INTO imports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (item_name, *(imported[k] for k in self.IMPORT_FIELDS), created_at))
            db.executemany("INSERT INTO checks (item, kind, result, detail, at) "
                           "VALUES (?, ?, ?, ?, ?)",
                           [(item_name, kind, result, json.dumps(detail), created_at)
                            for kind, result, detail in record.get("checks", ())])
            checkpoints = _manifests(self.root / "items" / item_name)
            db.executemany("INSERT INTO item_checkpoints VALUES (?, ?, ?)",
                           [(item_name, rel, m.digest) for rel, m in checkpoints.items()])
            db.executemany("INSERT OR IGNORE INTO item_chunks VALUES (?, ?)",
                           [(item_name, c) for m in checkpoints.values() for c, _ in m.chunks])

    # --- inputs by content (`store_inputs` keeps them) ---------------------------------
    def input_path(self, digest: str) -> Path | None:
        """The input in the store, if it is there and whole (see `KeptInputs.path`)."""
        return self._inputs.path(digest)

    def find_input(self, kind: str, match: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """A kept input of `kind` whose origin holds `match` (see `KeptInputs.find`)."""
        return self._inputs.find(kind, match)

    def add_input(self, staged: Path, digest: str, kind: str, origin: dict[str, Any]) -> Path:
        """Move a staged file or folder (already verified to have `digest`) into inputs/."""
        return self._inputs.add(staged, digest, kind, origin)

    def index_input(self, digest: str, kind: str, origin: dict[str, Any], path: Path) -> None:
        self._inputs.index(digest, kind, origin, path)

    def input_listings(self) -> dict[str, tuple[str, list[str]]]:
        return self._inputs.listings()

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

    # --- what verification reads (the checks themselves are `verbs.store`'s) -----------
    def item_listings(self) -> dict[str, dict[str, str]]:
        """Each indexed item's files, relative path -> digest (an item without file rows
        has an empty listing)."""
        with self._db() as db:
            items = [row[0] for row in db.execute("SELECT path FROM items")]
            files = db.execute("SELECT item, relpath, digest FROM item_files").fetchall()
        listings: dict[str, dict[str, str]] = {item: {} for item in items}
        for item, relpath, digest in files:
            listings.setdefault(item, {})[relpath] = digest
        return listings


# An item's rows: the table and the column that names the item.
_ITEM_TABLES = (("items", "path"), ("item_files", "item"), ("item_inputs", "item"),
                ("checks", "item"), ("imports", "item"), ("item_checkpoints", "item"),
                ("item_chunks", "item"))


def file_rows(folder: Path, known: dict[str, str] | None = None) -> list[tuple[str, str, int]]:
    """An item's files as the index lists them: (relative path, digest, size), sorted;
    the caller has refused links (`trees.odd_entries`). Files are hashed in parallel,
    one per core (hashlib releases the interpreter's lock); those in `known` are not
    read."""
    known = known or {}
    paths = tree_files(folder)
    rels = [p.relative_to(folder).as_posix() for p in paths]
    todo = [(rel, p) for rel, p in zip(rels, paths, strict=True) if rel not in known]
    with ThreadPoolExecutor(min(len(todo), cores()) or 1) as pool:
        hashed = dict(zip((rel for rel, _ in todo),
                          pool.map(file_digest, (p for _, p in todo)), strict=True))
    return [(rel, known.get(rel) or hashed[rel], p.stat().st_size)
            for rel, p in zip(rels, paths, strict=True)]


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _manifests(item: Path) -> dict[str, Manifest]:
    """The manifests of the checkpoints an item keeps (`checkpoints/*.json`), by relative
    path; one that does not read is left out (`store verify` names it)."""
    found = {}
    for path in sorted((item / "checkpoints").glob("*.json")):
        try:
            found[path.relative_to(item).as_posix()] = Manifest.read(path)
        except ReweighError:
            continue
    return found


def _alive(pid: str) -> bool:
    """Whether the process that made a scratch directory still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True
