"""Folders the store keeps: made read-only, moved in, moved out, and watched cheaply.

Three hazards shape these functions. Linux lets a user who is not root move a folder
to another parent only while the folder itself is writable (its `..` entry changes),
so read-only trees are moved with their top folder writable and locked after the move.
A symbolic link left in a build's output must never make the store touch the file it
points to, so nothing here follows one. And a folder being deleted must never be seen,
half-deleted, at its own path: it is moved aside first, then deleted.

The file statistics (`tree_stats`) let the store tell at the cost of a `stat` per file
whether a tree it holds may have changed since it was recorded: any write moves the
size, the modification or the change time (which no program can set back), and a
replaced file has another inode. They say "maybe changed", never "damaged": only a
rehash says that.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path

# (path relative to the tree, or "" for a tree that is one file; size; inode; mtime; ctime)
FileStat = tuple[str, int, int, int, int]


def odd_entries(root: Path) -> list[str]:
    """What under root is neither a regular file nor a folder (links, fifos, sockets,
    devices), as paths relative to root; os.walk never enters a linked folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                found.append(Path(path).relative_to(root).as_posix())
    return sorted(found)


READ_ONLY_FILE = 0o444
READ_ONLY_FOLDER = 0o555  # and a file that could be run


def _seal(path: Path | str) -> None:
    """Folders 0555; files 0444, or 0555 for one that could be run; links and special
    files untouched (chmod would follow a link to its target)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode) or (stat.S_ISREG(mode) and mode & 0o111):
        os.chmod(path, READ_ONLY_FOLDER)
    elif stat.S_ISREG(mode):
        os.chmod(path, READ_ONLY_FILE)


def make_read_only(path: Path, keep_top: bool = False) -> None:
    """Make path and everything under it read-only for all and readable by all, deepest
    first, never through a link: a build's umask (weights written 0600) must not make a
    copy of the weights unreadable to others; the store root's own mode decides who may
    read the store. With keep_top the top folder stays as it is, so it can still move."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        _seal(path)
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in (*filenames, *dirnames):
            _seal(os.path.join(dirpath, name))
    if not keep_top:
        _seal(path)


def move_read_only(staged: Path, target: Path) -> None:
    """Move staged to target (same file system) and leave it read-only, in the one order
    that works for a user who is not root: the inside first, the move (with the top
    folder writable: a copy of a read-only folder may not be), then the top folder."""
    make_read_only(staged, keep_top=True)
    _writable_folder(staged)
    os.rename(staged, target)
    _seal(target)


def _ignore_vanished(function: object, path: str, info: object) -> None:
    error = info[1] if isinstance(info, tuple) else info
    if not isinstance(error, FileNotFoundError):
        raise error  # type: ignore[misc]


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) tree without following links; what another process
    removed meanwhile is no error. Only folders need write permission to lose entries."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        path.unlink(missing_ok=True)
        return
    _writable_folder(path)
    for dirpath, dirnames, _ in os.walk(path):  # top-down: each folder opened before entered
        for name in dirnames:
            _writable_folder(os.path.join(dirpath, name))
    shutil.rmtree(path, onerror=_ignore_vanished)


def _writable_folder(path: Path | str) -> None:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            os.chmod(path, stat.S_IMODE(mode) | stat.S_IRWXU)
    except FileNotFoundError:
        pass


def discard(path: Path, trash: Path) -> None:
    """Move path aside into trash (a folder on the same file system), then remove it: a
    half-removed tree is never at its own path, and what an interrupted removal leaves
    lies in trash, named `trash-<pid>-...`, for the next `gc` to clear."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            _writable_folder(path)  # a read-only folder cannot change parent (its `..`)
    except FileNotFoundError:
        return
    aside = trash / f"trash-{os.getpid()}-{time.time_ns()}-{path.name}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process moved it first
        return
    remove_tree(aside)


def tree_stats(path: Path) -> list[FileStat]:
    """The statistics of every entry of a tree that is not a folder (or of path itself, a
    file), sorted; an empty list when path is gone."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(top.st_mode):
        return [_stat_of("", top)]
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if not stat.S_ISDIR(st.st_mode):  # a linked folder counts, as a link
                found.append(_stat_of(Path(full).relative_to(path).as_posix(), st))
    return sorted(found)


def _stat_of(relpath: str, st: os.stat_result) -> FileStat:
    return (relpath, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
