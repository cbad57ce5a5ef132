"""The store's SQLite index: its schema, its transactions, and what happens when it breaks.

The index only remembers what the items and inputs already say about themselves (plus
the history of build attempts and checks), so a broken index is a nuisance, not a loss:
every command stops with one line that names it and points at `reweigh store repair`,
which moves it aside (`set_aside`) and rebuilds it from the items. New tables are added
with `CREATE TABLE IF NOT EXISTS`, so an older store gains them when it is next opened.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import IndexUnreadable

INDEX = "index.sqlite"

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
CREATE TABLE IF NOT EXISTS input_files (
  digest TEXT NOT NULL, relpath TEXT NOT NULL, size INTEGER NOT NULL, inode INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, PRIMARY KEY (digest, relpath));
CREATE TABLE IF NOT EXISTS item_inputs (
  item TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (item, name));
CREATE TABLE IF NOT EXISTS attempts (
  id INTEGER PRIMARY KEY AUTOINCREMENT, derivation TEXT NOT NULL, name TEXT NOT NULL,
  purpose TEXT NOT NULL, status TEXT NOT NULL, threads INTEGER, pid INTEGER,
  started_at REAL NOT NULL, ended_at REAL, message TEXT);
CREATE TABLE IF NOT EXISTS checks (
  id INTEGER PRIMARY KEY AUTOINCREMENT, item TEXT NOT NULL, kind TEXT NOT NULL,
  result TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS item_checkpoints (
  item TEXT NOT NULL, relpath TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (item, relpath));
CREATE INDEX IF NOT EXISTS item_checkpoints_by_digest ON item_checkpoints (digest);
CREATE TABLE IF NOT EXISTS item_chunks (
  item TEXT NOT NULL, chunk TEXT NOT NULL, PRIMARY KEY (item, chunk));
CREATE TABLE IF NOT EXISTS imports (
  item TEXT PRIMARY KEY, source_name TEXT NOT NULL, source_digest TEXT NOT NULL,
  format TEXT NOT NULL, license TEXT, origin TEXT, no_training_data INTEGER NOT NULL,
  at REAL NOT NULL);
"""

# SQLite's answers for a file that is not (or no longer) a database it can read.
_UNREADABLE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
# What SQLite keeps beside the index while it is open in WAL mode; they go with it.
_COMPANIONS = ("", "-wal", "-shm")


@contextlib.contextmanager
def _readable(index: Path) -> Iterator[None]:
    """Turn SQLite's "not a database" and "malformed" into one line that names the file
    and the way out."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        if getattr(e, "sqlite_errorcode", None) not in _UNREADABLE:
            raise
        raise IndexUnreadable(f"{index}: the store's index cannot be read ({e})",
                              hint="`reweigh store repair` rebuilds it from the items") from e


@contextlib.contextmanager
def transaction(root: Path) -> Iterator[sqlite3.Connection]:
    """One immediate transaction on the index under root: committed when the block ends,
    rolled back when it raises."""
    index = root / INDEX
    with _readable(index), contextlib.closing(
            sqlite3.connect(index, timeout=60, isolation_level=None)) as db:
        try:
            _use_wal(db)
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("BEGIN IMMEDIATE")
            yield db
            if db.in_transaction:
                db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _use_wal(db: sqlite3.Connection, wait: float = 60) -> None:
    """Put the index in WAL mode (the file keeps it). Switching needs the file to itself,
    and SQLite answers "locked" at once instead of waiting as it does for a transaction:
    two commands opening a new store together would see one of them fail. So wait here."""
    deadline = time.monotonic() + wait
    while str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


# Columns added to a table after stores were made with it: (table, column, its type)
ADDED_COLUMNS = (("attempts", "cpu_seconds", "REAL"),)


def create(root: Path) -> None:
    """Create the index, or add the tables and columns an older one lacks."""
    with transaction(root) as db:
        db.executescript(SCHEMA)
        for table, column, kind in ADDED_COLUMNS:
            if column in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                continue
            try:  # executescript committed: another command may add it first
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as e:
                if "duplicate column name" not in str(e):
                    raise


def compact(root: Path) -> None:
    """Give the index's free pages back to the file system (VACUUM) and empty its
    write-ahead log into it: rows deleted by `gc` otherwise leave the file as large as
    it ever was. VACUUM runs outside any transaction; it waits for other connections as
    a transaction does."""
    index = root / INDEX
    with _readable(index), contextlib.closing(
            sqlite3.connect(index, timeout=60, isolation_level=None)) as db:
        db.execute("PRAGMA busy_timeout=60000")
        if db.execute("PRAGMA freelist_count").fetchone()[0]:
            db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def set_aside(root: Path) -> Path | None:
    """Move an unreadable index (and its WAL files, which belong to it) aside as
    `index.sqlite.broken-<time>`; None, and nothing moved, when the index reads and
    SQLite's own quick check finds nothing wrong in it."""
    try:
        with transaction(root) as db:
            if db.execute("PRAGMA quick_check").fetchall() == [("ok",)]:
                return None
    except IndexUnreadable:
        pass
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = root / f"{INDEX}.broken-{stamp}"
    for suffix in _COMPANIONS:
        companion = root / f"{INDEX}{suffix}"
        if companion.exists():
            companion.rename(root / f"{kept.name}{suffix}")
    return kept
