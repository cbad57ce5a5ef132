"""An item's files as one compressed archive, and the reader that trusts none of it.

The archive is a POSIX tar stream (pax format) of the item's regular files, in path
order, with fixed owners, times and modes, compressed with Zstandard: one item always
gives the same archive bytes, so a mirror can check it against its source.

`extract` reads an archive as it streams in and writes only what a signed list of files
allows: every member must be a regular file whose path is on the list, whose size is the
listed size and whose bytes hash to the listed digest, each at most once, and every
listed file must come. Links, devices, folders outside the list's parents, absolute
paths, `..`, a second copy of a file, a file that runs long, and an archive that
unpacks to more than the list could hold are refused the moment they show, before
their bytes are written. What it wrote is the caller's to remove on failure.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import zstandard

from ..errors import SignatureError
from ..signing import FileEntry, safe_relative

LEVEL = 3
_CHUNK = 4 << 20
_BLOCK = 512
# pax headers and the end of the archive, per file and once: what a tar of the listed
# files may hold beyond their bytes (generous: long names, pax records)
_PER_FILE = 8 * _BLOCK + 4096
_SLACK = 64 * _BLOCK


@dataclass(frozen=True)
class Written:
    digest: str
    size: int
    unpacked: int


class _Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `target`."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hasher = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        self.hasher.update(view)
        self.size += len(view)
        self.target.write(view)
        return len(view)


class _Counting(io.RawIOBase):
    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.size += len(data)
        self.target.write(data)
        return len(data)


def write_archive(folder: Path, files: tuple[FileEntry, ...], target: Path) -> Written:
    """Write `files` of `folder` (the caller has checked their digests) to `target`."""
    with open(target, "wb") as out:
        hashing = _Hashing(out)
        compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        with compressor.stream_writer(cast(IO[bytes], hashing), closefd=False) as packed:
            counting = _Counting(packed)  # type: ignore[arg-type]
            with tarfile.open(fileobj=counting, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for entry in files:
                    info = tarfile.TarInfo(entry.path)
                    info.size = entry.size
                    info.mode = 0o444
                    info.mtime = 0
                    info.uname = info.gname = ""
                    with open(folder / entry.path, "rb") as source:
                        tar.addfile(info, source)
    return Written(f"sha256:{hashing.hasher.hexdigest()}", hashing.size, counting.size)


class _Chunks(io.RawIOBase):
    """A readable file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self.pending:
            try:
                self.pending = memoryview(next(self.chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self.pending))
        buffer[:count] = self.pending[:count]
        self.pending = self.pending[count:]
        return count


class _Bounded(io.RawIOBase):
    """A readable file that refuses to give more than `limit` bytes."""

    def __init__(self, source: IO[bytes], limit: int, what: str) -> None:
        self.source = source
        self.left = limit
        self.what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.source.read(min(len(buffer), self.left + 1))
        if len(data) > self.left:
            raise SignatureError(f"{self.what}: unpacks to more than its files could hold")
        self.left -= len(data)
        buffer[:len(data)] = data
        return len(data)


def unpack_limit(files: tuple[FileEntry, ...]) -> int:
    """The most a tar of `files` may unpack to."""
    return sum(f.size + _BLOCK for f in files) + _PER_FILE * len(files) + _SLACK


def extract(chunks: Iterable[bytes], files: tuple[FileEntry, ...], target: Path,
            what: str) -> None:
    """Unpack an archive streaming in as `chunks` into the empty folder `target`, writing
    only the listed files and checking each as it is written."""
    expected = {f.path: f for f in files}
    parents = {"/".join(p.split("/")[:d]) for p in expected for d in range(1, p.count("/") + 1)}
    raw = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], _Chunks(iter(chunks))),
                                                     read_across_frames=True)
    stream = io.BufferedReader(_Bounded(raw, unpack_limit(files), what), _CHUNK)
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                if member.isdir() and member.name in parents:
                    continue
                entry = _member(member, expected, seen, what)
                source = tar.extractfile(member)
                assert source is not None
                _write(source, entry, target, what)
                seen.add(entry.path)
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as e:
        raise SignatureError(f"{what}: not a whole archive ({e})") from e
    missing = sorted(set(expected) - seen)
    if missing:
        raise SignatureError(f"{what}: the archive lacks {', '.join(missing[:5])}")


def _member(member: tarfile.TarInfo, expected: dict[str, FileEntry], seen: set[str],
            what: str) -> FileEntry:
    name = member.name
    if not member.isreg():
        raise SignatureError(f"{what}: {name!r} is not a regular file (a link, device or "
                             "folder); refused")
    if safe_relative(name) is None:
        raise SignatureError(f"{what}: {name!r} would leave the item's folder; refused")
    entry = expected.get(name)
    if entry is None:
        raise SignatureError(f"{what}: {name!r} is not a file its signatures list; refused")
    if name in seen:
        raise SignatureError(f"{what}: {name!r} comes twice; refused")
    if member.size != entry.size:
        raise SignatureError(f"{what}: {name}: {member.size} bytes, its signatures say "
                             f"{entry.size}")
    return entry


def _write(source: IO[bytes], entry: FileEntry, target: Path, what: str) -> None:
    path = target / entry.path
    path.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while data := source.read(_CHUNK):
            hasher.update(data)
            out.write(data)
    digest = f"sha256:{hasher.hexdigest()}"
    if digest != entry.digest:
        raise SignatureError(f"{what}: {entry.path}: its bytes hash to {digest}, its "
                             f"signatures say {entry.digest}")
