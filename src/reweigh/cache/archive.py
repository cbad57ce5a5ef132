"""An item's files as one archive of pieces, and the reader that trusts none of it.

The archive holds the item's files in the order of its info record, each cut into
pieces the way the store cuts a kept checkpoint (`store_checkpoints.pieces`: a
safetensors file at each tensor's start and every 8 MiB of it, any other file every
8 MiB), each piece in the store's chunk form (`store_checkpoints.encode`: byte planes,
those that shrink compressed with Zstandard), one after the other. The info record
gives every piece's length in the archive and decoded, so a reader knows where each
file and piece starts without reading what comes before: an interrupted transfer
resumes at the first piece it had not written, asking the server for the rest only
(`Range`), and keeps the files and pieces it had. One item always gives the same bytes.

Why this form and not a tar in Zstandard (this cache's first format): a pull wrote a tar
twice (a copy to resume from, then the files), read it back through a tar reader and
hashed each file three times, and reached a quarter of a plain download's speed. Here
each byte is decoded, hashed and written once, straight into the folder that becomes
the store item. On float32 weights the chunk form keeps 0.84 of the bytes where
Zstandard alone keeps 0.925, and decodes 100 MiB in 0.07 s where Zstandard took
0.1-0.3 s (bench/README.md).

`Unpacker` reads an archive as it streams in and writes only what a signed list of files
allows, into a folder of its own: every piece must decode to its recorded length, every
file must hash, as it is written, to the digest its signers give, and the archive must
end where its record says. What it wrote is the caller's to remove on failure; what an
interrupted transfer left is read back (and hashed again) before the next one goes on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import store_checkpoints as sc
from ..digest import HashingWriter
from ..errors import SignatureError, WeightsError
from ..signing import FileEntry
from .layout import Archive, Piece

_READ = 8 << 20


@dataclass(frozen=True)
class Written:
    digest: str
    size: int
    pieces: tuple[tuple[Piece, ...], ...]


def write_archive(folder: Path, files: tuple[FileEntry, ...], target: Path) -> Written:
    """Write `files` of `folder` (the caller has checked their digests) to `target`."""
    hasher = hashlib.sha256()
    listed: list[tuple[Piece, ...]] = []
    try:
        with open(target, "wb") as out:
            for entry in files:
                listed.append(_pack_file(folder / entry.path, entry.size, out, hasher))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    size = sum(stored for file_pieces in listed for stored, _ in file_pieces)
    return Written(f"sha256:{hasher.hexdigest()}", size, tuple(listed))


def _pack_file(path: Path, size: int, out: BinaryIO,
               hasher: hashlib._Hash) -> tuple[Piece, ...]:
    spans = sc.pieces(path, size)
    if sum(span.length for span in spans) != size:  # not a file `pieces` cuts whole
        spans = [sc.Piece(s, min(sc.CHUNK, size - s), 1) for s in range(0, size, sc.CHUNK)]
    found = []
    with open(path, "rb", buffering=0) as handle:
        for span in spans:
            handle.seek(span.start)
            data = handle.read(span.length)
            if len(data) != span.length:
                raise SignatureError(f"{path}: changed while it was packed")
            stored = sc.encode(data, span.itemsize)
            out.write(stored)
            hasher.update(stored)
            found.append((len(stored), span.length))
    return tuple(found)


@dataclass(frozen=True)
class Resume:
    """Where an unpacking goes on: the file and piece, and that piece's archive offset."""

    file: int
    piece: int
    offset: int


class Unpacker:
    """Unpacks an archive of `files` into `folder`, resuming what an earlier, interrupted
    unpacking of the same archive left there. `digests` holds each finished file's
    digest, hashed as it was written (or read back, for the files resumed)."""

    def __init__(self, folder: Path, files: tuple[FileEntry, ...], archive: Archive,
                 what: str) -> None:
        self.folder, self.files, self.archive, self.what = folder, files, archive, what
        self.digests: dict[str, str] = {}
        self.start = self._resume()

    def lengths(self) -> Iterator[int]:
        """The archive length of every piece still to come, in order."""
        return (stored for _, stored, _ in self._todo())

    def decoded(self, stored_pieces: Iterable[bytes]) -> Iterator[bytes | memoryview]:
        """The pieces still to come (`cut` cuts a stream into them) decoded, each to its
        recorded length; refused when one does not, or when more come than are due."""
        source = iter(stored_pieces)
        for index, _, length in self._todo():
            stored = next(source, None)
            if stored is None:
                return  # `take` says what is missing
            try:
                yield sc.decode(stored, self.what, length)
            except WeightsError as e:
                raise SignatureError(f"{self.what}: {self.files[index].path}: a piece that "
                                     f"does not decode to its {length} bytes ({e.message}); "
                                     "refused") from e
        if next(source, None) is not None:
            raise SignatureError(f"{self.what}: longer than the pieces its record gives; "
                                 "refused")

    def take(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Hash and write the decoded pieces from `self.start` on, in order (`decoded`),
        checking each file as its last piece is written."""
        source = iter(pieces)
        for index in range(self.start.file, len(self.files)):
            first = self.start.piece if index == self.start.file else 0
            writer = self._open(index, first)
            try:
                for _ in self.archive.pieces[index][first:]:
                    piece = next(source, None)
                    if piece is None:
                        raise SignatureError(f"{self.what}: the archive ended before its "
                                             "last piece; refused")
                    writer.write(piece)
            finally:
                os.close(writer.fd)
            self._check(index, writer)
        if next(source, None) is not None:  # `decoded` refuses a piece too many
            raise SignatureError(f"{self.what}: longer than the pieces its record gives; "
                                 "refused")

    def unpack(self, chunks: Iterable[bytes]) -> None:
        """Cut, decode and write the rest of the archive streaming in as `chunks`, from
        `self.start.offset` on, in this thread (`pull` runs the three on threads of their
        own)."""
        self.take(self.decoded(cut(chunks, self.lengths(), self.what)))

    def _todo(self) -> Iterator[tuple[int, int, int]]:
        """(file index, archive length, length) of every piece still to come."""
        for index in range(self.start.file, len(self.files)):
            first = self.start.piece if index == self.start.file else 0
            for stored, length in self.archive.pieces[index][first:]:
                yield index, stored, length

    def _open(self, index: int, piece: int) -> HashingWriter:
        """The file's writer: a new file, or the resumed one, its kept pieces hashed."""
        path = self.folder / self.files[index].path
        path.parent.mkdir(parents=True, exist_ok=True)
        if piece == 0:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            return HashingWriter(fd)
        kept = sum(length for _, length in self.archive.pieces[index][:piece])
        hasher = _hashed(path, kept)
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        os.ftruncate(fd, kept)
        os.lseek(fd, kept, os.SEEK_SET)
        return HashingWriter(fd, hasher, kept)

    def _check(self, index: int, writer: HashingWriter) -> None:
        entry = self.files[index]
        digest = writer.digest()
        if writer.size != entry.size or digest != entry.digest:
            raise SignatureError(f"{self.what}: {entry.path}: its bytes hash to {digest}, its "
                                 f"signatures say {entry.digest}")
        self.digests[entry.path] = digest

    def _resume(self) -> Resume:
        """The first piece not yet written: a file an earlier transfer finished is read
        back and must have its digest (else it is written again); the file it stopped in
        keeps its whole pieces; anything else in the folder is removed."""
        offset = 0
        start = Resume(len(self.files), 0, self.archive.size)
        for index, entry in enumerate(self.files):
            file_pieces = self.archive.pieces[index]
            path = self.folder / entry.path
            have = _size(path)
            if have == entry.size:
                digest = f"sha256:{_hashed(path, have).hexdigest()}"
                if digest == entry.digest:
                    self.digests[entry.path] = digest
                    offset += sum(stored for stored, _ in file_pieces)
                    continue
                have = 0  # whole but wrong: written again
            whole, kept = 0, 0
            while whole < len(file_pieces) and kept + file_pieces[whole][1] <= have:
                kept += file_pieces[whole][1]
                whole += 1
            start = Resume(index, whole, offset + sum(s for s, _ in file_pieces[:whole]))
            break
        self._tidy(start)
        return start

    def _tidy(self, start: Resume) -> None:
        keep = set(self.digests)
        if start.file < len(self.files) and start.piece:
            keep.add(self.files[start.file].path)
        for entry in self.files:  # a folder where a file goes (another archive's layout)
            path = self.folder / entry.path
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        for root, folders, names in os.walk(self.folder):
            for name in (*names, *(f for f in folders if os.path.islink(Path(root) / f))):
                path = Path(root) / name
                if path.relative_to(self.folder).as_posix() not in keep:
                    path.unlink()


def cut(chunks: Iterable[bytes], lengths: Iterable[int], what: str) -> Iterator[bytes]:
    """The stream `chunks` cut into pieces of `lengths`, one after the other (each piece's
    bytes copied once); refused when it ends early or runs on past the last."""
    source = iter(chunks)
    rest = memoryview(b"")
    for length in lengths:
        parts, have = [], 0
        while have < length:
            if not rest:
                chunk = next(source, None)
                if chunk is None:
                    raise SignatureError(f"{what}: truncated: the archive ends before the "
                                         "last piece its record gives; refused")
                rest = memoryview(chunk)
            take = rest[:length - have]
            parts.append(take)
            have += len(take)
            rest = rest[len(take):]
        yield parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
    if rest or any(len(chunk) for chunk in source):
        raise SignatureError(f"{what}: longer than the pieces its record gives; refused")


def _size(path: Path) -> int:
    """The size of a regular file, or -1 when there is none (a link is none)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def _hashed(path: Path, size: int) -> hashlib._Hash:
    """A SHA-256 of the file's first `size` bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        left = size
        while left and (block := handle.read(min(_READ, left))):
            hasher.update(block)
            left -= len(block)
    return hasher
