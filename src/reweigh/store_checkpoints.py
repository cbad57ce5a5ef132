"""Checkpoints kept by content: split into chunks, stored once per store.

A training transcript's checkpoints are most of an item's size: digits-cnn's 35 were 17 MB
beside 154 KB of weights, and a 1 GB model with Adam writes 3.2 GB at each. So an item
does not hold its checkpoints as files. Each kept checkpoint is cut into chunks (its
header, then each tensor's bytes in pieces of at most `CHUNK` bytes, cut at the tensor's
own start so that an equal tensor gives equal chunks wherever it sits; small tensors
that follow one another may share one, `cut`), and each chunk is stored once under
`chunks/` by the SHA-256 of its bytes. The item keeps a small manifest per checkpoint
(`checkpoints/step-N.json`: the checkpoint's digest, its size and its chunks in order).
So what is equal is stored once: two checkpoints of a frozen layer, a base model's
tensors in a head-only fine-tune of it, a rebuild's checkpoints.

A chunk's stored form (`encode`) is its byte planes (the k-th byte of every element
together, as Blosc's shuffle filter does), each compressed with Zstandard (level 1, the
`zstandard` package the cache uses too) only when a sample of it shrinks: float32
weights and optimiser moments keep their sign and exponent byte in a narrow range (it
compresses to about a third) while their mantissa bytes are noise. That keeps about 0.82
of a checkpoint's bytes at some 2.5 s of CPU per GB, so only small checkpoints get it
(`keeper.COMPRESS_UP_TO`); a large one's chunks are stored as they are (`put_raw`: the
same form with one plane, flagged not compressed), written from the buffer they were
read into, past the page cache (`direct`).

A checkpoint is read back (`materialise`) by joining its chunks, and is only handed out
when the whole file has its recorded digest; a chunk whose bytes no longer have the
digest it is named by is damage, reported by `store verify` and never used. Chunk files
are written under a temporary name and renamed, read-only, so a chunk is either whole
or absent. What is not here: reading a build's checkpoints (`keeper`), deciding which to
keep (the recipe's `Retention`) and when a chunk is garbage (`Store.forget`, under the gc
lock).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .digest import ALGORITHM, is_digest
from .direct import write_new
from .errors import WeightsError
from .trees import READ_ONLY_FILE

if TYPE_CHECKING:
    from .weights import WeightsFile

CHUNK = 8 << 20  # the most bytes of one chunk: bounded memory, work for several cores
MANIFEST_FORMAT = "reweigh.checkpoint-chunks/1"
_MAGIC = b"RWC1"
_SAMPLE = 64 << 10  # a plane is compressed when its first 64 KiB shrink below...
_WORTH = 0.95  # ...this share of their size
_LEVEL = 1
RAW = struct.Struct("<4sBBQ")  # a chunk stored as it is: magic, itemsize 1, flag 0, length


def _compress(data: bytes | memoryview) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=_LEVEL).compress(data)


def _decompress(data: bytes | memoryview, label: str, limit: int = CHUNK) -> bytes:
    """A plane back from its Zstandard frame, which must say its size and that size be
    at most `limit` (a damaged or hostile frame cannot make it allocate more)."""
    import zstandard

    try:
        size = zstandard.frame_content_size(data)
        if not 0 <= size <= limit:
            raise WeightsError(f"{label}: a compressed plane of an unstated or impossible size")
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=max(limit, 1))
    except zstandard.ZstdError as e:
        raise WeightsError(f"{label}: a chunk whose compressed data is damaged") from e


@dataclass(frozen=True)
class Piece:
    """A span of a checkpoint file that becomes one chunk."""

    start: int
    length: int
    itemsize: int  # the element size its bytes are split into planes by (1: not split)


def pieces(path: Path, size: int) -> list[Piece]:
    """How a checkpoint file is cut: its header, then each tensor's bytes in pieces of at
    most CHUNK, each tensor cut from its own start. A file whose header does not read
    (never one `save_state` wrote) is cut into plain pieces of CHUNK bytes."""
    from .weights import read_header

    try:
        header = read_header(path)
    except WeightsError:
        return cut(None, size)
    return cut(header, size)


def cut(header: WeightsFile | None, size: int, together: int = 0) -> list[Piece]:
    """`pieces` of a file of `size` bytes whose checked header is `header` (None: one
    that did not read, cut into plain pieces of CHUNK bytes). With `together`, tensors
    smaller than that which follow one another with the same element size share a piece
    (of at most CHUNK bytes): a training state's step counters, biases and generator
    states would otherwise be a file each (digits-cnn's checkpoint: 36 pieces, 81 files
    in the store for 3 checkpoints, each file a block on disk however small)."""
    from .weights import DTYPES

    if header is None:
        return [Piece(s, min(CHUNK, size - s), 1) for s in range(0, size, CHUNK)]
    spans = sorted((t.start, t.end, DTYPES[t.dtype][1]) for t in header.tensors.values())
    first = spans[0][0] if spans else size
    cut = [Piece(0, first, 1)] if first else []
    joinable = False  # whether the last piece is small tensors that one more may join
    for start, end, itemsize in spans:
        small = end - start < together
        last = cut[-1] if cut else None
        if (small and joinable and last is not None and last.itemsize == max(itemsize, 1)
                and last.start + last.length == start and last.length + end - start <= CHUNK):
            cut[-1] = Piece(last.start, last.length + end - start, last.itemsize)
            continue
        for s in range(start, end, CHUNK):
            cut.append(Piece(s, min(CHUNK, end - s), itemsize if itemsize > 1 else 1))
        joinable = small
    return cut


def encode(data: bytes | memoryview, itemsize: int) -> bytes:
    """A chunk's stored form: magic, element size, then each byte plane with a flag
    (0 stored as is, 1 Zstandard) and its length."""
    import numpy as np

    raw = memoryview(data)
    if itemsize > 1 and len(raw) % itemsize == 0:
        elements = np.frombuffer(raw, np.uint8).reshape(-1, itemsize)  # (count, itemsize)
        planes = np.empty((itemsize, len(elements)), np.uint8)  # (itemsize, count)
        for k in range(itemsize):  # a column at a time: far faster than a transposed copy
            planes[k] = elements[:, k]
        parts = [plane.data for plane in planes]
    else:
        itemsize, parts = 1, [raw]
    out = [_MAGIC, bytes([itemsize])]
    for part in parts:
        sample = part[:_SAMPLE]
        squeezed = (_compress(part)
                    if len(_compress(sample)) < _WORTH * len(sample) else None)
        if squeezed is not None and len(squeezed) < len(part):
            out += [b"\x01", struct.pack("<Q", len(squeezed)), squeezed]
        else:
            out += [b"\x00", struct.pack("<Q", len(part)), bytes(part)]
    return b"".join(out)


def decode(stored: bytes, label: str, length: int | None = None) -> bytes | memoryview:
    """The bytes of a chunk from its stored form (without a copy more than it takes);
    WeightsError when it is not one. With `length` (what the chunk must decode to, at
    most a chunk), no plane may decode to more than its share of it: a hostile chunk of
    many tiny planes cannot make it allocate more than `length` bytes."""
    import numpy as np

    if stored[:4] != _MAGIC or len(stored) < 5 or stored[4] == 0:
        raise WeightsError(f"{label}: not a stored chunk")
    itemsize, at, planes = stored[4], 5, []
    view = memoryview(stored)
    limit = CHUNK if length is None else length // itemsize
    if length is not None and (length % itemsize or length > CHUNK):
        raise WeightsError(f"{label}: a chunk whose planes cannot make {length} bytes")
    for _ in range(itemsize):
        if at + 9 > len(stored) or stored[at] > 1:
            raise WeightsError(f"{label}: a chunk cut short or malformed")
        (size,) = struct.unpack_from("<Q", stored, at + 1)
        body = view[at + 9:at + 9 + size]
        if len(body) != size or (not stored[at] and size > limit):
            raise WeightsError(f"{label}: a chunk cut short or malformed")
        planes.append(_decompress(body, label, limit) if stored[at] else body)
        at += 9 + size
    if at != len(stored) or len({len(p) for p in planes}) != 1:
        raise WeightsError(f"{label}: a chunk with bytes beyond its planes")
    if itemsize == 1:
        return planes[0]
    elements = np.empty((len(planes[0]), itemsize), np.uint8)  # (count, itemsize)
    for k, plane in enumerate(planes):
        elements[:, k] = np.frombuffer(plane, np.uint8)
    return elements.reshape(-1).data


def raw_prefix(length: int) -> bytes:
    """The first bytes of a chunk stored as it is: `encode`'s form with one plane, not
    compressed. Writing them into a buffer just before the chunk's bytes makes the whole
    stored form one page-aligned span, which goes to disk past the page cache."""
    return RAW.pack(_MAGIC, 1, 0, length)


def chunk_digest(data: bytes | memoryview) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def checked(stored: bytes, digest: str, length: int, label: str) -> bytes | memoryview:
    """The bytes of a chunk's stored form, which must decode to `length` bytes with
    `digest`; WeightsError naming `label` when they do not (a damaged file, or a chunk a
    cache served under another chunk's name)."""
    data = decode(stored, label, length)
    if len(data) != length or chunk_digest(data) != digest:
        raise WeightsError(f"{label}: a chunk that does not have its digest")
    return data


@dataclass(frozen=True)
class Manifest:
    """A kept checkpoint: its digest, size and chunks ((digest, length) in file order)."""

    digest: str
    size: int
    chunks: tuple[tuple[str, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "digest": self.digest, "size": self.size,
                "chunks": [list(c) for c in self.chunks]}

    @staticmethod
    def read(path: Path) -> Manifest:
        """A manifest file, checked; WeightsError naming the file and field."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise WeightsError(f"{path}: cannot read the checkpoint's manifest ({e})") from e
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise WeightsError(f"{path}: format: not a {MANIFEST_FORMAT} manifest")
        chunks, size = data.get("chunks"), data.get("size")
        if not is_digest(data.get("digest")) or not isinstance(size, int) or not isinstance(
                chunks, list) or not all(
                isinstance(c, list) and len(c) == 2 and is_digest(c[0])
                and isinstance(c[1], int) and 0 <= c[1] <= CHUNK for c in chunks):
            raise WeightsError(f"{path}: chunks: expected [[digest, length], ...], a digest "
                               "and a size")
        if sum(c[1] for c in chunks) != size:
            raise WeightsError(f"{path}: chunks: their lengths do not add up to the size")
        return Manifest(data["digest"], size, tuple((c[0], c[1]) for c in chunks))


class Chunks:
    """The chunks of the store under `root` (`chunks/<2 hex>/<64 hex>`)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / "chunks"
        self.tmp = root / "tmp"

    def path(self, digest: str) -> Path:
        hexa = digest.split(":", 1)[1]
        return self.folder / hexa[:2] / hexa

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, digest: str, data: bytes | memoryview, itemsize: int) -> int:
        """Store a chunk (its digest computed by the caller from `data`) unless it is
        there; the bytes it takes on disk (0 when it was there)."""
        target = self.path(digest)
        if target.is_file():
            return 0
        stored = encode(data, itemsize)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.tmp / f"chunk-{os.getpid()}-{threading.get_ident()}-{target.name}"
        with open(temporary, "wb") as handle:
            handle.write(stored)
        os.chmod(temporary, READ_ONLY_FILE)
        os.replace(temporary, target)  # a concurrent writer of the same chunk wrote the same
        return len(stored)

    def put_raw(self, digest: str, buffer: mmap.mmap, length: int) -> int:
        """Store a chunk as it is unless it is there: its bytes lie in `buffer` after
        RAW.size bytes of room, where its prefix goes, and the whole is written from
        the buffer's (page-aligned) start past the page cache (`write_new`). The bytes
        it takes on disk (0 when it was there)."""
        target = self.path(digest)
        if target.is_file():
            return 0
        buffer[:RAW.size] = raw_prefix(length)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.tmp / f"chunk-{os.getpid()}-{threading.get_ident()}-{target.name}"
        write_new(temporary, buffer, RAW.size + length)
        os.chmod(temporary, READ_ONLY_FILE)
        os.replace(temporary, target)  # a concurrent writer of the same chunk wrote the same
        return RAW.size + length

    def get(self, digest: str, length: int) -> bytes | memoryview:
        """A chunk's bytes, checked against its digest and length; WeightsError if absent
        or damaged."""
        return checked(self.stored(digest), digest, length, str(self.path(digest)))

    def stored(self, digest: str) -> bytes:
        """A chunk's stored form as it is on disk, unchecked; WeightsError if absent."""
        path = self.path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError as e:
            raise WeightsError(f"{path}: a chunk of a kept checkpoint is missing") from e

    def adopt(self, digest: str, staged: Path) -> None:
        """Move a chunk's stored form, written and checked elsewhere in this store
        (`checked`; a pull's staging folder), into place, read-only."""
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(staged, READ_ONLY_FILE)
        os.replace(staged, target)

    def all(self) -> Iterator[str]:
        """The digest of every chunk file present."""
        if not self.folder.is_dir():
            return
        for sub in sorted(self.folder.iterdir()):
            for entry in sorted(sub.iterdir()) if sub.is_dir() else ():
                if not entry.name.startswith("."):
                    yield f"{ALGORITHM}:{entry.name}"


def materialise(manifest: Manifest, chunks: Chunks, target: Path) -> Path:
    """Write the checkpoint a manifest names to `target`, checked against its digest
    (WeightsError when a chunk is missing or damaged, or the whole does not hold)."""
    whole = hashlib.sha256()
    with open(target, "wb") as handle:
        for digest, length in manifest.chunks:
            data = chunks.get(digest, length)
            whole.update(data)
            handle.write(data)
    if f"{ALGORITHM}:{whole.hexdigest()}" != manifest.digest:
        target.unlink()
        raise WeightsError(f"{target.name}: its chunks do not make the checkpoint "
                           f"{manifest.digest}")
    return target

