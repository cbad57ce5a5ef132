"""Writing large files once, past the page cache.

A store writes gigabytes that nobody reads soon: an imported model, a kept checkpoint's
pieces. Through the page cache each byte is copied into the kernel's memory, counted
against dirty limits and written back later, which costs about as much CPU again as
hashing it and pushes out pages other programs use; on the two-core machine this was
measured at 0.8-3 s of CPU per GB, against 0.1 s with direct I/O. So these writes use
O_DIRECT where the file system allows it: from page-aligned memory (an anonymous mmap),
at page-aligned offsets, the unaligned tail through the cache. A file system that
refuses direct I/O (tmpfs on older kernels, some FUSE ones) gets ordinary writes.

What it does not do: make a write durable (no fsync: the store's atomicity comes from
renames), or read.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from pathlib import Path

PAGE = 4096  # what direct I/O aligns memory, offsets and lengths to


def buffer(size: int) -> mmap.mmap:
    """Page-aligned memory of `size` bytes that direct I/O can write from."""
    return mmap.mmap(-1, size)


def write_new(path: Path, memory: mmap.mmap, length: int, offset: int = 0) -> None:
    """Write `memory[:length]` at `offset` of the file at `path` (created when absent,
    owner-only), past the page cache where the file system allows it."""
    aligned = length - length % PAGE if offset % PAGE == 0 else 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with memoryview(memory) as view:
            done = _write_direct(fd, view[:aligned], offset) if aligned else 0
            _pwrite_all(fd, view[done:length], offset + done)
    finally:
        os.close(fd)


def _write_direct(fd: int, view: memoryview, offset: int) -> int:
    """Write `view` at `offset` with O_DIRECT; the bytes written (0 where the file system
    refuses direct I/O: the caller writes them through the cache)."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        return _pwrite_all(fd, view, offset)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return 0
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
    return done
